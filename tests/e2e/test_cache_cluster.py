"""The response cache across two live gateway processes (PostgreSQL + Redis): a stampede of 50 identical calls
spread over both makes one upstream call, and a purge through one process (the CLI) empties it for both."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import httpx
import pytest

from odock.cli import main
from odock.mock.testing import MockServer
from tests.e2e.conftest import ClusterFactory, chat_body, eventually, make_tenant, post_chat, seen

CACHE_ON = {"cache": {"mode": "exact", "ttl": "10m"}}


async def test_a_stampede_across_two_processes_makes_one_upstream_call(
    cluster: ClusterFactory, mock: MockServer, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = cluster(), cluster()
    first.start()
    second.start()
    tenant = await make_tenant(first, mock.base_url, org_policies=CACHE_ON)
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=128)) as http:

        async def wired(gw: object) -> bool:
            probe = await post_chat(http, gw, tenant, chat_body(max_tokens=4, words=2))  # type: ignore[arg-type]
            return "x-odock-cache" in probe.headers

        # the second process learns of the new policy through the invalidation channel
        await eventually(lambda: wired(first))
        await eventually(lambda: wired(second))
        mock.clear()
        body = chat_body(max_tokens=8, words=5, latency_ms=300)
        answers = await asyncio.gather(
            *(post_chat(http, (first, second)[i % 2], tenant, body) for i in range(50))
        )
        assert {r.status_code for r in answers} == {200}
        assert Counter(r.headers["x-odock-cache"] for r in answers) == {"HIT": 49, "MISS": 1}
        assert len({r.json()["choices"][0]["message"]["content"] for r in answers}) == 1
        assert len(seen(mock, tenant)) == 1

        # purged through the first process (the CLI, over its admin API): the second misses too
        command = ["cache", "purge", "--org", tenant.org, "--model", "chat", "--json"]
        with pytest.raises(SystemExit) as ended:
            main([*command, "--url", first.base_url, "--admin-token", first.admin_token])
        assert ended.value.code == 0
        assert json.loads(capsys.readouterr().out)["purged"] >= 1
        again = await post_chat(http, second, tenant, body)
        assert again.headers["x-odock-cache"] == "MISS"
        assert len(seen(mock, tenant)) == 2
