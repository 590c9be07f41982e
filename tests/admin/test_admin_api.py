"""Admin API over ASGI: auth, disabled mode, error shapes, CRUD, key lifecycle, grants, usage."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from odock.admin import create_admin_app
from odock.state.records import UsageRecord
from odock.state.service import CatalogueService
from odock.state.sql import SqlStore

TOKEN = "admin-test-token"


@pytest.fixture()
async def client(service: CatalogueService) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the admin app with the admin token set."""
    transport = httpx.ASGITransport(app=create_admin_app(service, TOKEN))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://admin", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as http:
        yield http


async def _seed(client: httpx.AsyncClient) -> dict[str, str]:
    org = (await client.post("/admin/organisations", json={"name": "acme"})).json()
    provider = await client.post(
        "/admin/providers",
        json={
            "organisation": "acme",
            "name": "oa",
            "type": "openai",
            "base_url": "http://127.0.0.1:9/v1",
            "api_key": "sk-upstream-secret-abcd",
        },
    )
    assert provider.status_code == 201, provider.text
    model = await client.post(
        "/admin/models",
        json={"organisation": "acme", "name": "chat", "provider": "oa", "slug": "gpt-4o-mini"},
    )
    assert model.status_code == 201, model.text
    return {"org": org["id"], "provider": provider.json()["id"], "model": model.json()["id"]}


async def test_auth_required(service: CatalogueService, client: httpx.AsyncClient) -> None:
    """Without the right bearer token every admin route answers 401 unauthorized as JSON."""
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        response = await client.get("/admin/organisations", headers={"Authorization": "", **headers})
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
    response = await client.get("/admin/organisations")
    assert response.status_code == 200 and response.json() == {"data": []}


async def test_disabled_without_token(service: CatalogueService) -> None:
    """With no admin token configured, admin routes answer 404 admin_disabled naming ODOCK_ADMIN_TOKEN."""
    transport = httpx.ASGITransport(app=create_admin_app(service, ""))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as http:
        for path in ("/admin/organisations", "/admin/keys/x/rotate"):
            response = await http.post(path, headers={"Authorization": "Bearer "})
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "admin_disabled"
            assert "ODOCK_ADMIN_TOKEN" in response.json()["error"]["message"]


async def test_error_shapes(client: httpx.AsyncClient) -> None:
    """Invalid JSON, validation errors, missing objects, duplicates, bad methods and routes have JSON errors."""
    cases = [
        (await client.post("/admin/organisations", content=b"{nope"), 400, "invalid_request_body"),
        (await client.post("/admin/organisations", json=[1]), 400, "invalid_request_body"),
        (await client.post("/admin/organisations", json={"name": ""}), 400, "invalid_request"),
        (await client.get("/admin/organisations/missing"), 404, "not_found"),
        (await client.put("/admin/organisations"), 405, "method_not_allowed"),
        (await client.get("/admin/nothing-here"), 404, "not_found"),
        (await client.get("/admin/usage?group_by=colour"), 400, "invalid_request"),
    ]
    await client.post("/admin/organisations", json={"name": "acme"})
    cases.append((await client.post("/admin/organisations", json={"name": "acme"}), 409, "conflict"))
    for response, status, code in cases:
        assert response.status_code == status, response.text
        body = response.json()
        assert body["error"]["code"] == code and body["error"]["message"]


async def test_crud_round_trip(client: httpx.AsyncClient) -> None:
    """Each resource can be created, listed, read (by id or by name), patched and deleted."""
    ids = await _seed(client)
    team = await client.post("/admin/teams", json={"organisation": "acme", "name": "platform"})
    user = await client.post(
        "/admin/users", json={"organisation": "acme", "email": "d@acme.test", "name": "D"}
    )
    assert team.status_code == user.status_code == 201
    assert [t["name"] for t in (await client.get("/admin/teams?organisation=acme")).json()["data"]] == [
        "platform"
    ]
    assert (await client.get("/admin/users/d@acme.test?organisation=acme")).json()["name"] == "D"
    patched = await client.patch(f"/admin/organisations/{ids['org']}", json={"timezone": "Europe/Paris"})
    assert patched.json()["timezone"] == "Europe/Paris"
    model = await client.patch("/admin/models/chat?organisation=acme", json={"slug": "gpt-4o"})
    assert model.json()["slug"] == "gpt-4o"
    provider = (await client.get(f"/admin/providers/{ids['provider']}")).json()
    assert provider["has_api_key"] is True and "api_key" not in provider
    assert "sk-upstream-secret" not in (await client.get("/admin/providers")).text
    assert (await client.delete(f"/admin/providers/{ids['provider']}")).status_code == 409
    assert (await client.delete(f"/admin/models/{ids['model']}")).status_code == 204
    assert (await client.delete(f"/admin/providers/{ids['provider']}")).status_code == 204
    assert (await client.delete(f"/admin/teams/{team.json()['id']}")).status_code == 204
    assert (await client.get(f"/admin/teams/{team.json()['id']}")).status_code == 404


