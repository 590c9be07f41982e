"""A small multipart/form-data parser: enough to check that uploads arrive intact."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from odock.mock.wire import BadRequest


@dataclass(frozen=True, slots=True)
class Part:
    """One form field: its name, optional filename and content type, and raw bytes."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes

    @property
    def digest(self) -> str:
        """Return the first 12 hex digits of the data's SHA-256."""
        return hashlib.sha256(self.data).hexdigest()[:12]


def _param(header: str, key: str) -> str | None:
    for item in header.split(";")[1:]:
        name, _, value = item.strip().partition("=")
        if name.strip().lower() == key:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    return None


def parse(content_type: str, body: bytes) -> list[Part]:
    """Split a multipart/form-data body into its parts, or raise BadRequest."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise BadRequest("expected a multipart/form-data body")
    boundary = _param(content_type, "boundary")
    if not boundary:
        raise BadRequest("multipart body without a boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    chunks = body.split(delimiter)
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        raise BadRequest("multipart body is truncated (no closing boundary)")
    parts: list[Part] = []
    for chunk in chunks[1:-1]:
        # Each part is framed as CRLF headers CRLF CRLF data CRLF before the next delimiter.
        if chunk.startswith(b"\r\n"):
            chunk = chunk[2:]
        if chunk.endswith(b"\r\n"):
            chunk = chunk[:-2]
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise BadRequest("malformed multipart part")
        headers: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        name = _param(disposition, "name")
        if name is None:
            raise BadRequest("multipart part without a name")
        parts.append(Part(name, _param(disposition, "filename"), headers.get("content-type"), data))
    return parts


def fields(parts: list[Part]) -> dict[str, str]:
    """Return the non-file parts as text fields (last one wins)."""
    return {p.name: p.data.decode("utf-8", "replace") for p in parts if p.filename is None}


def files(parts: list[Part]) -> list[Part]:
    """Return the file parts."""
    return [p for p in parts if p.filename is not None]


def describe(parts: list[Part]) -> str:
    """Summarise the file parts as `name=size:sha` items (for the `x-mock-files` header)."""
    return ",".join(f"{p.name}={len(p.data)}:{p.digest}" for p in files(parts))
