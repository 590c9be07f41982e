"""The console's own listener (ODOCK_CONSOLE_PORT): a second uvicorn server in the gateway's process and event
loop, serving the console and the admin API, so that operators reach them on a port the clients' traffic never
uses (and that a firewall can keep internal).

Bound with SO_REUSEPORT, as the main port is shared by uvicorn's workers: with ODOCK_WORKERS > 1 every worker
listens and the kernel spreads the console's connections over them. uvicorn's `Server.serve()` would install its
own signal handlers over the main server's, so the listener runs its parts (startup, tick loop, shutdown). The
socket is bound at once, so a port in use fails the gateway's start-up with a message that names the setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import uvicorn
from starlette.types import ASGIApp

log = logging.getLogger("odock.console")


def _socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"the console cannot listen on {host}:{port} (ODOCK_CONSOLE_PORT): {exc}") from exc
    sock.setblocking(False)
    return sock


class ConsoleListener:
    """`app` on host:port until `stop()`."""

    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        self.sock = _socket(host, port)
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            lifespan="off",
            access_log=False,
            log_config=None,
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=5,
        )
        config.load()
        self.server = uvicorn.Server(config)
        self.server.lifespan = config.lifespan_class(config)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Serve from now on, on the running event loop (the socket is bound already)."""
        self._task = asyncio.get_running_loop().create_task(self._serve(), name="console-listener")

    async def _serve(self) -> None:
        try:
            await self.server.startup(sockets=[self.sock])
            log.info("console listening on its own port %d", self.port)
            # the tick loop keeps the Date header current and ends when should_exit is set
            await self.server.main_loop()
        except Exception:
            log.exception("the console's listener stopped")

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.server.started:
            await self.server.shutdown(sockets=[self.sock])
        self.sock.close()
