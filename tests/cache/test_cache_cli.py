"""`odock cache purge` against a live gateway process, by namespace and by key (the cluster test covers --model),
in an organisation of its own (the session's gateway serves other tests: the cache is never on for theirs)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import openai
import pytest

from odock.cli import main
from tests.harness import GatewayProcess, seed_basic

MESSAGES: list[Any] = [{"role": "user", "content": "tell me about purges"}]


def purge(
    gateway: GatewayProcess, capsys: pytest.CaptureFixture[str], org: str, *args: str
) -> tuple[int, str]:
    """Run the CLI; its exit code and what it printed (stdout, or stderr on failure)."""
    command = ["cache", "purge", "--org", org, *args, "--json"]
    with pytest.raises(SystemExit) as ended:
        main([*command, "--url", gateway.base_url, "--admin-token", gateway.admin_token])
    out = capsys.readouterr()
    return int(ended.value.code or 0), out.out or out.err


async def test_purge_by_namespace_and_key_through_the_cli(
    gateway: GatewayProcess, service: Any, mock: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    org = f"cache-cli-{uuid.uuid4().hex[:8]}"
    seeded = await seed_basic(service, mock.base_url, org=org)
    await service.update_organisation(
        org, {"policies": {"cache": {"mode": "exact", "scope": "key", "namespace": "faq"}}}
    )
    client = openai.AsyncOpenAI(base_url=gateway.base_url + "/v1", api_key=seeded["secret"], max_retries=0)

    async def verdict() -> str:
        reply = await client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
        return reply.headers.get("x-odock-cache", "")

    deadline = time.monotonic() + 10
    while await verdict() != "HIT":  # the gateway polls the catalogue: wait until the policy is in force
        assert time.monotonic() < deadline, "the cache policy never reached the gateway"
        await asyncio.sleep(0.2)

    assert purge(gateway, capsys, org, "--namespace", "other") == (0, json.dumps({"purged": 0}) + "\n")
    assert await verdict() == "HIT"
    assert purge(gateway, capsys, org, "--key", "main") == (0, json.dumps({"purged": 1}) + "\n")
    assert await verdict() == "MISS"
    assert purge(gateway, capsys, org, "--namespace", "faq") == (0, json.dumps({"purged": 1}) + "\n")
    assert await verdict() == "MISS"
    code, message = purge(gateway, capsys, org, "--key", "no-such-key")
    assert code == 1 and "no-such-key" in message
    await client.close()
