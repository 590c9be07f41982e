"""A screened stream's response head, over a raw socket to a live gateway: while SafetySec holds the answer's first
bytes back, the head waits for them (a short answer leaves with its head in one write, where a head sent at once
goes alone) but never longer than `HEAD_WAIT_S`: a slow answer's head arrives long before its text."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator

import pytest

from odock.mock.testing import MockServer
from odock.pipeline.call import HEAD_WAIT_S
from tests.edge.test_connections import connect
from tests.harness import GatewayProcess, seeded_gateway


@pytest.fixture(scope="module")
async def screening_gateway(
    tmp_path_factory: pytest.TempPathFactory, mock: MockServer
) -> AsyncIterator[tuple[GatewayProcess, str]]:
    """A gateway with SafetySec on everywhere (its defaults redact personal data and secrets in answers)."""
    async with seeded_gateway(
        tmp_path_factory.mktemp("stream-head"), mock.base_url, {"SAFETY_ENGINE_MODE": "security"}
    ) as started:
        yield started


def _stream_request(secret: str, directives: str) -> bytes:
    body = json.dumps(
        {
            "model": "gpt-test",
            "stream": True,
            "messages": [{"role": "user", "content": f"Say hello. [[mock {directives}]]"}],
        }
    ).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {secret}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _first_read_and_rest(sock: socket.socket) -> tuple[bytes, float, bytes]:
    """The first bytes the gateway sends (and how long after the request), then the rest up to the chunked end."""
    started = time.monotonic()
    first = sock.recv(65536)
    waited = time.monotonic() - started
    rest = b""
    while not (first + rest).endswith(b"0\r\n\r\n"):
        more = sock.recv(65536)
        assert more, "the gateway closed the connection mid-answer"
        rest += more
    return first, waited, rest


def test_a_short_screened_answer_leaves_with_its_head(screening_gateway: tuple[GatewayProcess, str]) -> None:
    # the upstream's events come 2 ms apart: a head sent at once would be the first read, alone
    proc, secret = screening_gateway
    with connect(proc) as sock:
        sock.sendall(_stream_request(secret, "chunks=3 chunk_delay_ms=2"))
        first, _, rest = _first_read_and_rest(sock)
    assert first.startswith(b"HTTP/1.1 200")
    assert b"\r\n\r\n" in first and b"data: " in first, first  # head and answer in one write
    assert (first + rest).count(b"data: [DONE]") == 1


def test_a_slow_screened_answer_gets_its_head_before_its_text(
    screening_gateway: tuple[GatewayProcess, str],
) -> None:
    proc, secret = screening_gateway
    with connect(proc) as sock:
        sock.sendall(_stream_request(secret, "chunks=3 chunk_delay_ms=400"))
        first, waited, rest = _first_read_and_rest(sock)
    assert first.startswith(b"HTTP/1.1 200") and first.endswith(b"\r\n\r\n"), first  # the head, alone
    assert HEAD_WAIT_S <= waited < 0.35, waited  # at the timer, not with the text (over a second later)
    assert b"data: " in rest and rest.count(b"data: [DONE]") == 1


def test_a_client_leaving_while_the_head_is_held_leaves_nothing_behind(
    screening_gateway: tuple[GatewayProcess, str],
) -> None:
    # the head's timer and the task it would start are cancelled: no error logged, and the next call is served
    proc, secret = screening_gateway
    with connect(proc) as sock:
        sock.sendall(_stream_request(secret, "chunks=3 chunk_delay_ms=400"))
        time.sleep(HEAD_WAIT_S / 5)  # the gateway has the request; its head is still held
    time.sleep(HEAD_WAIT_S * 4)  # past the head's timer
    with connect(proc) as sock:
        sock.sendall(_stream_request(secret, "chunks=2"))
        first, _, rest = _first_read_and_rest(sock)
    assert first.startswith(b"HTTP/1.1 200") and (first + rest).count(b"data: [DONE]") == 1
    log = proc.log()
    assert "Traceback" not in log and "exception" not in log.lower(), log
