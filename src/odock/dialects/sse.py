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
        self._buffer += chunk
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                return
            line = self._buffer[:newline].rstrip(b"\r").decode("utf-8", "replace")
            self._buffer = self._buffer[newline + 1 :]
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
