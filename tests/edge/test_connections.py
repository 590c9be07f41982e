"""Connection limits of a live gateway, over raw sockets: head size cap (431), header and idle timeouts, and a
concurrency cap that counts requests being served, not open connections."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, BinaryIO

import httpx
import openai
import pytest

from odock.mock.testing import MockServer
from odock.settings import load_settings
from tests.harness import GatewayProcess, seeded_gateway

HEADER_TIMEOUT_S = 1.0
IDLE_TIMEOUT_S = 2.0
MAX_HEADER_BYTES = 16 * 1024
MAX_CONCURRENT = 4


@pytest.fixture(scope="module")
async def timeouts_gateway(
    tmp_path_factory: pytest.TempPathFactory, mock: MockServer
) -> AsyncIterator[tuple[GatewayProcess, str]]:
    """A gateway with short header and idle timeouts and a small head cap."""
    async with seeded_gateway(
        tmp_path_factory.mktemp("conn-timeouts"),
        mock.base_url,
        {
            "HTTP_READ_HEADER_TIMEOUT": f"{HEADER_TIMEOUT_S}s",
            "HTTP_IDLE_TIMEOUT": f"{IDLE_TIMEOUT_S}s",
            "HTTP_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
        },
    ) as started:
        yield started


@pytest.fixture(scope="module")
async def short_idle_gateway(
    tmp_path_factory: pytest.TempPathFactory, mock: MockServer
) -> AsyncIterator[tuple[GatewayProcess, str]]:
    """A gateway whose idle timeout is shorter than its header timeout (both on one clock per connection)."""
    async with seeded_gateway(
        tmp_path_factory.mktemp("conn-short-idle"),
        mock.base_url,
        {"HTTP_READ_HEADER_TIMEOUT": f"{IDLE_TIMEOUT_S * 2}s", "HTTP_IDLE_TIMEOUT": f"{HEADER_TIMEOUT_S}s"},
    ) as started:
        yield started


@pytest.fixture(scope="module")
async def capped_gateway(
    tmp_path_factory: pytest.TempPathFactory, mock: MockServer
) -> AsyncIterator[tuple[GatewayProcess, str]]:
    """A gateway serving at most MAX_CONCURRENT requests at once (header timeout left at its default)."""
    async with seeded_gateway(
        tmp_path_factory.mktemp("conn-cap"),
        mock.base_url,
        {
            "HTTP_MAX_CONCURRENT_REQUESTS": str(MAX_CONCURRENT),
        },
    ) as started:
        yield started


def connect(proc: GatewayProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proc.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the gateway has closed (FIN or RST) a socket we have nothing left to read from."""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(65536) == b""
    except OSError:
        return True


def wait_closed(sock: socket.socket, within: float, dribble: bytes = b"") -> float:
    """Seconds until the gateway closes the socket (sending `dribble` every 100 ms meanwhile); fails after `within`."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        if closed_by_peer(sock):
            return time.monotonic() - start
        if dribble:
            try:
                sock.sendall(dribble)
            except OSError:
                return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"the gateway kept the connection open for {within} s")


def read_response(reader: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body, from `sock.makefile("rb")` (pipelined answers queue)."""
    status_line = reader.readline()
    assert status_line, "connection closed before a response"
    headers: dict[str, str] = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = reader.read(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


HEALTH = b"GET /v1/health HTTP/1.1\r\nHost: gw\r\n\r\n"


def test_oversized_head_is_refused_with_431_and_closed(timeouts_gateway: tuple[GatewayProcess, str]) -> None:
    """A head over HTTP_MAX_HEADER_BYTES gets a JSON 431 and a close; heads within it, and big bodies, are served."""
    proc, secret = timeouts_gateway
    # a head just under the cap, then a body four times the cap in the same write: served
    content = json.dumps(
        {"model": "gpt-test", "messages": [{"role": "user", "content": "x" * (4 * MAX_HEADER_BYTES)}]}
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {secret}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(content)}\r\n"
    ).encode()
    padding = b"X-Pad: " + b"p" * (MAX_HEADER_BYTES - len(head) - 200) + b"\r\n\r\n"
    with connect(proc) as sock, sock.makefile("rb") as reader:
        sock.sendall(head + padding + content)
        status, _, _ = read_response(reader)
        assert status == 200
        # pipelined small requests, more bytes in all than the cap: each head is counted on its own
        pipelined = MAX_HEADER_BYTES // len(HEALTH) + 50
        sock.sendall(HEALTH * pipelined)
        assert [read_response(reader)[0] for _ in range(pipelined)] == [200] * pipelined

    with connect(proc) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 4096))
        status, headers, body = read_response(reader)
        assert status == 431
        assert headers["connection"] == "close" and headers["content-type"] == "application/json"
        assert json.loads(body)["error"]["code"] == "request_header_fields_too_large"
        assert wait_closed(sock, within=2) < 2


