"""Upstream SSE framing for the native relays: whole events, split events, CRLF, and untouched pass-through."""

from __future__ import annotations

from collections.abc import AsyncIterator

from odock.edge.endpoints.openai_media import sse_frames, sse_frames_passing


class Chunks:
    """An upstream response that delivers the given chunks."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"hi"}}\n\n'
STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
LOOK = (b"message_", b"error")


async def frames(resp: Chunks, untouched: tuple[bytes, ...] = ()) -> list[list[bytes] | bytes]:
    source = sse_frames_passing(resp, untouched) if untouched else sse_frames(resp)  # type: ignore[arg-type]
    return [frame async for frame in source]


async def test_events_are_grouped_per_chunk_and_split_events_joined() -> None:
    got = await frames(Chunks(DELTA + STOP[:20], STOP[20:], b"data: tail"))
    assert got == [[DELTA[:-2]], [STOP[:-2]], [b"data: tail"]]


async def test_crlf_framing_is_normalized_even_across_chunks() -> None:
    crlf = DELTA.replace(b"\n", b"\r\n")
    got = await frames(Chunks(crlf[:-1], crlf[-1:]))
    assert got == [[DELTA[:-2]]]


async def test_chunks_without_markers_pass_untouched() -> None:
    """Whole events with nothing to read come as the same bytes; anything else is split as usual."""
    got = await frames(Chunks(DELTA * 2, DELTA + STOP, DELTA[:10], DELTA[10:] + DELTA), LOOK)
    assert got[0] == DELTA * 2  # passed through as is
    assert got[1] == [DELTA[:-2], STOP[:-2]]  # a marker: split for the relay to read
    assert got[2] == [DELTA[:-2], DELTA[:-2]]  # completes a buffered event: never passed through raw
    crlf = DELTA.replace(b"\n", b"\r\n")
    assert await frames(Chunks(crlf), LOOK) == [[DELTA[:-2]]]
