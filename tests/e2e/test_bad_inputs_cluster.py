"""Cluster mode (PostgreSQL): values PostgreSQL cannot hold (a NUL character, a name wider than its column) are
400s naming the field, not a 500 from the driver, a 503 that looks like an outage, or a usage record that can
never be written (which stopped the usage writer for every later call: its batches kept failing)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from odock.mock.testing import MockServer
from tests.e2e.conftest import ClusterFactory, admin, eventually, make_tenant, org_usage_rows

pytestmark = pytest.mark.cluster

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


async def test_unstorable_model_names_are_400_and_usage_keeps_being_recorded(
    cluster: ClusterFactory, mock: MockServer
) -> None:
    """A model name with NUL or wider than 200 characters is 400 invalid_request on every route family, and the
    calls after it are still recorded in the usage ledger."""
    gw = cluster()
    gw.start()
    tenant = await make_tenant(gw, mock.base_url)
    headers = {"Authorization": f"Bearer {tenant.secret}"}
    async with httpx.AsyncClient(base_url=gw.base_url, headers=headers, timeout=20) as http:
        for model in ("ch\u0000at", "m" * 201):
            for path in ("/v1/chat/completions", "/v1/llm/chat"):
                resp = await http.post(path, json={"model": model, **CHAT})
                assert resp.status_code == 400, (path, resp.text)
                assert (
                    resp.json()["error"]["code"] == "invalid_request"
                    and "model" in resp.json()["error"]["message"]
                )
        resp = await http.post(
            "/v1beta/models/ch%00at:generateContent", json={"contents": [{"parts": [{"text": "x"}]}]}
        )
        assert resp.status_code == 400 and resp.json()["error"]["status"] == "INVALID_ARGUMENT", resp.text
        assert (
            await http.post("/v1/chat/completions", json={"model": tenant.model, **CHAT})
        ).status_code == 200

    async def recorded() -> list[dict[str, Any]]:
        return [row for row in await org_usage_rows(gw, tenant.org_id) if row["status"] == 200]

    assert len(await eventually(recorded)) == 1
    assert "usage flush failed" not in gw.log()


NUL_ADMIN_REQUESTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/admin/organisations", {"name": "n\u0000ul"}),
    ("POST", "/admin/organisations", {"name": "with-policies", "policies": {"note": "x\u0000"}}),
    ("POST", "/admin/keys", {"organisation": "{org}", "name": "k", "secret": "sk-" + "a" * 30 + "\u0000"}),
    ("POST", "/admin/budgets", {"name": "b", "owner_type": "ORG", "owner_id": "o\u0000", "amount_usd": "1"}),
    ("POST", "/admin/quotas", {"name": "q\u0000", "organisation": "{org}", "metric": "TOKENS", "limit": 5}),
    ("GET", "/admin/budgets/%00", None),
    ("GET", "/admin/budgets?owner_id=%00", None),
    ("GET", "/admin/budget-events?budget_id=%00", None),
    ("GET", "/admin/teams/x%00", None),
]


async def test_admin_refuses_nul_anywhere(cluster: ClusterFactory, mock: MockServer) -> None:
    """A NUL in an admin body, path or query is a JSON 400 (it was a 500, or a 503 store_unavailable)."""
    gw = cluster()
    gw.start()
    tenant = await make_tenant(gw, mock.base_url)
    async with httpx.AsyncClient(base_url=gw.base_url, headers=gw.admin_headers()) as http:
        for method, path, body in NUL_ADMIN_REQUESTS:
            if body is not None:
                body = {k: tenant.org if v == "{org}" else v for k, v in body.items()}
            resp = await http.request(method, path, json=body)
            assert resp.status_code == 400, (path, body, resp.text)
            assert resp.json()["error"]["code"] in ("invalid_request", "invalid_request_body")
    assert (await admin(gw, "GET", "/admin/organisations")).status_code == 200
