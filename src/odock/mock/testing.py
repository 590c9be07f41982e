"""Start the mock upstream inside a test: a real uvicorn server on a loopback port, on a background thread."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import uvicorn

from odock.mock.directives import MockDefaults
from odock.mock.server import MockApp, create_app, quiet_cut_logs

START_TIMEOUT_S = 10.0


class MockServer:
    """A mock upstream served by uvicorn on its own thread and event loop."""

    def __init__(self, port: int = 0, defaults: MockDefaults | None = None) -> None:
        self.app: MockApp = create_app(defaults)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self.port: int = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.app, loop="uvloop", http="httptools", lifespan="off", log_level="warning", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            name=f"odock-mock-{self.port}",
            daemon=True,
        )

    def start(self) -> None:
        """Start serving and wait (bounded) until the server accepts connections."""
        quiet_cut_logs()
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the mock upstream did not start")
            time.sleep(0.005)

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        self._server.should_exit = True
        self._thread.join(timeout=START_TIMEOUT_S)
        self._sock.close()

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Return the journal of recorded requests (oldest first)."""
        return list(self.app.journal)

    def clear(self) -> None:
        """Forget the recorded requests."""
        self.app.journal.clear()


@contextmanager
def mock_server(port: int = 0, defaults: MockDefaults | None = None) -> Iterator[MockServer]:
    """Run a mock upstream for the duration of a `with` block."""
    server = MockServer(port, defaults)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@asynccontextmanager
async def running_mock(port: int = 0, defaults: MockDefaults | None = None) -> AsyncIterator[str]:
    """Run a mock upstream for the duration of an `async with` block; yield its base URL."""
    server = MockServer(port, defaults)
    await asyncio.to_thread(server.start)
    try:
        yield server.base_url
    finally:
        await asyncio.to_thread(server.stop)


def fetch_journal(base_url: str) -> list[dict[str, Any]]:
    """Read the journal of a mock (possibly another process) over HTTP."""
    with urllib.request.urlopen(base_url + "/_mock/requests", timeout=5) as response:
        return list(json.loads(response.read())["requests"])


def clear_journal(base_url: str) -> None:
    """Clear the journal of a mock over HTTP."""
    request = urllib.request.Request(base_url + "/_mock/requests", method="DELETE")
    with urllib.request.urlopen(request, timeout=5):
        pass
