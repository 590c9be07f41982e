"""Logs at debug level: the database drivers' chatter never carries SQL parameters (key hashes, catalogue ids)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import openai
import sqlalchemy as sa

from odock.mock.testing import MockServer
from odock.state import schema
from odock.state.service import CatalogueService
from tests.harness import GatewayProcess, seed_basic


async def count_usage(service: CatalogueService) -> int:
    async with service.store.read() as conn:
        return int(
            (await conn.execute(sa.select(sa.func.count()).select_from(schema.usage_records))).scalar_one()
        )


async def test_debug_logs_never_carry_sql_parameters(tmp_path: Path, mock: MockServer) -> None:
    """At ODOCK_LOG_LEVEL=debug a call's key hash, key id and organisation id never appear in the gateway's log."""
    # the request log line names the key id and organisation on purpose (tests/observability): off here, where
    # the question is whether the drivers' chatter leaks them
    proc = GatewayProcess(tmp_path, env={"ODOCK_LOG_LEVEL": "debug", "ODOCK_REQUEST_LOG": "off"})
    service = await proc.open_service()
    try:
        seeded = await seed_basic(service, mock.base_url)
        proc.start()
        client = openai.AsyncOpenAI(base_url=proc.base_url + "/v1", api_key=seeded["secret"], max_retries=0)
        reply = await client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content
        await client.close()
        # the usage batch (key id, organisation id, model, pricing as parameters) is written within the interval
        deadline = time.monotonic() + 5
        while not await count_usage(service):
            assert time.monotonic() < deadline, "the usage record was never written"
            await asyncio.sleep(0.05)
        proc.stop()
        log = proc.log_path.read_text()
        assert "usage: wrote 1 record(s)" in log  # debug logging was on while the batch was written
        organisation = await service.get_organisation(seeded["org"])
        for secret_value in (
            hashlib.sha256(seeded["secret"].encode()).hexdigest(),
            seeded["key_id"],
            organisation.id,
            seeded["secret"],
        ):
            assert secret_value not in log
    finally:
        proc.stop()
        await service.store.close()
