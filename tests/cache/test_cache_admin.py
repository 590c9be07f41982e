"""Purging cached answers through the admin API (by namespace, model, key), the policy checks at write time, and
the gateway_cache_* metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from odock.app import admin_app_for
from odock.errors import BadRequest
from odock.state.validation import KeyChanges, ModelChanges, OrganisationChanges, TeamChanges, decode
from tests.cache.test_cache_replay import MESSAGES, enable, openai_client
from tests.inprocess import InProcessGateway, in_process_gateway

ADMIN = {"authorization": "Bearer admin-secret"}


async def verdict(gw: InProcessGateway, model: str = "gpt-test") -> str:
    reply = await openai_client(gw).chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
    return reply.headers["x-odock-cache"]


async def purge(http: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await http.post("/admin/cache/purge", json={"organisation": "acme", **body}, headers=ADMIN)


async def test_purge_by_namespace_model_and_key(tmp_path: Path) -> None:
    async with in_process_gateway(tmp_path, admin_token="admin-secret") as gw, gw.client() as http:
        gw.app.admin = admin_app_for(gw.gateway)  # the lifespan builds it in a served app
        await gw.service.create_model(
            {
                "organisation": "acme",
                "name": "gpt-two",
                "provider": "mock-openai",
                "slug": "gpt-4o",
                "type": "chat",
            }
        )
        await gw.service.add_grant(gw.seeded["key_id"], "gpt-two")
        await enable(gw, {"cache": {"mode": "exact", "namespace": "faq"}})
        assert [await verdict(gw), await verdict(gw, "gpt-two")] == ["MISS", "MISS"]
        assert (await purge(http, namespace="other")).json() == {"purged": 0}
        assert (await purge(http, model="gpt-test")).json() == {"purged": 1}
        assert [await verdict(gw), await verdict(gw, "gpt-two")] == ["MISS", "HIT"]
        assert (await purge(http, namespace="faq")).json() == {"purged": 2}
        assert await verdict(gw) == "MISS"
        # key scope: a key purge takes that key's entries
        await enable(gw, {"cache": {"mode": "exact", "scope": "key"}})
        assert await verdict(gw) == "MISS"
        assert (await purge(http, key="main")).json() == {"purged": 1}
        assert await verdict(gw) == "MISS"
        assert (await purge(http)).json()["purged"] >= 1  # everything of the organisation
        bad = await purge(http, model="no-such-model")
        assert bad.status_code == 404
        bad = await http.post("/admin/cache/purge", json={"namespace": "x"}, headers=ADMIN)
        assert bad.status_code == 400 and "organisation" in bad.json()["error"]["message"]
        bad = await purge(http, namespace="a b")
        assert bad.status_code == 400
        await openai_client(gw).chat.completions.create(
            model="gpt-test", messages=MESSAGES, extra_headers={"cache-control": "no-store"}
        )
        metrics = (await http.get("/metrics")).text
        for name in ("hits", "misses", "bypasses", "coalesced_waits", "evictions", "stored_bytes"):
            assert f"gateway_cache_{name}" in metrics
        assert "gateway_cache_bytes" in metrics


BAD_POLICIES: list[Any] = [
    {"mode": "fuzzy"},
    {"ttl": "soon"},
    {"ttl": 0},
    {"scope": "team"},
    {"namespace": ""},
    {"hit_cost": 2},
    {"enabled": "yes"},
    {"surprise": 1},
    "on",
]


@pytest.mark.parametrize("cache", BAD_POLICIES)
def test_bad_cache_policies_are_refused_at_write_time(cache: Any) -> None:
    """The admin API, the CLI's --policies and the YAML catalogue all go through this check."""
    for kind in (OrganisationChanges, TeamChanges, ModelChanges, KeyChanges):
        with pytest.raises(BadRequest) as refused:
            decode(kind, {"policies": {"cache": cache}}, "thing")
        assert refused.value.code == "invalid_policy" and "policies.cache" in refused.value.message
    good = {"cache": {"mode": "exact", "ttl": "1h", "scope": "key", "namespace": "a.b-c", "hit_cost": 0.5}}
    assert decode(KeyChanges, {"policies": good}, "key").policies == good
