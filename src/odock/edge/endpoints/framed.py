"""Native OpenAI chat streams screened in whole upstream events.

When the only stage that looks at a stream's deltas offers to screen its text in whole events (SafetySec's
response phase: `Stage.framed`), the native route does not decode and re-encode every event: each plain chunk
(`openai_chat.plain_chunk`: its one text is choice 0's content) is read for its text and queued in the stage's
`FramedText`, which releases the upstream's own bytes once screened, re-encoding only an event a redaction
touched or the hold-back cut in two. Usage is read before the stage sees anything, as on every route.

A chunk that is not plain (tool calls, reasoning, a refusal, log probabilities, several choices, an unknown field
in a choice, a multi-line event, an upstream error) hands the rest of the stream to the decoded path
(`translate_stream`): the held events go first, as text the stage's delta hook screens like any other, so the
client reads one stream whichever path carried each part.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from odock.dialects import openai_chat
from odock.edge.endpoints.inspection import FailFn, translate_stream
from odock.errors import UpstreamError
from odock.model import StreamEvent, TextDelta
from odock.pipeline.call import Call, FinalChunk
from odock.safety.stream import Frame, FramedText
from odock.transport.base import UpstreamResponse


def framed_stream(
    call: Call, upstream: UpstreamResponse, show_usage: bool
) -> tuple[AsyncIterator[bytes], FailFn] | None:
    """The framed stream of a native OpenAI chat call, or None when its delta stages cannot frame it."""
    stages = call.delta_stages
    framed = stages[0].framed(call, openai_chat.with_content) if len(stages) == 1 else None
    if framed is None:
        return None
    return _frames(call, upstream.iter_chunks(), framed, show_usage), openai_chat.stream_error


_DONE = object()  # what `_block` returns for the upstream's [DONE]


def _events(ready: bytes) -> list[bytes]:
    """The events of complete SSE text. Usually each is one line with an empty line after it: split at the
    newlines (a byte the search finds at memchr speed, where the two-byte separator is a slow search) when that
    holds, at the blank lines otherwise."""
    lines = ready.split(b"\n")
    events = lines[::2]
    if all(events) and not any(lines[1::2]):
        return events
    return ready.split(b"\n\n")


async def _frames(
    call: Call, chunks: AsyncIterator[bytes], framed: FramedText, show_usage: bool
) -> AsyncIterator[bytes]:
    buffer = b""
    sent = False  # whether any event went out (the decoded path then sends no role of its own)
    async for chunk in chunks:
        buffer += chunk.replace(b"\r\n", b"\n") if b"\r" in chunk else chunk
        end = buffer.rfind(b"\n\n")
        if end < 0:
            continue
        ready, buffer = buffer[:end], buffer[end + 2 :]
        out: list[bytes] = []
        blocks = _events(ready)
        for i, block in enumerate(blocks):
            released = _block(call, framed, block, show_usage) if block else b""
            if released is _DONE:
                out += [framed.flush(), block, b"\n\n"]
                yield FinalChunk(b"".join(out))
                async for _ in chunks:  # the answer is complete; the rest of the body is drained
                    pass
                return
            if released is None:  # not plain: the rest goes the decoded way
                if out:
                    yield b"".join(out)
                rest = b"\n\n".join(blocks[i:]) + b"\n\n" + buffer
                async for part in _decoded(call, framed, rest, chunks, show_usage, sent or any(out)):
                    yield part
                return
            assert isinstance(released, bytes)
            out.append(released)
        joined = b"".join(out)
        if joined:
            sent = True
            yield joined
    raise UpstreamError("upstream stream ended before [DONE]", kind="protocol")


def _block(call: Call, framed: FramedText, block: bytes, show_usage: bool) -> bytes | object | None:
    """What one upstream event releases: bytes, `_DONE` at [DONE], None for an event that is not plain."""
    if block.startswith(b"data: "):
        payload = block[6:]
    elif block.startswith(b":"):  # an SSE comment (a keep-alive): no text, kept in its place
        return framed.push(Frame(block + b"\n\n", "", None))
    elif block.startswith(b"data:"):
        payload = block[5:]
    else:
        return None
    if b"\n" in payload:
        return None
    if payload == b"[DONE]":
        return _DONE
    plain = openai_chat.plain_chunk(payload)
    if plain is None:
        return None
    if plain.usage is not None:  # read before the stage sees anything: billing never depends on it
        ctx = call.ctx
        ctx.raw_usage, ctx.usage = plain.usage, openai_chat.usage_from(plain.usage)
        if not show_usage and not plain.choices:
            return b""  # the usage chunk the gateway asked for and the client did not
    released = framed.push(Frame(block + b"\n\n", plain.text, payload))
    return released + framed.flush() if plain.finish else released


async def _prepend(first: bytes, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in chunks:
        yield chunk


def _decoded(
    call: Call, framed: FramedText, rest: bytes, chunks: AsyncIterator[bytes], show_usage: bool, sent: bool
) -> AsyncIterator[bytes]:
    """The rest of the stream on the decoded path: the held events' text first, then `rest` and `chunks`."""
    ctx = call.ctx
    encoder = openai_chat.StreamEncoder(
        model=ctx.requested_model or "", request_id=ctx.request_id, include_usage=show_usage
    )
    encoder.sent_role = sent
    encoder.usage = ctx.usage
    prelude: list[StreamEvent] = [TextDelta(text=frame.text) for frame in framed.take() if frame.text]
    return translate_stream(call, _prepend(rest, chunks), openai_chat.StreamDecoder(), encoder, prelude)
