"""The bare Python forwarder: the floor Python itself sets for a proxy (issue 16).

uvicorn (httptools, uvloop) + a raw ASGI app + one aiohttp session: every request is sent to the same upstream
with its method, path, body and content headers, and the answer is relayed (unary whole, streams chunk by chunk).
No auth, no accounting, no routing, no logging: what any Python gateway pays before doing anything of its own.

    python -m bench.forwarder --port P --upstream http://127.0.0.1:M
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import uvicorn

HEALTH = "/_forwarder/health"
# request headers worth sending on (the rest are hop-by-hop or aiohttp's own)
FORWARDED = frozenset(
    {b"content-type", b"authorization", b"x-api-key", b"anthropic-version", b"x-goog-api-key"}
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Forwarder:
    """A raw ASGI app relaying every HTTP request to `upstream`."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["path"] == HEALTH:
            await _answer(send, 200, [(b"content-type", b"text/plain")], b"ok")
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k in FORWARDED}
        url = (
            self.upstream
            + scope["path"]
            + (("?" + scope["query_string"].decode()) if scope["query_string"] else "")
        )
        assert self.session is not None
        try:
            async with self.session.request(scope["method"], url, data=body, headers=headers) as resp:
                out = [(b"content-type", resp.headers.get("content-type", "application/json").encode())]
                if resp.headers.get("transfer-encoding", "").lower() != "chunked":
                    await _answer(send, resp.status, out, await resp.read())
                    return
                await send({"type": "http.response.start", "status": resp.status, "headers": out})
                async for chunk in resp.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
        except aiohttp.ClientError:
            await _answer(send, 502, [(b"content-type", b"text/plain")], b"upstream error")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # no per-host cap, keep-alive pooling (what any proxy on aiohttp would configure)
                self.session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None),
                    auto_decompress=False,
                    skip_auto_headers=("User-Agent",),
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _answer(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.forwarder", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="base URL the requests are relayed to")
    args = p.parse_args(argv)
    uvicorn.run(
        Forwarder(args.upstream),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
    )


if __name__ == "__main__":
    main()
