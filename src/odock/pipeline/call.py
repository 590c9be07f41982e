"""One LLM call through the documented stages (reference §2.2): admit (pre-auth gate, auth, early gate), decode,
resolve (access, model/provider config, final gate), route + upstream, respond, finish (post-flight, usage).

Endpoints call these steps in order; every step either passes, fills the context, or raises a GatewayError.
`finish` always runs, so leases, reservations and the usage record never depend on how the call ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from odock import metrics
from odock.edge.http import ClientDisconnected, Request, decode_json
from odock.errors import (
    BadRequest,
    DependencyUnavailable,
    Forbidden,
    GatewayError,
    UpstreamError,
)
from odock.pipeline.context import CallContext
from odock.providers.base import ProviderAdapter
from odock.providers.registry import adapter_for
from odock.routing.router import Candidate, RoutePlan, run_attempts
from odock.state.records import ModelRecord, UsageRecord
from odock.transport.base import UpstreamRequest, UpstreamResponse

if TYPE_CHECKING:
    from odock.gateway import Gateway

log = logging.getLogger("odock.call")
T = TypeVar("T")

# provider types that speak a family's wire format (reference §4.1: AZURE_OPENAI/CUSTOM are the OpenAI family)
FAMILY = {"openai": "openai", "azure_openai": "openai", "custom": "openai", "anthropic": "anthropic",
          "gemini": "gemini", "google": "gemini", "vllm": "vllm"}


# the width of a model name in the catalogue and in the usage ledger
MAX_MODEL_NAME = 200


def family_of(provider_type: str) -> str:
    return FAMILY.get(provider_type, provider_type)


def estimate_tokens(size_bytes: int) -> int:
    """A cheap input-token estimate for reservations (~4 bytes per token); usage is settled from the provider."""
    return max(1, size_bytes // 4)


class FinalChunk(bytes):
    """The last bytes of a stream whose producer saw the terminal event (`[DONE]`, `message_stop`, …): they go
    out together with the end of the response, so the client has its whole answer without waiting for the
    upstream's own end of body, which is then drained (the connection goes back to the pool) after the fact."""

    __slots__ = ()


