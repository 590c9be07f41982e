"""Decoded paths: translation (`/v1/llm/chat` to another dialect), and native routes when a stage must see the call: the body, the answer and the stream go through the route's own
dialect (DESIGN: "when one does, the native body is decoded with the route's dialect").

Only taken when an enabled stage declares `needs_request` / `needs_response` (SafetySec, plugins, the cache);
otherwise native routes stay byte relays. Re-encoding merges into the original JSON at its top level, so fields
the normalized model does not carry (a provider's newest options) still reach the upstream and the client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import msgspec

from odock.dialects.contract import Dialect, StreamDecoder, StreamEncoder, StreamOptions
from odock.dialects.sse import SSEParser
from odock.errors import GatewayError, UpstreamError
from odock.model import StreamEvent, UsageEvent
from odock.pipeline.call import Call, FinalChunk
from odock.transport.base import UpstreamResponse

FailFn = Callable[[GatewayError], bytes]


def upstream_json(call: Call, dialect: Dialect | None, slug: str) -> dict[str, Any]:
    """The JSON to send upstream: the client's, with what the stages may have changed in the normalized
    request written back over it."""
    body = call.json
    assert body is not None
    if dialect is None or call.request is None or not call.pipeline.needs_request:
        return body
    return {**body, **dialect.upstream.encode_request(call.request, slug=slug)}


async def inspect_unary(call: Call, dialect: Dialect | None, parsed: Any, data: bytes) -> bytes:
    """Run the after-hooks on a unary answer; with a stage that needs the response, on its decoded form, and
    return the answer re-encoded from it when a stage changed it."""
    if dialect is None or not call.needs_response or not isinstance(parsed, dict):
        if call.after_stages:
            await call.answered(None)
        return data
    response = dialect.upstream.decode_response(parsed)
    await call.answered(response)
    if not any(stage.rewrote(call) for stage in call.after_stages):
        return data  # nothing changed the answer: the upstream's bytes, as the byte relay sends them
    encoded = msgspec.json.decode(
        dialect.client.encode_response(response, model=str(parsed.get("model", "")))
    )
    return msgspec.json.encode({**parsed, **encoded}) if isinstance(encoded, dict) else data


def inspected_stream(
    call: Call, dialect: Dialect | None, upstream: UpstreamResponse, options: StreamOptions
) -> tuple[AsyncIterator[bytes], FailFn] | None:
    """A stream whose every event passes the stages' delta hooks, re-encoded in the route's dialect; None when
    no stage looks at deltas (the route relays bytes)."""
    if dialect is None or not call.delta_stages:
        return None
    encoder = dialect.client.stream_encoder(
        model=call.ctx.requested_model or "", request_id=call.ctx.request_id, options=options
    )
    decoder = dialect.upstream.stream_decoder()

    return translate_stream(call, upstream.iter_chunks(), decoder, encoder), encoder.fail


async def translate_stream(
    call: Call,
    chunks: AsyncIterator[bytes],
    decoder: StreamDecoder,
    encoder: StreamEncoder,
    prelude: Sequence[StreamEvent] = (),
) -> AsyncIterator[bytes]:
    """Decode an upstream stream in its dialect and re-encode every event in the client's dialect (`prelude`:
    events already decoded, taken before the chunks)."""
    parser = SSEParser()
    inspect = bool(call.delta_stages)

    def encode(events: list[StreamEvent]) -> bytes:
        out: list[bytes] = []
        for event in events:
            # usage is read before any stage sees the event: billing never depends on a stage
            if isinstance(event, UsageEvent):
                call.ctx.usage, call.ctx.raw_usage = event.usage, event.raw
            passed = call.delta(event) if inspect else event
            if isinstance(passed, list):
                out.extend(encoder.event(item) for item in passed)
            elif passed is not None:
                out.append(encoder.event(passed))
        return b"".join(out)

    if prelude:
        yield encode(list(prelude))
    async for chunk in chunks:
        out = b"".join(encode(decoder.feed(sse_event)) for sse_event in parser.feed(chunk))
        if decoder.ended:  # the upstream's terminal event: the answer ends here, the rest is drained
            yield FinalChunk(out + encoder.finish())
            async for _ in chunks:
                pass
            return
        yield out
    yield b"".join(encode(decoder.feed(sse_event)) for sse_event in parser.flush())
    if not decoder.done:
        raise UpstreamError("upstream stream ended before its final event", kind="protocol")
    yield encoder.finish()
