"""Honest streams under routing: failover only before the first byte, a mid-stream cut ends in an error the SDK
raises (recorded as failed, never retried), and a client leaving mid-stream stops the upstream (recorded
cancelled)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import openai
import pytest

from odock.mock.testing import MockServer
from odock.state.service import CatalogueService
from tests.harness import GatewayProcess
from tests.routing.conftest import attempts_of, called_since, last_seq, make_key, models_since, wait_usage


def client(gateway: GatewayProcess, secret: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.base_url + "/v1", api_key=secret, max_retries=0)


async def test_stream_fails_over_before_first_byte(
    gateway: GatewayProcess, service: CatalogueService, mock: MockServer
) -> None:
    """A stream whose first deployment answers 503 is served whole by the backup; the client sees one clean
    stream and x-odock-model names the backup."""
    secret = await make_key(service, {"candidates": ["good-a"], "cooldown": {"failures": 0}})
    seq = last_seq(mock)
    async with client(gateway, secret) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="e5-s", messages=[{"role": "user", "content": "stream please"}], stream=True
        )
        chunks = [chunk async for chunk in raw.parse()]
    assert raw.headers["x-odock-model"] == "good-a"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert models_since(mock, seq) == ["e5-s", "good-a"]
    record = await wait_usage(service, raw.headers["x-request-id"])
    assert record["outcome"] == "success" and record["stream"]
    assert attempts_of(record) == [("e5-s", "failed", "5xx"), ("good-a", "success", None)]


async def test_mid_stream_cut_raises_in_sdk_and_is_not_retried(
    gateway: GatewayProcess, service: CatalogueService, mock: MockServer
) -> None:
    """An upstream cutting the stream after a few events makes the OpenAI SDK raise; no failover happens after
    the first byte (the backup is never called) and the usage record says failed."""
    secret = await make_key(service, {"candidates": ["good-a", "good-b"], "failoverOn": ["any"]})
    seq = last_seq(mock)
    received: list[str] = []
    async with client(gateway, secret) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="good-a",
            stream=True,
            messages=[{"role": "user", "content": "tell me a long story [[mock cut_after=3]]"}],
        )
        with pytest.raises(openai.APIError):
            async for chunk in raw.parse():
                if chunk.choices:
                    received.append(chunk.choices[0].delta.content or "")
    assert received  # the cut came after real content reached the client
    calls = called_since(mock, seq)
    assert [c["model"] for c in calls] == ["good-a"] and calls[0]["events_sent"] == 3
    record = await wait_usage(service, raw.headers["x-request-id"])
    assert record["outcome"] == "failed" and record["error_code"] == "upstream_error"
    assert attempts_of(record) == [
        ("good-a", "success", None)
    ]  # the attempt succeeded; the stream broke later


async def test_client_disconnect_stops_upstream(
    gateway: GatewayProcess, service: CatalogueService, mock: MockServer
) -> None:
    """A client leaving mid-stream cancels the upstream call (the mock sees the disconnect before sending all
    events) and the usage record is written with outcome cancelled."""
    secret = await make_key(service, {"candidates": ["good-a", "good-b"]})
    seq = last_seq(mock)
    body = {
        "model": "good-a",
        "stream": True,
        "messages": [{"role": "user", "content": "slowly [[mock chunk_delay_ms=40 chunks=60]]"}],
    }
    async with (
        httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http,
        http.stream(
            "POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"}, json=body
        ) as resp,
    ):
        assert resp.status_code == 200
        request_id = resp.headers["x-request-id"]
        async for _chunk in resp.aiter_bytes():
            break  # the first bytes arrived: leave
    entry: dict[str, Any] = {}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        calls = called_since(mock, seq)
        if calls and calls[0]["events_sent"] is not None:
            entry = calls[0]
            break
        await asyncio.sleep(0.02)
    assert entry, "the mock never finished the stream"
    assert entry["model"] == "good-a" and len(called_since(mock, seq)) == 1
    assert entry["client_disconnected"] and entry["events_sent"] < 60
    record = await wait_usage(service, request_id)
    assert record["outcome"] == "cancelled" and record["error_code"] == "client_disconnected"
