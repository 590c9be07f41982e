"""Server-sent events: an incremental parser for upstream streams and an encoder for client streams."""

from __future__ import annotations

from collections.abc import Iterator


class SSEEvent:
    __slots__ = ("data", "event")

    def __init__(self, event: str | None, data: str) -> None:
        self.event = event
        self.data = data

    def __repr__(self) -> str:
        return f"SSEEvent(event={self.event!r}, data={self.data[:60]!r})"


class SSEParser:
    """Feed raw bytes as they arrive; get complete events out. Handles \\n, \\r\\n and split chunks."""

    __slots__ = ("_buffer", "_data", "_event")

    def __init__(self) -> None:
        self._buffer = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> Iterator[SSEEvent]:
        data = self._buffer + chunk
        self._buffer = b""
        if b"\r" not in data and not self._data and self._event is None:
            # at a line start with no event half-read and no CR, the complete events end at each b"\n\n": an
            # event of one `data:` line (what providers send) is read whole, anything else by the line loop
            end = data.rfind(b"\n\n")
            if end >= 0:
                ready, data = data[:end], data[end + 2 :]
                for block in ready.split(b"\n\n"):
                    if block.startswith(b"data:") and b"\n" not in block:
                        yield SSEEvent(None, block[5:].decode("utf-8", "replace").removeprefix(" "))
                    else:
                        yield from self._lines(block + b"\n\n")
        yield from self._lines(data)

    def _lines(self, data: bytes) -> Iterator[SSEEvent]:
        """Read the complete lines of `data`; keep the unterminated rest for the next chunk."""
        start = 0
        while True:
            newline = data.find(b"\n", start)
            if newline < 0:
                self._buffer = data[start:]
                return
            line = data[start:newline].rstrip(b"\r").decode("utf-8", "replace")
            start = newline + 1
            if not line:
                if self._data or self._event is not None:
                    yield SSEEvent(self._event, "\n".join(self._data))
                self._event, self._data = None, []
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._event = value

    def flush(self) -> Iterator[SSEEvent]:
        """Yield an event left unterminated at end of stream (some servers omit the final blank line)."""
        if self._buffer:
            yield from self.feed(b"\n")
        if self._data:
            yield SSEEvent(self._event, "\n".join(self._data))
            self._event, self._data = None, []


def sse(data: bytes, event: str | None = None) -> bytes:
    """Encode one SSE event (data must be a single line, as JSON is)."""
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"