async def test_key_lifecycle_and_grants(client: httpx.AsyncClient, store: SqlStore) -> None:
    """Keys: secret shown at create/rotate only, rotate in place, revoke, grants added/listed/removed."""
    ids = await _seed(client)
    created = await client.post("/admin/keys", json={"organisation": "acme", "name": "k1"})
    assert created.status_code == 201
    key = created.json()
    assert key["secret"].startswith("sk-odock-") and "key_hash" not in key
    shown = (await client.get(f"/admin/keys/{key['id']}")).json()
    assert "secret" not in shown and key["secret"] not in (await client.get("/admin/keys")).text
    bad = await client.post(f"/admin/keys/{key['id']}/rotate", json={"expires_at": "2020-01-01T00:00:00Z"})
    assert bad.status_code == 400
    rotated = (await client.post(f"/admin/keys/{key['id']}/rotate", json={})).json()
    assert (
        rotated["id"] == key["id"] and rotated["secret"] != key["secret"] and rotated["rotation_count"] == 1
    )
    history = (await client.get(f"/admin/keys/{key['id']}/rotations")).json()["data"]
    assert history[0]["previous_preview"] == key["key_preview"]
    assert (await client.post(f"/admin/keys/{key['id']}/grants", json={"model": "chat"})).status_code == 201
    listed = (await client.get(f"/admin/keys/{key['id']}/grants")).json()["data"]
    assert [m["id"] for m in listed] == [ids["model"]]
    removed = await client.delete(f"/admin/keys/{key['id']}/grants/{ids['model']}")
    assert removed.status_code == 200 and removed.json()["data"] == []
    assert (await client.delete(f"/admin/keys/{key['id']}/grants/{ids['model']}")).status_code == 404
    revoked = (await client.post(f"/admin/keys/{key['id']}/revoke")).json()
    assert revoked["revoked"] is True
    owner_error = await client.post(
        "/admin/keys", json={"organisation": "acme", "name": "k2", "type": "TEAM"}
    )
    assert owner_error.status_code == 400 and owner_error.json()["error"]["code"] == "invalid_key_ownership"
    assert (await client.delete(f"/admin/keys/{key['id']}")).status_code == 204


async def test_usage_report(client: httpx.AsyncClient, store: SqlStore) -> None:
    """GET /admin/usage groups the ledger over a time range."""
    ids = await _seed(client)
    when = datetime(2026, 7, 1, tzinfo=UTC)
    await store.insert_usage(
        [
            UsageRecord(
                request_id=f"r{i}",
                created_at=when,
                organisation_id=ids["org"],
                api_key_id="k",
                route="/v1/chat/completions",
                status=200,
                outcome="success",
                model="chat",
                input_tokens=5,
                output_tokens=7,
                cost_nanos=11,
            )
            for i in range(3)
        ]
    )
    response = await client.get(
        "/admin/usage",
        params={"group_by": "model", "since": "2026-07-01", "until": "2026-07-02", "organisation": "acme"},
    )
    assert response.status_code == 200
    assert response.json()["data"] == [
        {
            "group": "chat",
            "requests": 3,
            "input_tokens": 15,
            "output_tokens": 21,
            "cached_input_tokens": 0,
            "reasoning_tokens": 0,
            "cost_nanos": 33,
        }
    ]
    empty = await client.get("/admin/usage", params={"since": "2026-07-02"})
    assert empty.json()["data"] == []


async def test_malformed_routing_policy_is_refused(client: httpx.AsyncClient) -> None:
    """A key policy with an unknown routing strategy is 400 invalid_policy, not stored to be ignored later."""
    await client.post("/admin/organisations", json={"name": "route-org"})
    resp = await client.post(
        "/admin/keys",
        json={
            "organisation": "route-org",
            "name": "k",
            "type": "ORGANISATION",
            "policies": {"routing": {"chat": {"strategy": "fastest-please", "candidates": []}}},
        },
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "invalid_policy"
