"""Process lifecycle: usage records survive a graceful shutdown, and a store outage neither loses records nor
turns valid keys into 401s."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import asyncpg
import httpx
import openai
import sqlalchemy as sa

from odock.mock.testing import MockServer
from odock.state import schema
from odock.state.service import CatalogueService
from tests.harness import GatewayProcess, seed_basic

BODY = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}


async def count_usage(service: CatalogueService) -> int:
    async with service.store.read() as conn:
        return int(
            (await conn.execute(sa.select(sa.func.count()).select_from(schema.usage_records))).scalar_one()
        )


async def test_graceful_shutdown_flushes_usage(tmp_path: Path, mock: MockServer) -> None:
    """Records still queued when SIGTERM arrives are written before the process exits."""
    proc = GatewayProcess(tmp_path, env={"ODOCK_USAGE_FLUSH_INTERVAL": "10m"})
    service = await proc.open_service()
    try:
        seeded = await seed_basic(service, mock.base_url)
        proc.start()
        async with httpx.AsyncClient(
            base_url=proc.base_url, headers={"Authorization": f"Bearer {seeded['secret']}"}
        ) as http:
            for _ in range(20):
                assert (await http.post("/v1/chat/completions", json=BODY)).status_code == 200
        assert await count_usage(service) == 0  # the 10-minute flush interval has not come yet
        # uvicorn shuts down gracefully, then re-raises the signal so the exit status reports it
        assert proc.stop() in (0, -signal.SIGTERM)
        assert await count_usage(service) == 20
    finally:
        proc.stop()
        await service.store.close()


def usage_writer_of(pid: int) -> int:
    """The usage writer process the gateway `pid` started."""
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue  # not a process, or ended meanwhile
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid and b"odock.usage_writer" in cmdline:
            return int(entry.name)
    raise AssertionError(f"gateway {pid} has no usage writer process")


async def ended(pid: int, timeout_s: float = 10.0) -> None:
    """Wait until process `pid` has ended (a zombie not yet reaped by its new parent counts as ended)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return
        if stat[stat.rindex(")") + 2] == "Z":
            return
        assert time.monotonic() < deadline, f"process {pid} is still running"
        await asyncio.sleep(0.05)


async def test_sigkill_loses_no_usage_in_embedded_mode(tmp_path: Path, mock: MockServer) -> None:
    """A gateway killed (SIGKILL) right after its last reply, before any flush, loses no usage record: the next
    process on the same database replays its spool, each record once; the spool holds no prompt or answer."""
    proc = GatewayProcess(tmp_path, env={"ODOCK_USAGE_FLUSH_INTERVAL": "10m"})
    service = await proc.open_service()
    prompt = f"spool-prompt-{os.urandom(4).hex()}"
    try:
        seeded = await seed_basic(service, mock.base_url)
        proc.start()
        request_ids: list[str] = []
        answers: list[str] = []
        async with openai.AsyncOpenAI(
            base_url=proc.base_url + "/v1", api_key=seeded["secret"], max_retries=0
        ) as client:
            for n in range(12):  # unary and streamed calls alternately
                raw = await client.chat.completions.with_raw_response.create(
                    model="gpt-test",
                    messages=[{"role": "user", "content": f"{prompt} {n}"}],
                    stream=bool(n % 2),
                )
                request_ids.append(raw.headers["x-request-id"])
                parsed = raw.parse()
                if isinstance(parsed, openai.AsyncStream):
                    answers.append(
                        "".join([c.choices[0].delta.content or "" async for c in parsed if c.choices])
                    )
                else:
                    answers.append(parsed.choices[0].message.content or "")
        assert proc.proc is not None
        writer = usage_writer_of(proc.proc.pid)
        assert proc.stop(signal.SIGKILL) == -signal.SIGKILL
        await ended(writer)  # the usage writer process does not outlive its gateway
        assert await count_usage(service) == 0  # nothing was flushed: only the spool has them
        spool = (tmp_path / "odock.db.usage-spool").read_text()
        assert len(spool.splitlines()) == 12
        assert prompt not in spool and seeded["secret"] not in spool
        assert all(answer and answer not in spool for answer in answers)
        proc.start()  # same database: the spool is replayed before the gateway serves
        async with service.store.read() as conn:
            table = schema.usage_records
            stored = (await conn.execute(sa.select(table.c.request_id))).scalars().all()
        assert sorted(stored) == sorted(request_ids)
        assert proc.stop() in (0, -signal.SIGTERM)
        assert (tmp_path / "odock.db.usage-spool").read_bytes() == b""
    finally:
        proc.stop()
        await service.store.close()


async def set_connections(server_url: str, database: str, allowed: bool) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database
            )
    finally:
        await conn.close()


async def test_store_outage(
    tmp_path: Path, mock: MockServer, postgres_url: str, postgres_server_url: str
) -> None:
    """During a database outage: cached keys keep working, an unknown key gets 503 (never 401), readiness is
    503, and the usage records of the outage are written once the database is back."""
    database = postgres_url.rsplit("/", 1)[1]
    proc = GatewayProcess(tmp_path, database_url=postgres_url)
    service = await proc.open_service()
    try:
        seeded = await seed_basic(service, mock.base_url)
        proc.start()
        auth = {"Authorization": f"Bearer {seeded['secret']}"}
        async with httpx.AsyncClient(base_url=proc.base_url, timeout=20) as http:
            assert (await http.post("/v1/chat/completions", json=BODY, headers=auth)).status_code == 200
            deadline = time.monotonic() + 15
            while await count_usage(service) < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)  # the first record written: the outage's records are the next ones
            before = await count_usage(service)
            assert before == 1
            await set_connections(postgres_server_url, database, False)
            try:
                during = [await http.post("/v1/chat/completions", json=BODY, headers=auth) for _ in range(5)]
                unknown = await http.post(
                    "/v1/chat/completions", json=BODY, headers={"Authorization": "Bearer sk-odock-unknown"}
                )
                ready = await http.get("/v1/healthz")
            finally:
                await set_connections(postgres_server_url, database, True)
            assert [r.status_code for r in during] == [200] * 5
            assert unknown.status_code == 503 and unknown.json()["error"]["code"] == "store_unavailable"
            assert ready.status_code == 503
            deadline = time.monotonic() + 15
            while await count_usage(service) < before + 5 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert await count_usage(service) == before + 5
            assert (await http.get("/v1/healthz")).status_code == 200
    finally:
        proc.stop()
        await service.store.close()


def test_embedded_mode_refuses_several_workers(tmp_path: Path) -> None:
    """Starting more than one worker without Redis is refused with a message saying why and what to set."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ODOCK_REDIS_URL"}
    env.update(ODOCK_WORKERS="2", ODOCK_DATABASE_URL=f"sqlite:///{tmp_path / 'x.db'}", HTTP_PORT="1")
    done = subprocess.run(
        [sys.executable, "-m", "odock", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert "ODOCK_REDIS_URL" in done.stderr and "one process" in done.stderr
