"""MCP usage records (reference §11.7): each MCP call leaves a `UsageRecord` (provider `mcp`) and an MCP usage
record (server, method, tool, bytes in/out, latency, outcome, cost) with the same id, written by the usage writer
in the transaction of its usage record (SQLite and PostgreSQL), read through GET /admin/mcp/usage (filters, keyset
pages), and as durable as every usage record: spooled before the answer completes, replayed after a SIGKILL."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from odock.app import admin_app_for
from odock.state import schema
from odock.state.records import McpUsage, UsageRecord
from odock.state.sql import SqlStore
from tests.harness import GatewayProcess, wait_usage
from tests.mcp.servers import McpEnv, demo_server, mcp_gateway, seed_lean_stdio, serve
from tests.sql_fixtures import db, store  # noqa: F401  (fixtures: SQLite and PostgreSQL)

ADMIN = "mcp-usage-admin"


def call(rid: int, tool: str = "echo", **arguments: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }


@pytest.fixture(scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[McpEnv]:
    async with (
        serve(demo_server("usage").streamable_http_app(json_response=True, stateless_http=True)) as url,
        mcp_gateway(tmp_path_factory.mktemp("mcp-usage"), admin_token=ADMIN) as env,
    ):
        await env.add_server(
            "priced",
            url + "/mcp",
            blocked_tools=["secret_tool"],
            pricing={"callNanosUsd": 1000, "inputByteNanosUsd": 2, "outputByteNanosUsd": 3},
        )
        await env.add_server("other", url + "/mcp")
        yield env


def admin(env: McpEnv) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=admin_app_for(env.gw.gateway)),
        base_url="http://admin",
        headers={"Authorization": f"Bearer {ADMIN}"},
    )


async def test_a_call_leaves_both_records_and_the_admin_api_reads_them(env: McpEnv) -> None:
    """A tools/call: the UsageRecord (provider mcp, the cost) and the MCP record share an id; the MCP record holds
    server, method, tool, bytes in/out, latency, outcome, the same cost and the pricing snapshot."""
    resp = await env.post("priced", call(7, text="hi"), "mcp-usage-ok")
    assert resp.status_code == 200 and "result" in resp.json()
    usage = await wait_usage(env.gw.service, "mcp-usage-ok")
    assert usage["provider"] == "mcp" and usage["model"] == "priced" and usage["route"] == "mcp"
    async with admin(env) as http:
        page = (await http.get("/admin/mcp/usage", params={"server": "priced", "tool": "echo"})).json()
    [row] = [r for r in page["data"] if r["request_id"] == "mcp-usage-ok"]
    assert row["id"] == usage["id"]
    server = await env.service.get_mcp_server("priced", "acme")
    assert row["mcp_server_id"] == server.id and row["server"] == "priced"
    assert (row["transport"], row["method"], row["tool"], row["tool_calls"]) == (
        "STREAMABLE_HTTP",
        "tools/call",
        "echo",
        1,
    )
    assert (row["status"], row["outcome"], row["upstream_status"]) == (200, "success", 200)
    assert row["bytes_out"] == len(resp.content) and row["bytes_in"] > 0
    assert row["cost_nanos"] == usage["cost_nanos"] == 1000 + 2 * row["bytes_in"] + 3 * row["bytes_out"]
    assert row["pricing"]["callNanosUsd"] == 1000 and row["latency_ms"] >= 0
    assert row["api_key_id"] == env.key_id and row["organisation_id"] == usage["organisation_id"]


async def test_a_blocked_call_is_recorded_as_blocked(env: McpEnv) -> None:
    """A refused tools/call never reaches the upstream; its MCP record says `blocked`, its usage record `failed`."""
    resp = await env.post("priced", call(8, "secret_tool"), "mcp-usage-blocked")
    assert resp.status_code == 403
    usage = await wait_usage(env.gw.service, "mcp-usage-blocked")
    assert usage["outcome"] == "failed" and usage["error_code"] == "mcp_guardrail_block"
    async with admin(env) as http:
        page = (await http.get("/admin/mcp/usage", params={"outcome": "blocked"})).json()
    [row] = [r for r in page["data"] if r["request_id"] == "mcp-usage-blocked"]
    assert (row["tool"], row["status"], row["upstream_status"], row["bytes_out"]) == (
        "secret_tool",
        403,
        None,
        0,
    )
    assert row["error_code"] == "mcp_guardrail_block"


async def test_admin_filters_and_keyset_pages(env: McpEnv) -> None:
    """Filters by server, method, key, time; pages of `limit` newest first, `next` until the end, none repeated."""
    for n in range(5):
        assert (await env.post("other", call(n, text=str(n)), f"mcp-page-{n}")).status_code == 200
    await wait_usage(env.gw.service, "mcp-page-4")
    async with admin(env) as http:
        seen: list[str] = []
        params: dict[str, str] = {"server": "other", "method": "tools/call", "key": env.key_id, "limit": "2"}
        for _ in range(10):
            page = (await http.get("/admin/mcp/usage", params=params)).json()
            assert len(page["data"]) <= 2
            seen += [row["request_id"] for row in page["data"]]
            if page["next"] is None:
                break
            params["before"] = page["next"]
        assert seen == [f"mcp-page-{n}" for n in reversed(range(5))]
        later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
        assert (await http.get("/admin/mcp/usage", params={"since": later})).json()["data"] == []
        by_org = (
            await http.get("/admin/mcp/usage", params={"organisation": "acme", "server": "other"})
        ).json()
        assert len(by_org["data"]) == 5
        assert (await http.get("/admin/mcp/usage", params={"before": "not-a-cursor"})).status_code == 400
        assert (await http.get("/admin/mcp/usage", params={"limit": "0"})).status_code == 400
        assert (await http.get("/admin/mcp/usage", params={"organisation": "nope"})).status_code == 404
        assert (
            await http.get("/admin/mcp/usage", headers={"Authorization": "Bearer wrong"})
        ).status_code == 401


def _records(n: int, *, mcp: bool) -> list[UsageRecord]:
    now = datetime.now(UTC)
    return [
        UsageRecord(
            request_id=f"r{i}",
            created_at=now,
            organisation_id="org",
            api_key_id="key",
            route="mcp" if mcp else "chat",
            status=200,
            outcome="success",
            provider="mcp" if mcp else "openai",
            cost_nanos=5,
            mcp=McpUsage(server="s", transport="STDIO", method="tools/call", outcome="success", tool="t")
            if mcp
            else None,
        )
        for i in range(n)
    ]


async def _count(store: SqlStore, table: sa.Table) -> int:  # noqa: F811
    async with store.read() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())


async def test_the_writer_stores_mcp_rows_in_the_usage_transaction(store: SqlStore) -> None:  # noqa: F811
    """A mixed batch: one MCP row per MCP usage record, none for the others; a retried batch adds nothing; and
    the two tables commit together: when the MCP row cannot be written, neither is the usage row."""
    batch = _records(3, mcp=True) + _records(2, mcp=False)
    await store.insert_usage(batch)
    await store.insert_usage(batch)  # a retried batch (a replayed spool)
    assert await _count(store, schema.usage_records) == 5
    assert await _count(store, schema.mcp_usage_records) == 3
    async with store.write() as conn:
        await conn.execute(sa.text("DROP TABLE mcp_usage_records"))
    with pytest.raises(Exception):  # noqa: B017 (the driver's error, mapped or not)
        await store.insert_usage(_records(1, mcp=True))
    assert await _count(store, schema.usage_records) == 5  # rolled back with its MCP row


async def test_sigkill_loses_no_mcp_usage_record(tmp_path: Path) -> None:
    """A gateway killed right after its last MCP answer, before any flush: the spool already holds each call's
    record with its MCP part, and the next process writes both rows of every call, once."""
    proc = GatewayProcess(tmp_path, env={"ODOCK_USAGE_FLUSH_INTERVAL": "10m"})
    service = await proc.open_service()
    try:
        secret = await seed_lean_stdio(service)
        proc.start()
        headers = {"Authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient(base_url=proc.base_url, headers=headers, timeout=20) as http:
            for n in range(6):
                resp = await http.post(
                    "/v1/mcp/lean", json=call(n, text="x"), headers={"x-request-id": f"kill-{n}"}
                )
                assert resp.status_code == 200 and "result" in resp.json()
        assert proc.stop(signal.SIGKILL) == -signal.SIGKILL
        spool = (tmp_path / "odock.db.usage-spool").read_text().splitlines()
        assert len(spool) == 6 and all('"mcp":{' in line for line in spool)
        proc.start()  # the spool is replayed before the gateway serves
        async with service.store.read() as conn:
            m = schema.mcp_usage_records
            rows = (await conn.execute(sa.select(m.c.request_id, m.c.tool, m.c.transport))).all()
        assert sorted(rows) == [(f"kill-{n}", "echo", "STDIO") for n in range(6)]
        assert await _count(service.store, schema.usage_records) == 6
    finally:
        proc.stop()
        await service.store.close()


async def test_graceful_shutdown_flushes_mcp_usage(tmp_path: Path) -> None:
    """SIGTERM with records still queued: both rows of every MCP call are written before the process exits."""
    proc = GatewayProcess(tmp_path, env={"ODOCK_USAGE_FLUSH_INTERVAL": "10m"})
    service = await proc.open_service()
    try:
        secret = await seed_lean_stdio(service)
        proc.start()
        async with httpx.AsyncClient(
            base_url=proc.base_url, headers={"Authorization": f"Bearer {secret}"}, timeout=20
        ) as http:
            answers = await asyncio.gather(
                *(http.post("/v1/mcp/lean", json=call(n, text="y")) for n in range(4))
            )
        assert all(a.status_code == 200 for a in answers)
        assert await _count(service.store, schema.mcp_usage_records) == 0
        assert proc.stop() in (0, -signal.SIGTERM)
        assert await _count(service.store, schema.mcp_usage_records) == 4
    finally:
        proc.stop()
        await service.store.close()
