"""A real local HTTP service for the webhook tests (the plugin type and SafetySec's external guard): aiohttp on
127.0.0.1, and the receiving side of the gateway's HMAC signature, written here independently of the gateway's."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web


def signed_by(secret: str, request: web.Request, body: bytes) -> bool:
    """Whether `body` carries a valid `X-Odock-Signature` (sha256 HMAC over "<timestamp>.<body>") for `secret`."""
    timestamp = request.headers.get("x-odock-timestamp", "")
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(f"sha256={expected}", request.headers.get("x-odock-signature", ""))


@contextlib.asynccontextmanager
async def serving(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[str]:
    """Serve `handler` at POST /check on a free loopback port; yield its URL."""
    app = web.Application()
    app.router.add_post("/check", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/check"
    finally:
        await runner.cleanup()
