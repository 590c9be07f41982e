"""The SSE parser reads whole one-line `data:` events without its line loop: whatever the chunking, it must yield
exactly the events the line-by-line reading of the whole stream yields (CRLF, comments, named events, multi-line
data, blank-line runs, an unterminated last event, UTF-8 split across chunks)."""

from __future__ import annotations

import random

from odock.dialects.sse import SSEParser

EVENTS = [
    b'data: {"choices":[{"delta":{"content":"caf\xc3\xa9 \xe2\x82\xac"}}]}\n\n',
    b"data:no-space\n\n",
    b"data: \n\n",
    b"data:\n\n",
    b"event: message_start\ndata: {}\n\n",
    b": keep-alive\n\n",
    b"data: first\ndata: second\n\n",
    b"\n\n",
    b"data: crlf\r\n\r\n",
    b"event: ping\n\n",
    b"id: 7\ndata: with id\n\n",
    b"data\n\n",
    b"data: [DONE]\n\n",
]


def _reference(stream: bytes) -> list[tuple[str | None, str]]:
    """The SSE reading, line by line, of a whole stream."""
    out: list[tuple[str | None, str]] = []
    event: str | None = None
    data: list[str] = []
    lines = stream.split(b"\n")
    tail = lines.pop()  # after the last newline: an unterminated line, read at the end (`flush`)
    for line_bytes in [*lines, tail] if tail else lines:
        line = line_bytes.rstrip(b"\r").decode("utf-8", "replace")
        if not line:
            if data or event is not None:
                out.append((event, "\n".join(data)))
            event, data = None, []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            if name == "data":
                data.append(value.removeprefix(" "))
            elif name == "event":
                event = value.removeprefix(" ")
    if data:
        out.append((event, "\n".join(data)))
    return out


def _parse(chunks: list[bytes]) -> list[tuple[str | None, str]]:
    parser = SSEParser()
    events = [e for chunk in chunks for e in parser.feed(chunk)] + list(parser.flush())
    return [(e.event, e.data) for e in events]


def test_every_two_piece_split_reads_the_same_events() -> None:
    stream = b"".join(EVENTS)
    expected = _reference(stream)
    assert ("message_start", "{}") in expected and (None, "first\nsecond") in expected
    for cut in range(len(stream) + 1):
        assert _parse([stream[:cut], stream[cut:]]) == expected, cut


def test_random_streams_and_chunkings_read_the_same_events() -> None:
    rng = random.Random(7)
    for _ in range(400):
        stream = b"".join(rng.choice(EVENTS) for _ in range(rng.randint(1, 12)))
        if rng.random() < 0.3:
            stream += b"data: unterminated"
        cuts = sorted(rng.sample(range(len(stream) + 1), k=min(len(stream) + 1, rng.randint(0, 8))))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        assert _parse(chunks) == _reference(stream), (stream, cuts)
