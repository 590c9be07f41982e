"""Plugins in a live cluster-mode process (PostgreSQL + Redis), configured by the `plugins:` section of the file
given to `odock serve --config`: a block reaches the SDK before the upstream, audit events are JSON log lines
without the prompt, and the usage rows in PostgreSQL carry the plugin runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from odock.mock.testing import MockServer
from tests.e2e.conftest import ClusterFactory, eventually, make_tenant, org_usage_rows, seen

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = """
plugins:
  plugins:
    - {name: gate, type: "tests.plugins.sample:Gate", config: {word: forbidden}}
    - {name: audit, type: audit_log, config: {level: warning}}
  phases:
    pre_upstream: {sequential: [gate]}
    post_response: {sequential: [audit], async: true}
"""


async def test_serve_config_runs_its_plugins_in_cluster_mode(
    cluster: ClusterFactory, mock: MockServer, tmp_path: Path
) -> None:
    """`odock serve --config` with a plugins section, cluster mode: 403 plugin_blocked with nothing sent
    upstream, audit events logged without the prompt, plugin runs in the PostgreSQL usage rows."""
    config = tmp_path / "odock.yaml"
    config.write_text(CATALOGUE)
    gw = cluster(env={"PYTHONPATH": str(ROOT)})
    gw.start("--config", str(config))
    tenant = await make_tenant(gw, mock.base_url)
    client = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key=tenant.secret, max_retries=0)
    try:
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await client.chat.completions.create(
                model=tenant.model, messages=[{"role": "user", "content": "a forbidden zebra"}]
            )
        body = refused.value.body
        assert isinstance(body, dict) and body["code"] == "plugin_blocked"
        reply = await client.chat.completions.create(
            model=tenant.model, messages=[{"role": "user", "content": "a quiet giraffe"}]
        )
        assert reply.choices[0].message.content
    finally:
        await client.close()
    assert len(seen(mock, tenant)) == 1  # only the allowed call reached the upstream

    async def both_rows() -> list[dict[str, Any]] | None:
        rows = await org_usage_rows(gw, tenant.org_id)
        return rows if len(rows) >= 2 else None

    rows = await eventually(both_rows, timeout=15)
    by_status = {row["status"]: row for row in rows}
    blocked_runs = by_status[403]["metadata"]["plugins"]
    assert [(r["plugin"], r["phase"], r["outcome"]) for r in blocked_runs] == [
        ("gate", "pre_upstream", "block")
    ]
    assert by_status[200]["metadata"]["plugins"][0]["outcome"] == "allow"

    async def audit_events() -> list[dict[str, Any]] | None:
        lines = [json.loads(line) for line in gw.log().splitlines() if line.startswith("{")]
        events = [line["audit"] for line in lines if line.get("logger") == "odock.audit"]
        return events if len(events) >= 2 else None

    events = await eventually(audit_events, timeout=15)
    assert {e["status"] for e in events} == {403, 200}
    assert "zebra" not in gw.log() and "giraffe" not in gw.log()
