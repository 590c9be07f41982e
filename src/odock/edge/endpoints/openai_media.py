"""Native same-dialect forwarders shared by every provider-native route, and the OpenAI media routes built on them.

`ForwardEndpoint` is the one JSON passthrough: read the client's JSON, rewrite only `model` to the slug, POST it
to one upstream path of the pinned provider family, relay the upstream answer raw (usage peeked, never re-encoded),
and for streaming routes hand the upstream stream to a relay that forwards bytes as they arrive.
`MultipartForwardEndpoint` does the same for multipart/form-data uploads without decoding the file parts.

Routes here: `POST /v1/embeddings`, `/v1/images/generations` (JSON), `/v1/images/edits`, `/v1/images/variations`
(multipart), all pinned to the openai family (reference §10.2).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

import msgspec

from odock.dialects import openai_chat, openai_responses
from odock.dialects.contract import Dialect, StreamOptions
from odock.dialects.fields import count
from odock.dialects.prompt import PromptShape
from odock.edge.endpoint import LLMEndpoint
from odock.edge.endpoints.inspection import inspect_unary, inspected_stream, upstream_json
from odock.edge.endpoints.passthrough import ask_for_stream_usage, openai_sse, want_stream_usage
from odock.errors import BadRequest, GatewayError, UpstreamError
from odock.model import Usage
from odock.pipeline.call import Call, estimate_tokens
from odock.providers.registry import adapter_for, family_of
from odock.routing.router import Candidate
from odock.transport.base import UpstreamResponse

_encode = msgspec.json.encode

FailFn = Callable[[GatewayError], bytes]
# a started stream: (bytes to forward as they come, the error event that ends a broken stream)
StreamRelay = Callable[[Call, UpstreamResponse], tuple[AsyncIterator[bytes], FailFn]]
# called before the upstream call when the client asked for a stream; may edit the body; returns the relay
StreamStart = Callable[[dict[str, Any]], StreamRelay]
UsageFn = Callable[[dict[str, Any]], Usage | None]
MAX_MODEL_NAME_BYTES = 256


def usage_any(raw: dict[str, Any]) -> Usage | None:
    """Normalize whichever OpenAI-family usage shape an answer carries (chat/embeddings, images/responses,
    or vLLM's total-only rerank usage); None when it counts no tokens (e.g. audio `duration` usage)."""
    if "prompt_tokens" in raw or "completion_tokens" in raw:
        return openai_chat.usage_from(raw)
    if "input_tokens" in raw or "output_tokens" in raw:
        return openai_responses.usage_from(raw)
    total = count(raw.get("total_tokens"))
    return Usage(input_tokens=total) if total else None


def model_of(body: dict[str, Any]) -> str:
    """The requested Odock model name of a JSON body (400 invalid_request when absent)."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest("'model' is required and must be a non-empty string", "invalid_request")
    return model


def check_provider_field(body: dict[str, Any], family: str) -> None:
    """Drop a body `provider` pin; a pin to another family is 400 provider_not_allowed (RequiredProvider)."""
    pin = body.pop("provider", None)
    if pin is not None and pin != family:
        raise BadRequest(f"provider {pin!r} is not allowed on a {family} route", "provider_not_allowed")


def check_family(candidate: Candidate, family: str) -> None:
    """A same-dialect forward can only reach the route's family (a routing fallback of another family cannot)."""
    got = family_of(candidate.provider.type)
    if got != family:
        raise BadRequest(
            f"model {candidate.model.name!r} is served by a {got} provider; this route only reaches {family}",
            "provider_not_allowed",
        )


def copy_headers(call: Call, names: tuple[str, ...]) -> dict[str, str]:
    """The client headers a route forwards upstream (only those named; never credentials)."""
    headers = call.exchange.headers
    return {name: headers[name] for name in names if headers.get(name)}


async def relay_unary(
    call: Call,
    resp: UpstreamResponse,
    usage_key: str,
    usage: UsageFn,
    dialect: Dialect | None = None,
    *,
    counts_images: bool = False,
) -> None:
    """Relay a unary upstream answer byte for byte, capturing its usage when it is JSON (re-encoded only when
    a stage needs the decoded response); on image routes the images returned are billed per image."""
    data = await resp.read()
    content_type = resp.headers.get("content-type", "application/json")
    parsed: Any = None
    if "json" in content_type:
        try:
            parsed = msgspec.json.decode(data)
        except msgspec.DecodeError:
            raise UpstreamError("upstream answered with invalid JSON", kind="protocol") from None
        raw = parsed.get(usage_key) if isinstance(parsed, dict) else None
        if isinstance(raw, dict):
            call.ctx.raw_usage = raw
            call.ctx.usage = usage(raw)
        if counts_images and isinstance(parsed, dict) and isinstance(parsed.get("data"), list):
            call.ctx.billed_images = len(parsed["data"])
    data = await inspect_unary(call, dialect, parsed, data)
    await call.respond(200, data, content_type.encode("latin-1"))


def openai_stream(body: dict[str, Any]) -> StreamRelay:
    """OpenAI chat/completions SSE: ask the upstream for usage, pass the events through, drop the usage-only
    chunk the client did not ask for, and require `[DONE]`."""
    show = want_stream_usage(body)
    ask_for_stream_usage(body)

    def relay(call: Call, resp: UpstreamResponse) -> tuple[AsyncIterator[bytes], FailFn]:
        return openai_sse(call, resp, show_usage_chunk=show), openai_chat.stream_error

    return relay


def sse_frames(resp: UpstreamResponse) -> AsyncIterator[list[bytes]]:
    """Group upstream SSE bytes into complete events (line endings normalized to \\n, blank-line separator
    removed), one list per received chunk that completed at least one event; a trailing unterminated event is
    yielded at the end."""
    return cast(AsyncIterator[list[bytes]], _frames(resp, ()))


def sse_frames_passing(
    resp: UpstreamResponse, untouched: tuple[bytes, ...]
) -> AsyncIterator[list[bytes] | bytes]:
    """`sse_frames`, except that a chunk of whole events (nothing buffered before it, a blank line at its end, no
    CR) holding none of the `untouched` markers comes as the bytes it is, for the caller to pass through."""
    return _frames(resp, untouched)


async def _frames(resp: UpstreamResponse, untouched: tuple[bytes, ...]) -> AsyncIterator[list[bytes] | bytes]:
    buffer = b""
    async for chunk in resp.iter_chunks():
        if (
            untouched
            and not buffer
            and chunk.endswith(b"\n\n")
            and b"\r" not in chunk
            and not any(marker in chunk for marker in untouched)
        ):
            yield chunk
            continue
        buffer += chunk
        if b"\r" in buffer:
            if buffer.endswith(b"\r"):
                continue  # a CRLF split across chunks: wait for its LF
            buffer = buffer.replace(b"\r\n", b"\n")
        end = buffer.rfind(b"\n\n")
        if end < 0:
            continue
        ready, buffer = buffer[:end], buffer[end + 2 :]
        events = [event for event in ready.split(b"\n\n") if event.strip()]
        if events:
            yield events
    if buffer.strip():
        yield [buffer.rstrip(b"\r\n")]


_DATA_TYPE = re.compile(rb'"type"\s*:\s*"([^"]+)"')


def sse_name(event: bytes) -> str:
    """The event's name: its `event:` line, else the `type` of its JSON data (first occurrence)."""
    if event.startswith(b"event:"):
        line = event.split(b"\n", 1)[0]
        return line[6:].strip().decode("utf-8", "replace")
    match = _DATA_TYPE.search(event)
    return match.group(1).decode("utf-8", "replace") if match else ""


def sse_data(event: bytes) -> Any:
    """Decode the JSON data of one SSE event (multi-line data joined), None when it is not JSON."""
    lines = [line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    try:
        return msgspec.json.decode(b"\n".join(lines))
    except msgspec.DecodeError:
        return None


class ForwardEndpoint(LLMEndpoint):
    """A native JSON route forwarded to one upstream path of its family with only `model` rewritten."""

    def __init__(
        self,
        name: str,
        path: str,
        family: str,
        *,
        dialect: Dialect | None = None,
        usage: UsageFn = usage_any,
        usage_key: str = "usage",
        stream: StreamStart | None = None,
        max_tokens: Callable[[dict[str, Any]], int | None] | None = None,
        set_cap: Callable[[dict[str, Any], int], None] | None = None,
        output: Literal["text", "none", "images", "other"] = "other",
        validate: Callable[[dict[str, Any]], None] | None = None,
        forward_headers: tuple[str, ...] = (),
        error: Callable[[GatewayError], bytes] | None = None,
    ) -> None:
        """`max_tokens` reads the request's output cap and `set_cap` writes the gateway's when it named none (a
        route with both bounds its output: "text"); `output` says what bounds it otherwise ("images": an image
        route, whose `per_image` pricing bills each image returned)."""
        self.name = name
        self.path = path
        self.family = family
        self.dialect = (
            dialect  # the route's wire format, when it has a codec (None: stages see raw JSON only)
        )
        self.usage = usage
        self.usage_key = usage_key
        self.stream_start = stream
        self.max_tokens = max_tokens
        self.set_cap = set_cap
        self.output: Literal["text", "none", "images", "other"] = "text" if set_cap is not None else output
        self.validate = validate
        self.forward_headers = forward_headers
        self._error = error or openai_chat.error_body

    def error_body(self, err: GatewayError) -> bytes:
        """Render an error in the route's dialect."""
        return self._error(err)

    async def decode(self, call: Call) -> None:
        body = await call.read_json()
        family = self.family
        assert family is not None
        check_provider_field(body, family)
        ctx = call.ctx
        ctx.requested_model = model_of(body)
        if self.validate is not None:
            self.validate(body)
        if body.get("stream") is True:
            if self.stream_start is None:
                raise BadRequest(f"streaming is not supported on {call.exchange.path}", "invalid_request")
            ctx.stream = True
            call.route_state = self.stream_start(body)
        if self.max_tokens is not None:
            ctx.max_tokens = self.max_tokens(body)
        ctx.output = self.output

    async def send(self, call: Call, candidate: Candidate) -> UpstreamResponse:
        family = self.family
        assert family is not None and call.json is not None
        check_family(candidate, family)
        ctx = call.ctx
        body = upstream_json(call, self.dialect, candidate.model.slug)
        body["model"] = candidate.model.slug
        if ctx.output_cap_added and self.set_cap is not None and ctx.max_tokens is not None:
            self.set_cap(body, ctx.max_tokens)  # the final gate chose the cap: send it
        url = adapter_for(candidate.provider.type).url(candidate.provider, self.path)
        return await call.send(candidate, url, _encode(body), copy_headers(call, self.forward_headers))

    async def respond(self, call: Call, upstream: UpstreamResponse | None) -> None:
        assert upstream is not None
        relay: StreamRelay | None = call.route_state
        if relay is None:
            await relay_unary(
                call,
                upstream,
                self.usage_key,
                self.usage,
                self.dialect,
                counts_images=self.output == "images",
            )
            return
        assert call.json is not None
        options = StreamOptions(include_usage=want_stream_usage(call.json))
        produce, fail = inspected_stream(call, self.dialect, upstream, options) or relay(call, upstream)
        await call.stream(produce, fail)


# --- multipart/form-data ------------------------------------------------------------------------------------

_PARAM = re.compile(r';\s*([A-Za-z0-9_*\-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
MAX_PART_HEADER_BYTES = 16 * 1024
MAX_PARTS = 1000


def header_param(value: str, key: str) -> str | None:
    """A parameter of a header value (`boundary`, `name`, `filename`), unquoted."""
    for name, raw in _PARAM.findall(value):
        if name.lower() == key:
            raw = raw.strip()
            if len(raw) >= 2 and raw[0] == raw[-1] == '"':
                raw = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            return str(raw)
    return None


@dataclass(slots=True, frozen=True)
class FormPart:
    """One part of a multipart body, located by offsets into the body (the data itself is never copied)."""

    name: str
    filename: str | None
    start: int
    end: int


def _malformed(why: str) -> BadRequest:
    return BadRequest(f"malformed multipart/form-data body: {why}", "invalid_request_body")


def multipart_boundary(content_type: str) -> str:
    """The boundary of a multipart/form-data Content-Type (400 invalid_request_body otherwise)."""
    if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
        raise BadRequest(
            f"expected a multipart/form-data body, got Content-Type {content_type!r}", "invalid_request_body"
        )
    boundary = header_param(content_type, "boundary")
    if not boundary or len(boundary) > 70:
        raise _malformed("missing or invalid boundary")
    return boundary


def scan_multipart(boundary: str, body: bytes) -> list[FormPart]:
    """Locate every part of a multipart body by offset (RFC 7578 framing), or raise 400 invalid_request_body."""
    delimiter = b"--" + boundary.encode("latin-1")
    separator = b"\r\n" + delimiter
    if body.startswith(delimiter):
        pos = len(delimiter)
    else:
        first = body.find(separator)  # a preamble before the first delimiter is allowed
        if first < 0:
            raise _malformed("no opening boundary")
        pos = first + len(separator)
    parts: list[FormPart] = []
    while True:
        if body.startswith(b"--", pos):
            return parts
        if not body.startswith(b"\r\n", pos):
            raise _malformed("bad boundary line")
        head_end = body.find(b"\r\n\r\n", pos)
        if head_end < 0 or head_end - pos > MAX_PART_HEADER_BYTES:
            raise _malformed("part without headers")
        data_start = head_end + 4
        end = body.find(separator, data_start)
        if end < 0:
            raise _malformed("truncated (no closing boundary)")
        disposition = ""
        for line in body[pos + 2 : head_end].decode("utf-8", "replace").split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-disposition":
                disposition = value.strip()
        name = header_param(disposition, "name")
        if not name:
            raise _malformed("part without a name")
        parts.append(FormPart(name, header_param(disposition, "filename"), data_start, end))
        if len(parts) > MAX_PARTS:
            raise _malformed("too many parts")
        pos = end + len(separator)


class MultipartForwardEndpoint(LLMEndpoint):
    """A native multipart upload forwarded as the received body, with only the `model` field's value spliced.

    The received buffer is the only copy of the files: splicing the slug builds the upstream body and the
    received one is released, so the upload is held once while the upstream call runs."""

    def __init__(
        self,
        name: str,
        path: str,
        family: str,
        *,
        file_fields: tuple[str, ...],
        usage: UsageFn = usage_any,
        images: bool = False,
    ) -> None:
        """`images`: the uploads are images and the answer generates `n` of them (edits, variations)."""
        self.images = images
        self.name = name
        self.path = path
        self.family = family
        self.file_fields = file_fields
        self.usage = usage

    async def decode(self, call: Call) -> None:
        content_type = call.exchange.headers.get("content-type", "")
        boundary = multipart_boundary(content_type)
        received = await call.read_body()
        parts = scan_multipart(boundary, received)
        models = [p for p in parts if p.name == "model" and p.filename is None]
        if len(models) != 1:
            raise BadRequest("exactly one 'model' form field is required", "invalid_request")
        field = models[0]
        if field.end - field.start > MAX_MODEL_NAME_BYTES:
            raise BadRequest(f"'model' exceeds {MAX_MODEL_NAME_BYTES} bytes", "invalid_request")
        name = received[field.start : field.end].decode("utf-8", "replace").strip()
        if not name:
            raise BadRequest("'model' must be a non-empty string", "invalid_request")
        if not any(p.name in self.file_fields and p.filename is not None for p in parts):
            wanted = " or ".join(repr(f) for f in self.file_fields)
            raise BadRequest(f"a file part named {wanted} is required", "invalid_request")
        if any(p.name == "stream" and received[p.start : p.end].strip().lower() == b"true" for p in parts):
            raise BadRequest(f"streaming is not supported on {call.exchange.path}", "invalid_request")
        prompt = next((p for p in parts if p.name == "prompt" and p.filename is None), None)
        prompt_bytes = prompt.end - prompt.start if prompt else 0
        call.ctx.estimated_input_tokens = estimate_tokens(prompt_bytes)
        uploads = sum(1 for p in parts if p.filename is not None)
        n = next((p for p in parts if p.name == "n" and p.filename is None), None)
        count = received[n.start : n.end].strip() if n is not None else b""
        # the form's text fields are bounded by their bytes like a JSON body; each upload by its kind
        call.ctx.prompt = PromptShape(
            size=len(received) - sum(p.end - p.start for p in parts if p.filename is not None),
            images=uploads if self.images else 0,
            files=0 if self.images else uploads,
            choices=int(count) if count.isdigit() and int(count) > 0 else 1,
        )
        call.ctx.output = "images" if self.images else "other"
        call.ctx.requested_model = name
        # from here on only the upload holds the files; each attempt re-splices only when its slug differs
        call.route_state = _Upload(received, field.start, field.end, content_type)

    async def send(self, call: Call, candidate: Candidate) -> UpstreamResponse:
        family = self.family
        assert family is not None
        upload: _Upload = call.route_state
        check_family(candidate, family)
        slug = candidate.model.slug.encode()
        if b"\r" in slug or b"\n" in slug:
            raise BadRequest("model slug cannot be sent in a form field", "provider_type_unsupported")
        upload.splice(slug)
        url = adapter_for(candidate.provider.type).url(candidate.provider, self.path)
        return await call.send(candidate, url, upload.body, {"Content-Type": upload.content_type})

    async def respond(self, call: Call, upstream: UpstreamResponse | None) -> None:
        assert upstream is not None
        call.route_state = None  # release the upload before relaying the answer
        await relay_unary(call, upstream, "usage", self.usage, counts_images=self.images)


class _Upload:
    """A received multipart body with the `model` field's value at [start, end): the only copy of the files."""

    __slots__ = ("body", "content_type", "end", "start")

    def __init__(self, body: bytes, start: int, end: int, content_type: str) -> None:
        self.body, self.start, self.end, self.content_type = body, start, end, content_type

    def splice(self, slug: bytes) -> None:
        """Put `slug` in the model field (a new buffer only when it differs from what is there)."""
        if self.body[self.start : self.end] != slug:
            with memoryview(self.body) as view:
                self.body = b"".join((view[: self.start], slug, view[self.end :]))
            self.end = self.start + len(slug)


def openai_media_routes() -> dict[str, LLMEndpoint]:
    """The OpenAI embeddings and images routes."""
    return {
        "/v1/embeddings": ForwardEndpoint("openai.embeddings", "/embeddings", "openai", output="none"),
        "/v1/images/generations": ForwardEndpoint(
            "openai.images.generations", "/images/generations", "openai", output="images"
        ),
        "/v1/images/edits": MultipartForwardEndpoint(
            "openai.images.edits", "/images/edits", "openai", file_fields=("image", "image[]"), images=True
        ),
        "/v1/images/variations": MultipartForwardEndpoint(
            "openai.images.variations", "/images/variations", "openai", file_fields=("image",), images=True
        ),
    }