def test_connection_limits_must_be_positive(monkeypatch: pytest.MonkeyPatch) -> None:
    """A zero head cap or timeout is refused at start, naming the variable."""
    for name in ("HTTP_MAX_HEADER_BYTES", "HTTP_READ_HEADER_TIMEOUT", "HTTP_IDLE_TIMEOUT"):
        with monkeypatch.context() as env:
            env.setenv(name, "0")
            with pytest.raises(SystemExit, match=name):
                load_settings()


def test_endless_head_is_cut_off_while_others_are_served(
    timeouts_gateway: tuple[GatewayProcess, str],
) -> None:
    """A client streaming an endless header is disconnected early; /v1/health stays fast for everyone else."""
    proc, _ = timeouts_gateway
    total = 32 * 1024 * 1024
    sent = 0
    reset = threading.Event()

    def flood() -> None:
        nonlocal sent
        with connect(proc) as sock:
            piece = b"a" * 65536
            try:
                sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: gw\r\nX-Big: ")
                while sent < total:
                    sock.sendall(piece)
                    sent += len(piece)
            except OSError:  # the gateway closed: reset or broken pipe
                reset.set()

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    slowest = 0.0
    with httpx.Client(base_url=proc.base_url, timeout=10) as http:
        while thread.is_alive() and slowest < 5:
            start = time.monotonic()
            assert http.get("/v1/health").status_code == 200
            slowest = max(slowest, time.monotonic() - start)
    thread.join(timeout=30)
    assert reset.is_set(), f"the gateway read all {sent} bytes of an endless header"
    # what was sent before the reset is the cap plus what the two sockets' kernel buffers hold
    assert sent < total // 2
    assert slowest < 1.0


def test_silent_connection_is_closed_after_the_header_timeout(
    timeouts_gateway: tuple[GatewayProcess, str],
) -> None:
    """A connection that never sends a byte is closed at HTTP_READ_HEADER_TIMEOUT."""
    proc, _ = timeouts_gateway
    with connect(proc) as sock:
        elapsed = wait_closed(sock, within=HEADER_TIMEOUT_S + 4)
    assert elapsed >= HEADER_TIMEOUT_S * 0.9


def test_slowloris_head_is_closed_at_the_header_timeout(timeouts_gateway: tuple[GatewayProcess, str]) -> None:
    """A head dribbled byte by byte is closed at the header timeout, even though bytes keep arriving."""
    proc, _ = timeouts_gateway
    with connect(proc) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: gw\r\n")
        elapsed = wait_closed(sock, within=HEADER_TIMEOUT_S + 4, dribble=b"X")
    assert elapsed >= HEADER_TIMEOUT_S * 0.9


def test_header_timeout_applies_to_each_head_of_a_keep_alive_connection(
    timeouts_gateway: tuple[GatewayProcess, str],
) -> None:
    """After one good request, a dribbled second head is closed at the header timeout (not the idle one)."""
    proc, _ = timeouts_gateway
    with connect(proc) as sock, sock.makefile("rb") as reader:
        sock.sendall(HEALTH)
        assert read_response(reader)[0] == 200
        sock.sendall(b"GET /v1/health HTTP/1.1\r\n")
        elapsed = wait_closed(sock, within=HEADER_TIMEOUT_S + 4, dribble=b"X")
    assert elapsed >= HEADER_TIMEOUT_S * 0.9


