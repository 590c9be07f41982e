"""The mock upstream as a raw ASGI app: routing, auth, directives, journal, unary and streamed replies."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import parse_qsl

from odock.mock import anthropic, gemini, openai, vllm
from odock.mock.directives import DirectiveError, Directives, MockDefaults, resolve, split_model
from odock.mock.wire import MAX_BODY_BYTES, BadRequest, Call, Handler, MockRequest, Reply, StreamReply, dumps

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JOURNAL_SIZE = 10_000
# each provider's own request id header, sent on every answer as the real APIs do
REQUEST_ID_HEADERS = {"openai": b"x-request-id", "anthropic": b"request-id"}
# each journal entry keeps at most this many items per list or object, and this many characters per string
JOURNAL_ITEMS = 100
JOURNAL_TEXT = 256
CUT_MESSAGE = "ASGI callable returned without completing response."
# Headers worth seeing in the journal; credentials are never among them.
JOURNAL_HEADERS = (
    "anthropic-version",
    "anthropic-beta",
    "content-type",
    "user-agent",
    "x-request-id",
    "x-mock",
    "openai-beta",
    "x-goog-api-client",
    "idempotency-key",
    "traceparent",
)
logger = logging.getLogger("odock.mock")


@dataclass(frozen=True, slots=True)
class Provider:
    """How one provider authenticates and shapes its errors."""

    name: str
    error: Callable[[int, str, str | None], Reply]
    named_error: Callable[[str, str], Reply]
    credential: Callable[[MockRequest], str | None]
    precheck: Callable[[MockRequest], Reply | None] | None = None


def _bearer(req: MockRequest) -> str | None:
    value = req.headers.get("authorization", "")
    if value[:7].lower() == "bearer " and value[7:].strip():
        return value[7:].strip()
    return None


# Azure OpenAI sends the key as `api-key`; the OpenAI routes stand in for it too
OPENAI = Provider(
    "openai", openai.error_reply, openai.named_error, lambda r: _bearer(r) or r.headers.get("api-key") or None
)
# Current Anthropic SDKs send the key as a bearer token; older ones (and most gateways) use x-api-key.
ANTHROPIC = Provider(
    "anthropic",
    anthropic.error_reply,
    anthropic.named_error,
    lambda r: r.headers.get("x-api-key") or _bearer(r),
    anthropic.check_headers,
)
GEMINI = Provider(
    "gemini",
    gemini.error_reply,
    gemini.named_error,
    lambda r: r.headers.get("x-goog-api-key") or r.query.get("key") or None,
)

ROUTES: dict[tuple[str, str], tuple[Provider, Handler]] = {
    ("POST", "/v1/chat/completions"): (OPENAI, openai.chat_completions),
    ("POST", "/v1/completions"): (OPENAI, openai.completions),
    ("POST", "/v1/responses"): (OPENAI, openai.responses),
    ("POST", "/v1/embeddings"): (OPENAI, openai.embeddings),
    ("POST", "/v1/images/generations"): (OPENAI, openai.images_generations),
    ("POST", "/v1/images/edits"): (OPENAI, openai.images_upload),
    ("POST", "/v1/images/variations"): (OPENAI, openai.images_upload),
    ("GET", "/v1/models"): (OPENAI, openai.models),
    ("POST", "/v1/audio/transcriptions"): (OPENAI, vllm.audio),
    ("POST", "/v1/audio/translations"): (OPENAI, vllm.audio),
    ("POST", "/v1/messages"): (ANTHROPIC, anthropic.messages),
}
for _name, _handler in (
    ("tokenize", vllm.tokenize),
    ("detokenize", vllm.detokenize),
    ("pooling", vllm.pooling),
    ("classify", vllm.classify),
    ("score", vllm.score),
    ("rerank", vllm.rerank),
):
    for _prefix in ("", "/v1"):
        ROUTES[("POST", f"{_prefix}/{_name}")] = (OPENAI, _handler)
ROUTES[("POST", "/v2/rerank")] = (OPENAI, vllm.rerank)
_PATHS = {path for _, path in ROUTES}


class _HideCuts(logging.Filter):
    """Drop uvicorn's complaint about the deliberate `cut_after` aborts."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != CUT_MESSAGE


def quiet_cut_logs() -> None:
    """Install the filter hiding deliberate cuts from uvicorn's error log (idempotent)."""
    log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _HideCuts) for f in log.filters):
        log.addFilter(_HideCuts())


