"""The legacy HTTP+SSE transport (2024-11-05) relayed as it is: the client opens the GET stream through the
gateway, whose first `endpoint` event names the message URL; the gateway rewrites that URL to its own route
(`/v1/mcp/{slug}/<upstream path>`) with the session id wrapped in a signed token bound to the key, and unwraps it
again on each POST. The upstream SSE stream itself lives on one connection, so one process serves it; the POSTs
may reach any process."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

from odock.mcp.session import SessionSigner

SESSION_PARAMS = ("session_id", "sessionId")


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def rewrite_endpoint(data: str, route_prefix: str, signer: SessionSigner, key_id: str, server_id: str) -> str:
    """The upstream's message URL as one on this route, its session id wrapped."""
    parts = urlsplit(data.strip())
    query = [
        (k, signer.wrap(v, key_id, server_id) if k in SESSION_PARAMS else v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    path = route_prefix.rstrip("/") + "/" + parts.path.lstrip("/")
    return path + ("?" + urlencode(query) if query else "")


def rewrite_endpoint_event(
    event: bytes, route_prefix: str, signer: SessionSigner, key_id: str, server_id: str
) -> bytes:
    lines = event.replace(b"\r\n", b"\n").split(b"\n")
    if b"event: endpoint" not in lines and b"event:endpoint" not in lines:
        return event
    out = []
    for line in lines:
        if line.startswith(b"data:"):
            data = line[5:].lstrip(b" ").decode("utf-8", "replace")
            line = b"data: " + rewrite_endpoint(data, route_prefix, signer, key_id, server_id).encode()
        out.append(line)
    return b"\n".join(out)


def unwrap_query(query: str, signer: SessionSigner, key_id: str, server_id: str) -> str:
    """A POST's query with its session token swapped for the upstream's session id (404 when not this key's)."""
    pairs = [
        (k, signer.unwrap(v, key_id, server_id) if k in SESSION_PARAMS else v)
        for k, v in parse_qsl(query, keep_blank_values=True)
    ]
    return urlencode(pairs)