class Call:
    __slots__ = ("_governed", "ctx", "gw", "req")

    def __init__(self, gw: Gateway, req: Request, route: str, required_provider: str | None) -> None:
        self.gw = gw
        self.req = req
        self.ctx = CallContext(
            request_id=req.request_id, route=route, client_ip=gw.client_ip(req),
            required_provider=required_provider,
        )
        self._governed = False

    # --- stage: admit ------------------------------------------------------------------------------------

    def credential(self) -> str | None:
        """The presented Odock key: Authorization Bearer > X-API-Key > x-goog-api-key > ?key= (reference §3.1)."""
        headers = self.req.headers
        auth = headers.get("authorization")
        if auth:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        return headers.get("x-api-key") or headers.get("x-goog-api-key") or self.req.query("key")

    async def admit(self) -> None:
        """Pre-auth gate, authentication, early gate."""
        gw, ctx = self.gw, self.ctx
        if gw.governance is not None:
            await gw.governance.pre_auth(ctx.client_ip)
        key = await gw.catalogue.authenticate(self.credential())
        ctx.key = key
        ctx.organisation = await gw.catalogue.organisation(key.organisation_id)
        if key.team_id:
            ctx.team = await gw.catalogue.team(key.team_id)
        length = self.req.headers.get("content-length")
        ctx.body_bytes = int(length) if length and length.isdigit() else 0
        if gw.governance is not None:
            self._governed = True
            await gw.governance.early(ctx)

    # --- stage: decode -----------------------------------------------------------------------------------

    async def read_body(self) -> bytes:
        settings = self.gw.settings
        body = await self.req.body(settings.max_body_bytes, settings.read_timeout_s)
        self.ctx.body_bytes = len(body)
        return body

    async def read_json(self) -> dict[str, Any]:
        """Read and parse a JSON object body (400 invalid_request_body when it is not one)."""
        # the Content-Type is not enforced: curl's default form type on a JSON body is a common, harmless slip
        body = await self.read_body()
        if not body:
            raise BadRequest("request body is empty", "invalid_request_body")
        parsed = decode_json(body)
        if not isinstance(parsed, dict):
            raise BadRequest("request body must be a JSON object", "invalid_request_body")
        self.ctx.estimated_input_tokens = estimate_tokens(len(body))
        return parsed

    # --- stage: resolve ----------------------------------------------------------------------------------

    async def resolve(self, name: str, provider_pin: str | None = None) -> Candidate:
        """Model access, model/provider configuration, provider pinning, then the final gate."""
        ctx, catalogue = self.ctx, self.gw.catalogue
        assert ctx.key is not None
        if len(name) > MAX_MODEL_NAME or "\x00" in name:
            # no model can have such a name, and PostgreSQL could neither look it up nor record it in the ledger
            raise BadRequest(f"model: expected a model name of at most {MAX_MODEL_NAME} characters, without NUL",
                             "invalid_request")
        ctx.requested_model = name
        try:
            model = await catalogue.model(ctx.key.organisation_id, name)
        except DependencyUnavailable:
            raise DependencyUnavailable("model lookup unavailable", "model_lookup_unavailable") from None
        if model is None:
            raise BadRequest(f"model {name!r} is not configured", "model_not_found")
        try:
            grants = await catalogue.grants(ctx.key.id)
        except DependencyUnavailable:
            raise DependencyUnavailable("model access check unavailable", "model_access_unavailable") from None
        if model.id not in grants:
            raise Forbidden(f"this API key is not allowed to use model {name!r}", "model_not_allowed")
        candidate = await self.candidate(model)
        family = family_of(candidate.provider.type)
        if ctx.required_provider is not None and family != ctx.required_provider:
            raise BadRequest(
                f"model {name!r} is served by a {family} provider; this route only reaches {ctx.required_provider}",
                "provider_not_allowed",
            )
        if provider_pin is not None and provider_pin != family:
            raise BadRequest(
                f"provider {provider_pin!r} does not match model {name!r} (served by {family})",
                "provider_not_allowed",
            )
        ctx.model, ctx.provider = candidate.model, candidate.provider
        if self.gw.governance is not None:
            await self.gw.governance.final(ctx)
        return candidate

    async def candidate(self, model: ModelRecord) -> Candidate:
        """Check a model's provider is usable (configured, enabled, credential present)."""
        provider = await self.gw.catalogue.provider(model.provider_id)
        if provider is None:
            raise BadRequest(f"model {model.name!r} has no provider", "provider_not_configured")
        if not provider.enabled:
            raise Forbidden(f"provider {provider.name!r} is disabled", "provider_disabled")
        adapter = adapter_for(provider.type)
        if adapter.requires_key and not provider.api_key:
            raise BadRequest(f"provider {provider.name!r} has no API key configured",
                             "provider_api_key_not_configured")
        return Candidate(model=model, provider=provider)

    async def plan(self, primary: Candidate) -> RoutePlan:
        return await self.gw.routing.plan(self, primary)

    # --- stage: upstream ---------------------------------------------------------------------------------

    async def send(self, candidate: Candidate, url: str, body: bytes,
                   headers: dict[str, str] | None = None) -> UpstreamResponse:
        """POST to the upstream; a non-2xx answer becomes an UpstreamError (read whole, for the client)."""
        adapter = adapter_for(candidate.provider.type)
        request_headers = adapter.headers(candidate.provider)
        if headers:
            request_headers.update(headers)
        return await self.send_request(adapter, candidate, UpstreamRequest(
            "POST", url, request_headers, body, adapter.timeouts(candidate.provider)))

    async def send_request(self, adapter: ProviderAdapter, candidate: Candidate,
                           request: UpstreamRequest) -> UpstreamResponse:
        if self.ctx.upstream_started is None:
            self.ctx.upstream_started = time.perf_counter()
        resp = await self.gw.transport.send(request)
        if resp.status >= 400:
            data = await resp.read()
            raise adapter.upstream_error(resp.status, data, resp.headers.get("content-type", ""))
        self.ctx.provider_request_id = resp.headers.get("x-request-id") or resp.headers.get("request-id")
        return resp

    async def route(self, primary: Candidate, attempt: Callable[[Candidate], Awaitable[T]]) -> T:
        plan = await self.plan(primary)
        result = await run_attempts(self.ctx, plan, attempt, self.gw.routing.observe)
        answered = self.ctx.answered_by
        if answered is not None:
            self.req.response_headers.append((b"x-odock-model", answered.name.encode()))
        return result

    # --- stage: respond ----------------------------------------------------------------------------------

    def governed_headers(self) -> list[tuple[bytes, bytes]]:
        if self.gw.governance is None or not self._governed:
            return []
        return [(k.lower().encode(), v.encode()) for k, v in self.gw.governance.response_headers(self.ctx).items()]

    async def respond(self, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
        self.ctx.status = status
        await self.req.respond(status, body, content_type, self.governed_headers())

    async def stream(self, produce: AsyncIterator[bytes], fail: Callable[[GatewayError], bytes],
                     content_type: bytes = b"text/event-stream") -> None:
        """Stream `produce` to the client; cut the upstream when the client leaves; end a broken upstream
        stream with an explicit error event (never a clean-looking end)."""
        ctx, req = self.ctx, self.req
        ctx.status = 200
        await req.start_stream(200, content_type, self.governed_headers())
        # the chunks are pumped in this task; a watcher cancels it when the client disconnects (one extra task
        # per stream, no asyncio.wait), and cancelling closes the upstream response, which stops the upstream
        this = asyncio.current_task()
        assert this is not None
        left = False

        async def watch() -> None:
            nonlocal left
            await req.wait_disconnect()
            left = True
            this.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        outcome = "completed"
        error: GatewayError | None = None
        ended = False
        try:
            try:
                async for chunk in produce:
                    if ended:
                        continue  # draining the upstream after the terminal event (nothing should follow it)
                    if type(chunk) is FinalChunk:
                        # the server reports a finished response as a disconnect: stop watching first
                        watcher.cancel()
                        ended = True
                        await req.end(chunk)
                    elif chunk:
                        await req.write(chunk)
            finally:
                watcher.cancel()
        except asyncio.CancelledError:
            if not left:
                raise  # cancelled from outside (shutdown): not ours to swallow
        except ClientDisconnected:
            left = True
        except GatewayError as err:
            error = err
        except Exception:
            # a bug after the head went out: the status cannot change, so the stream still ends with the route's
            # error event (the edge could only end it, which would look like a complete answer)
            log.exception("unhandled error mid-stream", extra={"request_id": ctx.request_id})
            error = GatewayError("internal gateway error", "internal_error")
        if left:
            # the watcher may have fired after the last chunk, leaving a cancellation pending: absorb it before
            # awaiting anything else, so it cannot land in the bookkeeping below
            await _absorb_cancellation(this)
            outcome, ctx.outcome, ctx.error_code = "cancelled", "cancelled", "client_disconnected"
        elif error is not None and ended:
            # the client already has the complete answer; only the upstream's trailing bytes went wrong
            log.warning("upstream failed after its terminal event: %s", error.code,
                        extra={"request_id": ctx.request_id})
        elif error is not None:
            outcome, ctx.outcome, ctx.error_code = "failed", "failed", error.code
            log.warning("stream failed mid-way: %s", error.code, extra={"request_id": ctx.request_id})
            with contextlib.suppress(ClientDisconnected):
                await req.write(fail(error))
                await req.end()
        elif not ended:
            await req.end()
        await aclose(produce)
        metrics.child(metrics.STREAMS, ctx.route, outcome).inc()

    # --- stage: finish -----------------------------------------------------------------------------------

    def fail(self, err: GatewayError) -> None:
        self.ctx.status = err.status
        self.ctx.error_code = err.code
        self.ctx.outcome = "failed"

    async def finish(self) -> None:
        """Post-flight (release leases, settle or release reservations) and the usage record; never raises."""
        ctx, gw = self.ctx, self.gw
        if ctx.key is None:
            return
        cost = gw.cost_of(ctx)
        if self._governed and gw.governance is not None:
            try:
                await gw.governance.complete(ctx, cost)
            except Exception:
                log.exception("governance post-flight failed", extra={"request_id": ctx.request_id})
        usage = ctx.usage
        answered = ctx.answered_by or ctx.model
        provider = ctx.answered_provider or ctx.provider
        routing = None
        if ctx.attempts:
            routing = {
                "decision": "rerouted" if len(ctx.attempts) > 1 else "direct",
                "attempts": [
                    {"model": a.model, "provider": a.provider, "outcome": a.outcome, "error_class": a.error_class,
                     "status": a.status, "latency_ms": a.latency_ms}
                    for a in ctx.attempts
                ],
            }
        gw.recorder.record(UsageRecord(
            request_id=ctx.request_id,
            created_at=datetime.now(UTC),
            organisation_id=ctx.key.organisation_id,
            team_id=ctx.key.team_id,
            user_id=ctx.key.user_id,
            api_key_id=ctx.key.id,
            route=ctx.route,
            status=ctx.status or 500,
            outcome="failed" if ctx.status >= 400 and ctx.outcome == "success" else ctx.outcome,
            model=ctx.requested_model,
            model_slug=answered.slug if answered else None,
            provider=provider.type if provider else None,
            stream=ctx.stream,
            input_tokens=usage.input_tokens if usage else 0,
            output_tokens=usage.output_tokens if usage else 0,
            cached_input_tokens=usage.cached_input_tokens if usage else 0,
            cache_write_tokens=usage.cache_write_tokens if usage else 0,
            reasoning_tokens=usage.reasoning_tokens if usage else 0,
            usage_estimated=usage.estimated if usage else False,
            latency_ms=ctx.elapsed_ms(),
            provider_request_id=ctx.provider_request_id,
            error_code=ctx.error_code,
            cost_nanos=cost,
            pricing=answered.pricing if answered and answered.pricing else None,
            raw_usage=ctx.raw_usage,
            routing=routing,
        ))
        if usage is not None and provider is not None:
            metrics.child(metrics.TOKENS, provider.type, "input").inc(usage.total_input)
            metrics.child(metrics.TOKENS, provider.type, "output").inc(usage.output_tokens)


async def _absorb_cancellation(task: asyncio.Task[Any]) -> None:
    """Consume a cancellation this task requested of itself (delivered or still pending)."""
    if task.cancelling():
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            pass
        while task.cancelling():
            task.uncancel()


async def aclose(stream: AsyncIterator[bytes]) -> None:
    """Close an async generator now (releasing its upstream connection) rather than at garbage collection."""
    closer = getattr(stream, "aclose", None)
    if closer is not None:
        with contextlib.suppress(Exception):
            await closer()


def upstream_error_body(err: UpstreamError) -> dict[str, Any]:
    """The upstream's own error, kept for the client (reference §10.8: 502 carries the upstream body)."""
    if not err.upstream_body:
        return {}
    if "json" in err.upstream_content_type:
        try:
            return {"upstream_status": err.upstream_status, "upstream_error": msgspec.json.decode(err.upstream_body)}
        except msgspec.DecodeError:
            pass
    return {"upstream_status": err.upstream_status,
            "upstream_error": err.upstream_body[:2000].decode("utf-8", "replace")}
