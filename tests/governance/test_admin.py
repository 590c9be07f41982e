"""Budget/quota management: service, admin routes, YAML hook and CLI over a migrated catalogue database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from odock.admin.governance import GovernanceAdmin, admin_routes, apply_governance
from odock.errors import BadRequest, NotFound
from odock.governance.store import GovernanceStore
from odock.settings import Settings
from odock.state.service import CatalogueService
from odock.state.sql import SqlStore


@pytest.fixture()
async def admin(tmp_path: Path) -> AsyncIterator[tuple[GovernanceAdmin, dict[str, str]]]:
    """A GovernanceAdmin on a migrated SQLite catalogue with org acme, team ml, user a@x.io and key ci."""
    url = f"sqlite:///{tmp_path / 'odock.db'}"
    store = await SqlStore.open(url, Settings(database_url=url))
    catalogue = CatalogueService(store)
    org = await catalogue.create_organisation({"name": "acme", "timezone": "Europe/Paris"})
    team = await catalogue.create_team({"organisation": "acme", "name": "ml"})
    user = await catalogue.create_user({"organisation": "acme", "email": "a@x.io"})
    key = await catalogue.create_key({"organisation": "acme", "name": "ci", "type": "TEAM", "team": "ml"})
    changes: list[int] = []

    async def changed() -> None:
        changes.append(1)

    service = GovernanceAdmin(GovernanceStore(store), catalogue=catalogue, on_change=changed)
    service.changes = changes  # type: ignore[attr-defined]
    try:
        yield service, {"org": org.id, "team": team.id, "user": user.id, "key": key.key.id}
    finally:
        await store.close()


async def test_create_by_name_update_delete(admin: tuple[GovernanceAdmin, dict[str, str]]) -> None:
    """Owners are resolved by name to the most specific scope; amount_usd converts exactly; CRUD round-trips."""
    service, ids = admin
    budget = await service.create_budget(
        {
            "name": "ci-monthly",
            "organisation": "acme",
            "team": "ml",
            "key": "ci",
            "amount_usd": "12.345678901",
        }
    )
    assert (budget.owner_type, budget.owner_id, budget.organisation_id) == ("APIKEY", ids["key"], ids["org"])
    assert budget.amount_nanos == 12_345_678_901 and budget.thresholds == [50, 80, 90, 100]
    team_budget = await service.create_budget(
        {"name": "t", "organisation": "acme", "team": "ml", "amount_nanos": 5}
    )
    assert team_budget.owner_type == "TEAM" and team_budget.owner_id == ids["team"]
    updated = await service.update_budget(budget.id, {"amount_nanos": 7, "period": "WEEKLY", "active": False})
    assert (updated.amount_nanos, updated.period, updated.active, updated.name) == (
        7,
        "WEEKLY",
        False,
        "ci-monthly",
    )
    assert [b.id for b in await service.list_budgets(owner_type="TEAM")] == [team_budget.id]
    await service.delete_budget(budget.id)
    assert len(service.changes) == 4  # type: ignore[attr-defined]  # every mutation told the hot path
    with pytest.raises(NotFound):
        await service.get_budget(budget.id)


async def test_validation(admin: tuple[GovernanceAdmin, dict[str, str]]) -> None:
    """Bad owners, periods, zones, metrics and amounts are 400s; unknown names are 404s."""
    service, _ = admin
    for data in (
        {"name": "x", "owner_type": "NOPE", "owner_id": "1", "amount_nanos": 1},
        {"name": "x", "organisation": "acme", "amount_nanos": -1},
        {"name": "x", "organisation": "acme", "amount_nanos": 1, "period": "HOURLY"},
        {"name": "x", "organisation": "acme", "amount_nanos": 1, "timezone": "Mars/Base"},
        {"name": "x", "organisation": "acme"},
        {"name": "x", "organisation": "acme", "amount_nanos": 1, "bogus": 1},
    ):
        with pytest.raises(BadRequest):
            await service.create_budget(data)
    with pytest.raises(BadRequest):
        await service.create_quota({"name": "q", "organisation": "acme", "metric": "WATTS", "limit": 1})
    with pytest.raises(NotFound):
        await service.create_budget({"name": "x", "organisation": "nope", "amount_nanos": 1})


async def test_routes(admin: tuple[GovernanceAdmin, dict[str, str]]) -> None:
    """The routes create, list, patch, delete budgets and quotas and list events, with JSON errors."""
    service, ids = admin
    app = Starlette(routes=admin_routes(service))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        r = await client.post("/admin/budgets", json={"name": "b", "organisation": "acme", "amount_usd": 1})
        assert r.status_code == 201, r.text
        budget: dict[str, Any] = r.json()
        assert budget["amount_nanos"] == 1_000_000_000 and budget["owner_type"] == "ORG"
        assert [b["id"] for b in (await client.get("/admin/budgets?owner_type=ORG")).json()] == [budget["id"]]
        r = await client.patch(f"/admin/budgets/{budget['id']}", json={"thresholds": [75]})
        assert r.json()["thresholds"] == [75]
        assert (await client.get(f"/admin/budgets/{budget['id']}/windows")).json() == []
        r = await client.post(
            "/admin/quotas",
            json={
                "name": "q",
                "owner_type": "USER",
                "owner_id": ids["user"],
                "metric": "REQUESTS",
                "limit": 10,
                "period": "DAILY",
            },
        )
        assert r.status_code == 201 and r.json()["limit"] == 10
        assert (await client.get("/admin/budget-events")).json() == []
        r = await client.post("/admin/quotas", content=b"[1]")
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request_body"
        assert (await client.delete(f"/admin/budgets/{budget['id']}")).status_code == 204
        r = await client.get(f"/admin/budgets/{budget['id']}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_yaml_hook_is_idempotent(admin: tuple[GovernanceAdmin, dict[str, str]]) -> None:
    """apply_governance creates by owner name, then reports unchanged, then updates in place."""
    service, ids = admin
    doc: dict[str, Any] = {
        "budgets": [{"name": "acme-monthly", "organisation": "acme", "amount_usd": 100, "timezone": "UTC"}],
        "quotas": [
            {
                "name": "ci-daily",
                "organisation": "acme",
                "key": "ci",
                "metric": "REQUESTS",
                "limit": 1000,
                "period": "DAILY",
            }
        ],
    }
    first = await apply_governance(doc, service=service)
    assert len(first["created"]) == 2
    second = await apply_governance(doc, service=service)
    assert second["created"] == [] and second["updated"] == [] and len(second["unchanged"]) == 2
    doc["quotas"][0]["limit"] = 2000
    third = await apply_governance(doc, service=service)
    assert len(third["updated"]) == 1
    quotas = await service.list_quotas(owner_id=ids["key"])
    assert [(q.name, q.limit) for q in quotas] == [("ci-daily", 2000)]
    with pytest.raises(BadRequest):
        await apply_governance({"budgets": [{"name": "x", "organisation": "acme"}]}, service=service)


def test_cli_create_list_delete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`odock budgets|quotas create/list/delete` work against the configured database."""
    import argparse
    import asyncio
    import json

    from odock.commands.governance import add_parsers

    url = f"sqlite:///{tmp_path / 'cli.db'}"

    async def seed() -> None:
        store = await SqlStore.open(url, Settings(database_url=url))
        await CatalogueService(store).create_organisation({"name": "acme"})
        await store.close()

    asyncio.run(seed())
    parser = argparse.ArgumentParser(prog="odock")
    add_parsers(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> tuple[int, str]:
        args = parser.parse_args([*argv, "--database-url", url])
        code = args.func(args)
        return code, capsys.readouterr().out

    code, out = run("budgets", "create", "--name", "m", "--org", "acme", "--amount-usd", "2.5", "--json")
    assert code == 0
    budget = json.loads(out)
    assert budget["amount_nanos"] == 2_500_000_000
    code, out = run(
        "quotas",
        "create",
        "--name",
        "r",
        "--org",
        "acme",
        "--metric",
        "REQUESTS",
        "--limit",
        "5",
        "--period",
        "DAILY",
    )
    assert code == 0 and "REQUESTS" in out
    code, out = run("budgets", "list", "--org", "acme")
    assert code == 0 and budget["id"] in out
    assert run("budgets", "delete", budget["id"])[0] == 0
    code, out = run("budgets", "list", "--json")
    assert json.loads(out) == []
    assert run("budgets", "delete", budget["id"])[0] == 1
