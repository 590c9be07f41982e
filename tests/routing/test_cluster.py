"""Cluster mode (PostgreSQL + Redis): round-robin rotation is shared by every gateway process of a key."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from odock.mock.testing import MockServer
from tests.harness import GatewayProcess
from tests.routing.conftest import chat, last_seq, models_since


@pytest.fixture()
def cluster(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[list[GatewayProcess]]:
    """Two gateway processes on one PostgreSQL database and one Redis, sharing the secret key."""
    secret_key = base64.b64encode(os.urandom(32)).decode()
    procs = []
    for index in range(2):
        workdir = tmp_path / f"gw{index}"
        workdir.mkdir()
        procs.append(
            GatewayProcess(workdir, database_url=postgres_url, redis_url=redis_url, secret_key=secret_key)
        )
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop()


async def test_round_robin_shared_across_processes(
    cluster: list[GatewayProcess], mock: MockServer, redis_url: str
) -> None:
    """Calls alternating between two processes still rotate A, B, A, B: the turn is one Redis counter per
    (key, model type), not a per-process counter (which would give A, A, B, B)."""
    first, second = cluster
    service = await first.open_service()
    try:
        await service.create_organisation({"name": "rr", "policies": {"routing": {"enabled": True}}})
        await service.create_provider(
            {
                "organisation": "rr",
                "name": "oa",
                "type": "openai",
                "base_url": f"{mock.base_url}/v1",
                "api_key": "sk-upstream-test",
            }
        )
        for name in ("crr-a", "crr-b"):
            await service.create_model({"organisation": "rr", "name": name, "provider": "oa", "slug": name})
        created = await service.create_key(
            {
                "organisation": "rr",
                "name": "rr-key",
                "type": "ORGANISATION",
                "models": ["crr-a", "crr-b"],
                "policies": {
                    "routing": {"chat": {"strategy": "round_robin", "candidates": ["crr-a", "crr-b"]}}
                },
            }
        )
    finally:
        await service.store.close()
    first.start()
    second.start()
    counter = f"odock:routing:rr:{created.key.id}:chat"
    seq = last_seq(mock)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            for turn in range(8):
                proc = cluster[turn % 2]
                resp = await chat(
                    proc, created.secret, "crr-a", http=http, path=proc.base_url + "/v1/chat/completions"
                )
                assert resp.status_code == 200, resp.text
        assert models_since(mock, seq) == ["crr-a", "crr-b"] * 4
    finally:
        client = aioredis.from_url(redis_url)
        try:
            assert int(await client.get(counter) or 0) == 8
            await client.delete(counter)
        finally:
            await client.aclose()