def _provider_of(path: str) -> Provider:
    """The provider whose error shape a path answers in."""
    route = ROUTES.get(("POST", path)) or ROUTES.get(("GET", path))
    if route is not None:
        return route[0]
    return GEMINI if path.startswith("/v1beta") else OPENAI


def _clip(value: Any) -> Any:
    """A journal value with its strings cut to JOURNAL_TEXT characters (the journal's memory stays bounded)."""
    if isinstance(value, str):
        return value[:JOURNAL_TEXT]
    if isinstance(value, dict):
        return {_clip(k): _clip(v) for k, v in list(value.items())[:JOURNAL_ITEMS]}
    if isinstance(value, list):
        return [_clip(v) for v in value[:JOURNAL_ITEMS]]
    return value


def _credential_hash(value: str | None) -> str | None:
    return hashlib.sha256(value.encode()).hexdigest()[:12] if value else None


class MockApp:
    """The ASGI application; `journal` holds the recorded requests (newest last)."""

    def __init__(self, defaults: MockDefaults | None = None) -> None:
        self.defaults = defaults or MockDefaults()
        self.journal: deque[dict[str, Any]] = deque(maxlen=JOURNAL_SIZE)
        self._seq = 0
        self._random = random.Random()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                shape = _provider_of(scope["path"])
                await _send_reply(
                    send, shape.error(413, f"request body larger than {MAX_BODY_BYTES} bytes", None)
                )
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        query = scope.get("query_string", b"")
        req = MockRequest(
            method=scope["method"],
            path=scope["path"],
            query=dict(parse_qsl(query.decode("latin-1"))) if query else {},
            headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
            body=b"".join(chunks),
        )
        await self._handle(req, receive, send)

    async def _handle(self, req: MockRequest, receive: Receive, send: Send) -> None:  # noqa: C901 - older than the complexity rule; to split
        if req.path.startswith("/_mock/"):
            await _send_reply(send, self._control(req))
            return
        route = ROUTES.get((req.method, req.path))
        handler: Handler
        if route is not None:
            provider, handler = route
        else:
            match = gemini.ROUTE_RE.match(req.path)
            if match and req.method == "POST":
                provider = GEMINI
                stream = match["method"] == "streamGenerateContent"
                model = match["model"]

                def handler(r: MockRequest) -> Call | Reply:
                    return gemini.generate(r, model, stream)
            else:
                shape = GEMINI if req.path.startswith("/v1beta") else OPENAI
                status = 405 if req.path in _PATHS else 404
                await _send_reply(send, shape.error(status, f"no route for {req.method} {req.path}", None))
                return
        if self.defaults.require_auth and not provider.credential(req):
            message = {
                "openai": "You didn't provide an API key.",
                "anthropic": "x-api-key header is required",
                "gemini": "Method doesn't allow unregistered callers. Please use an API key.",
            }[provider.name]
            await _send_reply(send, provider.error(401, message, None))
            return
        if provider.precheck is not None:
            refusal = provider.precheck(req)
            if refusal is not None:
                await _send_reply(send, refusal)
                return
        try:
            call = handler(req)
            if isinstance(call, Reply):
                await _send_reply(send, call)
                return
            model, model_directives = split_model(call.model)
            directives = resolve(model_directives, call.user_text, req.headers.get("x-mock"))
        except (BadRequest, DirectiveError) as exc:
            status = exc.status if isinstance(exc, BadRequest) else 400
            await _send_reply(
                send, provider.error(status, exc.message if isinstance(exc, BadRequest) else str(exc), None)
            )
            return
        entry = self._record(req, call, directives, provider)
        reply: Reply | StreamReply | None = self._failure(directives, provider, model)
        latency = directives.latency_ms if directives.latency_ms is not None else self.defaults.latency_ms
        if latency > 0:
            await asyncio.sleep(latency / 1000)
        if reply is None:
            try:
                reply = call.make(directives, model)
            except BadRequest as exc:
                reply = provider.error(exc.status, exc.message, None)
        header = REQUEST_ID_HEADERS.get(provider.name)
        if header is not None and reply is not None and all(name != header for name, _ in reply.headers):
            reply.headers.append((header, f"req_mock{self._seq:016d}".encode()))
        if isinstance(reply, Reply):
            entry["status"] = reply.status
            await _send_reply(send, reply)
        elif reply is not None:
            entry["status"] = 200
            await self._stream(reply, directives, entry, receive, send)

    def _failure(self, d: Directives, provider: Provider, model: str) -> Reply | None:
        """Decide whether this request fails: a named `error` or `status` always, `fail_rate` by chance, else the
        defaults; `retry_after` sets the error's Retry-After (a 429 otherwise says 1 second)."""
        if d.error is not None:
            return self._retry_after(provider.named_error(d.error, model), d)
        if d.fail_rate is not None:
            rate, status = d.fail_rate, d.status or 500
        elif d.status is not None:
            rate, status = 1.0, d.status
        else:
            rate, status = self.defaults.fail_rate, self.defaults.fail_status
        if status < 400 or rate <= 0 or (rate < 1 and self._random.random() >= rate):
            return None
        return self._retry_after(provider.error(status, f"Mock upstream failure (status {status}).", None), d)

    @staticmethod
    def _retry_after(reply: Reply, d: Directives) -> Reply:
        if d.retry_after is not None:
            reply.headers.append((b"retry-after", str(d.retry_after).encode()))
        elif reply.status == 429:
            reply.headers.append((b"retry-after", b"1"))
        return reply

    def _record(self, req: MockRequest, call: Call, d: Directives, provider: Provider) -> dict[str, Any]:
        credential = provider.credential(req)
        body = req._json if isinstance(req._json, dict) else None
        self._seq += 1
        entry: dict[str, Any] = {
            "seq": self._seq,
            "time": time.time(),
            "method": req.method,
            "path": _clip(req.path),
            "provider": provider.name,
            "query": _clip({k: v for k, v in req.query.items() if k != "key"}),
            "model": _clip(call.model),
            "stream": call.stream,
            "credential_sha256": _credential_hash(credential),
            "headers": _clip({h: req.headers[h] for h in JOURNAL_HEADERS if h in req.headers}),
            "keys": _clip(sorted(body) if body is not None else call.extra.get("form_keys", [])),
            "stream_options": _clip(body.get("stream_options")) if body is not None else None,
            "directives": _clip({k: v for k, v in asdict(d).items() if v is not None}),
            "status": None,
            "events_sent": None,
            "client_disconnected": False,
        }
        self.journal.append(entry)
        return entry

    def _control(self, req: MockRequest) -> Reply:
        if req.path == "/_mock/health" and req.method == "GET":
            return Reply(200, b'{"status":"ok"}')
        if req.path == "/_mock/requests":
            if req.method == "GET":
                return Reply(200, dumps({"requests": list(self.journal)}))
            if req.method == "DELETE":
                self.journal.clear()
                return Reply(200, b'{"cleared":true}')
        return openai.error_reply(404, f"no route for {req.method} {req.path}")

    async def _stream(
        self, reply: StreamReply, d: Directives, entry: dict[str, Any], receive: Receive, send: Send
    ) -> None:
        delay = (d.chunk_delay_ms if d.chunk_delay_ms is not None else self.defaults.chunk_delay_ms) / 1000
        events = reply.events
        # A cut never delivers the terminating event, however large cut_after is.
        cut = min(d.cut_after, len(events) - 1) if d.cut_after is not None else None
        fail = d.error_after if d.error_after is not None else None
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", reply.content_type),
                        (b"cache-control", b"no-cache"),
                        *reply.headers,
                    ],
                }
            )
            for index, event in enumerate(events):
                if cut is not None and index >= cut:
                    entry["events_sent"] = index
                    return  # returning unfinished makes the server close the transport: a real cut
                if fail is not None and index >= fail:
                    await send(
                        {"type": "http.response.body", "body": reply.error_frame(index), "more_body": False}
                    )
                    entry["events_sent"] = index
                    return
                if index and delay > 0:
                    await asyncio.sleep(delay)
                if gone.is_set():
                    entry["client_disconnected"] = True
                    entry["events_sent"] = index
                    return
                await send({"type": "http.response.body", "body": event, "more_body": True})
            entry["events_sent"] = len(events)
            if d.linger_ms:
                await asyncio.sleep(d.linger_ms / 1000)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            if gone.is_set():
                entry["client_disconnected"] = True


async def _send_reply(send: Send, reply: Reply) -> None:
    headers = [
        (b"content-type", reply.content_type),
        (b"content-length", str(len(reply.body)).encode()),
        *reply.headers,
    ]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


def create_app(defaults: MockDefaults | None = None) -> MockApp:
    """Return the mock upstream ASGI app."""
    return MockApp(defaults)


def run(host: str = "127.0.0.1", port: int = 9000, defaults: MockDefaults | None = None) -> None:
    """Serve the mock with uvicorn (uvloop + httptools) until interrupted."""
    import uvicorn

    quiet_cut_logs()
    uvicorn.run(
        create_app(defaults),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="on",
    )
