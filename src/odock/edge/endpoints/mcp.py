"""`/v1/mcp/{slug|id}[/{path}]`: the MCP gateway route (reference §11), served by the `mcp` pipeline.

The stages (odock.pipeline.stages.mcp) resolve the server, check access and tool rules and reserve; this route
proxies through the server's transport and answers:

- Streamable HTTP (both eras of the spec): the body, the era's headers (`MCP-Protocol-Version`, `Mcp-Method`,
  `Mcp-Name`, `Last-Event-ID`) and the query go to the upstream with the server's own auth (never the client's
  `Authorization`); the answer comes back as JSON or SSE, `tools/list` results filtered by the tool rules, the
  upstream's `Mcp-Session-Id` wrapped in a signed token. GET streams and DELETE are relayed too. A server that
  opted in to SafetySec or plugins has its results screened here (`McpRequest.screen`), in JSON and SSE bodies.
- Legacy SSE (2024-11-05 HTTP+SSE): the same relay; the `endpoint` event's message URL is rewritten to this
  route with its session id wrapped.
- STDIO: each JSON-RPC message goes to a process of the server's supervised pool (odock.mcp.stdio).

An upstream failure is an error to the client (502 `mcp_upstream_error`, or the upstream's own 4xx), and a stream
that ends before every request was answered ends with a JSON-RPC error event for each one: never a 200 holding
nothing.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from odock.edge.endpoint import LLMEndpoint
from odock.errors import GatewayError, UpstreamError
from odock.mcp.call import McpRequest
from odock.mcp.protocol import Rules, error_body, filter_json, filter_sse_event, sse_events
from odock.mcp.records import McpServer
from odock.mcp.runtime import McpRuntime
from odock.mcp.stdio import relay_stdio
from odock.pipeline.call import Call, FinalChunk
from odock.pipeline.stages.mcp import mcp_request
from odock.transport.base import UpstreamRequest, UpstreamResponse

# never forwarded: the client's credentials for the gateway, hop-by-hop headers, what the transport sets itself,
# and the session token (replaced by the upstream's own session id)
_NOT_FORWARDED = frozenset(
    {
        "authorization",
        "x-api-key",
        "x-goog-api-key",
        "proxy-authorization",
        "cookie",
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "mcp-session-id",
        "x-forwarded-for",
        "x-real-ip",
        "forwarded",
    }
)
# upstream error headers a client acts on
_ERROR_HEADERS = ("retry-after", "www-authenticate")
MAX_ERROR_BODY = 64 * 1024
_decoder = msgspec.json.Decoder()


def forward_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in _NOT_FORWARDED}


def upstream_failure(err: UpstreamError) -> UpstreamError:
    """The transport's failure as the MCP route's: 502 mcp_upstream_error, its kind kept for the record."""
    if err.code != "mcp_auth_error":
        err.code = "mcp_upstream_error"
        err.message = f"MCP server failed: {err.message}"
    return err


async def _bounded(resp: UpstreamResponse, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in resp.iter_chunks():
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                break
    finally:
        resp.close()
    return b"".join(parts)[:limit]


def _answered_ids(event: bytes) -> list[Any]:
    """Ids of the JSON-RPC responses (results or errors) an SSE event carries."""
    if b'"id"' not in event:
        return []
    data = b"\n".join(
        line[5:].lstrip(b" ")
        for line in event.replace(b"\r\n", b"\n").split(b"\n")
        if line.startswith(b"data:")
    )
    try:
        payload = _decoder.decode(data)
    except msgspec.DecodeError:
        return []
    items = payload if isinstance(payload, list) else [payload]
    return [i.get("id") for i in items if isinstance(i, dict) and ("result" in i or "error" in i)]


def error_events(err: GatewayError, pending: list[Any]) -> bytes:
    """One SSE event per unanswered request: a JSON-RPC error the client's SDK raises with our message."""
    return b"".join(b"event: message\ndata: " + error_body(err, rid) + b"\n\n" for rid in pending)