def test_idle_keep_alive_connection_is_closed_after_the_idle_timeout(
    timeouts_gateway: tuple[GatewayProcess, str],
) -> None:
    """An idle keep-alive connection outlives the header timeout and is closed at HTTP_IDLE_TIMEOUT."""
    proc, _ = timeouts_gateway
    with connect(proc) as sock, sock.makefile("rb") as reader:
        sock.sendall(HEALTH)
        assert read_response(reader)[0] == 200
        time.sleep(HEADER_TIMEOUT_S + 0.3)
        assert not closed_by_peer(sock)
        sock.sendall(
            HEALTH
        )  # a second request on the same connection is served, then the idle clock restarts
        assert read_response(reader)[0] == 200
        elapsed = wait_closed(sock, within=IDLE_TIMEOUT_S + 4)
    assert elapsed >= IDLE_TIMEOUT_S * 0.9


def test_an_idle_timeout_shorter_than_the_header_timeout_is_kept(
    short_idle_gateway: tuple[GatewayProcess, str],
) -> None:
    """The idle deadline comes before the pending header deadline: the connection still closes at the idle one."""
    proc, _ = short_idle_gateway
    with connect(proc) as sock, sock.makefile("rb") as reader:
        sock.sendall(HEALTH)
        assert read_response(reader)[0] == 200
        elapsed = wait_closed(sock, within=IDLE_TIMEOUT_S * 2)
    assert HEADER_TIMEOUT_S * 0.9 <= elapsed < IDLE_TIMEOUT_S * 2 * 0.9


@pytest.fixture()
def silent_sockets(capped_gateway: tuple[GatewayProcess, str]) -> Iterator[list[socket.socket]]:
    """MAX_CONCURRENT + 50 connections to the capped gateway that never send a byte."""
    proc, _ = capped_gateway
    sockets = [connect(proc) for _ in range(MAX_CONCURRENT + 50)]
    yield sockets
    for sock in sockets:
        sock.close()


async def test_silent_connections_do_not_count_against_the_cap(
    capped_gateway: tuple[GatewayProcess, str], silent_sockets: list[socket.socket]
) -> None:
    """With HTTP_MAX_CONCURRENT_REQUESTS=N, N+50 silent sockets leave every real request served."""
    proc, secret = capped_gateway
    async with openai.AsyncOpenAI(base_url=proc.base_url + "/v1", api_key=secret, max_retries=0) as client:
        for _ in range(5):
            answers = await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model="gpt-test", messages=[{"role": "user", "content": "hi"}]
                    )
                    for _ in range(MAX_CONCURRENT)
                )
            )
            assert all(answer.choices[0].message.content for answer in answers)
    async with httpx.AsyncClient(base_url=proc.base_url) as http:
        probes = await asyncio.gather(*(http.get("/v1/health") for _ in range(MAX_CONCURRENT)))
        assert [r.status_code for r in probes] == [200] * MAX_CONCURRENT
    assert not any(closed_by_peer(sock) for sock in silent_sockets)  # they were still open all along


async def test_requests_beyond_the_cap_get_503_server_busy(
    capped_gateway: tuple[GatewayProcess, str],
) -> None:
    """N requests in flight are served; the ones arriving meanwhile get 503 server_busy (JSON, the SDK's error)."""
    proc, secret = capped_gateway
    extra = 3
    async with openai.AsyncOpenAI(base_url=proc.base_url + "/v1", api_key=secret, max_retries=0) as client:

        async def call() -> Any:
            try:
                return await client.chat.completions.create(
                    model="gpt-test", messages=[{"role": "user", "content": "[[mock latency_ms=1500]] hi"}]
                )
            except openai.APIStatusError as exc:
                return exc

        outcomes = await asyncio.gather(*(call() for _ in range(MAX_CONCURRENT + extra)))
        refused = [o for o in outcomes if isinstance(o, openai.APIStatusError)]
        assert len(refused) == extra
        assert all(o.status_code == 503 and o.code == "server_busy" for o in refused)
        # once they are done, the gateway serves again
        answer = await client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content