class McpEndpoint(LLMEndpoint):
    name = "mcp"
    kind = "mcp"
    methods: tuple[str, ...] = ("GET", "POST", "DELETE")

    def error_body(self, err: GatewayError) -> bytes:
        return error_body(err)

    async def respond(self, call: Call, upstream: UpstreamResponse | None) -> None:
        state = mcp_request(call)
        server, runtime = state.server, state.runtime
        assert server is not None and runtime is not None
        try:
            if server.transport == "STDIO":
                await self._relay_stdio(call, state, server, runtime)
            else:
                await self._relay_http(call, state, server, runtime)
        finally:
            ctx = call.ctx
            if ctx.upstream_started is not None and not ctx.priced:
                # (priced already when the usage record was taken as the answer's last bytes left)
                ctx.cost_nanos, ctx.priced = state.cost_nanos(), True

    async def _relay_stdio(
        self, call: Call, state: McpRequest, server: McpServer, runtime: McpRuntime
    ) -> None:
        assert runtime.stdio is not None
        call.ctx.upstream_started = time.perf_counter()
        status, body = await relay_stdio(runtime.stdio, server, state, call.exchange.method)
        rules = state.rules
        if body and state.list_ids and rules is not None and not rules.empty:
            body = filter_json(rules, body, state.list_ids)
        if body and state.screen is not None:
            body = await state.screen.answer_json(body)
        state.bytes_out = len(body)
        await call.respond(status, body, b"application/json")

    def _url(self, call: Call, state: McpRequest, server: McpServer) -> str:
        assert server.endpoint_url is not None
        url = server.endpoint_url
        if state.subpath:
            if server.transport == "SSE":
                # legacy SSE: the message endpoint the upstream announced is a path on its own origin
                from odock.mcp.legacy_sse import origin_of

                url = origin_of(url) + "/" + state.subpath
            else:
                url += "/" + state.subpath
        raw: bytes = getattr(call.exchange, "scope", {}).get("query_string", b"")
        if raw:
            query = raw.decode("latin-1")
            if server.transport == "SSE":
                from odock.mcp.legacy_sse import unwrap_query

                assert call.ctx.key is not None and state.runtime is not None
                query = unwrap_query(query, state.runtime.signer, call.ctx.key.id, server.id)
            url += "?" + query
        return url

    async def _relay_http(
        self, call: Call, state: McpRequest, server: McpServer, runtime: McpRuntime
    ) -> None:
        ctx, exchange = call.ctx, call.exchange
        method = exchange.method
        plan = state.plan
        assert plan is not None
        headers = forward_headers(exchange.headers)
        static = plan.auth_headers
        headers.update(static if static is not None else await runtime.auth.headers(server))
        if state.upstream_session:
            headers["mcp-session-id"] = state.upstream_session
        if server.transport == "SSE" and method == "GET":
            headers["accept"] = "text/event-stream"
        request = UpstreamRequest(
            method,
            self._url(call, state, server),
            headers,
            state.body if method == "POST" else None,
            plan.stream if method == "GET" else plan.unary,
        )
        ctx.upstream_started = time.perf_counter()
        try:
            resp = await runtime.transport.send(request)
        except UpstreamError as err:
            raise upstream_failure(err) from None
        state.upstream_status = resp.status
        session = resp.headers.get("mcp-session-id")
        if session:
            assert ctx.key is not None
            token = runtime.signer.wrap(session, ctx.key.id, server.id)
            exchange.response_headers.append((b"mcp-session-id", token.encode("latin-1")))
        version = resp.headers.get("mcp-protocol-version")
        if version:
            exchange.response_headers.append((b"mcp-protocol-version", version.encode("latin-1")))
        if resp.status >= 400:
            body = await _bounded(resp, MAX_ERROR_BODY)
            raise UpstreamError(
                f"MCP server answered {resp.status}",
                "mcp_upstream_error",
                kind="4xx" if resp.status < 500 else "5xx",
                upstream_status=resp.status,
                upstream_body=body,
                upstream_content_type=resp.headers.get("content-type", ""),
                upstream_headers={h: resp.headers[h] for h in _ERROR_HEADERS if h in resp.headers},
            )
        content_type = resp.headers.get("content-type", "")
        if content_type.startswith("text/event-stream"):
            await call.stream(
                self._sse(call, state, resp),
                lambda err: error_events(err, self._pending(state)),
                content_type.encode("latin-1"),
            )
            return
        try:
            body = await resp.read()
        except UpstreamError as err:
            raise upstream_failure(err) from None
        if not body and state.request_ids:
            # a request answered with nothing: an error, never an empty 200
            raise UpstreamError(
                "MCP server answered a request with an empty body", "mcp_upstream_error", kind="protocol"
            )
        rules = state.rules
        if body and state.list_ids and rules is not None and not rules.empty:
            body = filter_json(rules, body, state.list_ids)
        if body and state.screen is not None:
            body = await state.screen.answer_json(body)
        state.bytes_out = len(body)
        await call.respond(resp.status, body, (content_type or "application/json").encode("latin-1"))

    @staticmethod
    def _pending(state: McpRequest) -> list[Any]:
        return [rid for rid in state.request_ids if rid in state.waiting]

    async def _sse(self, call: Call, state: McpRequest, resp: UpstreamResponse) -> AsyncIterator[bytes]:
        rules: Rules | None = state.rules
        legacy = state.server is not None and state.server.transport == "SSE"
        # a GET stream carries answers to requests it did not see (legacy SSE answers every POST there; a Streamable
        # HTTP GET with Last-Event-ID replays a POST's stream): there, any tools/list result is filtered
        list_ids: set[Any] | None = None if call.exchange.method == "GET" else state.list_ids
        filtering = (list_ids is None or bool(list_ids)) and rules is not None and not rules.empty
        waiting = state.waiting = set(state.request_ids)
        screen = state.screen
        buffer = bytearray()
        try:
            async for chunk in resp.iter_chunks():
                buffer += chunk
                out: list[bytes] = []
                done = False
                for event in sse_events(buffer):
                    if legacy:
                        from odock.mcp.legacy_sse import rewrite_endpoint_event

                        assert state.runtime is not None and call.ctx.key is not None
                        assert state.server is not None
                        event = rewrite_endpoint_event(
                            event,
                            f"/v1/mcp/{state.ref}",
                            state.runtime.signer,
                            call.ctx.key.id,
                            state.server.id,
                        )
                    if filtering:
                        assert rules is not None
                        event = filter_sse_event(rules, event, list_ids)
                    if screen is not None:
                        event = await screen.answer_event(event)
                    if waiting:
                        for rid in _answered_ids(event):
                            waiting.discard(rid)
                        done = not waiting
                    out.append(event)
                if out:
                    data = b"".join(out)
                    state.bytes_out += len(data)
                    # the last answer ends the client's response at once; the upstream's end is drained after
                    yield FinalChunk(data) if done else data
        except UpstreamError as err:
            if not waiting and state.request_ids:
                return  # everything was answered; only the upstream's trailing bytes failed
            raise upstream_failure(err) from None
        finally:
            resp.close()
        if waiting:
            state.outcome = "failed"
            raise UpstreamError(
                "MCP server ended the stream before answering", "mcp_upstream_error", kind="protocol"
            )
