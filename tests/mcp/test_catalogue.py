"""MCP servers in the catalogue: the admin API (validation codes of reference §15.3, secrets never returned,
grants), the migration, the YAML file and the CLI."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from odock.app import admin_app_for
from odock.cli import main
from odock.config_file import ConfigFileError, apply_config
from odock.mcp.schema import MCP_TABLES
from odock.mcp.service import McpCatalogueService
from odock.settings import Settings
from odock.state import schema
from odock.state.sql import SqlStore
from tests.inprocess import InProcessGateway, in_process_gateway

TOKEN = "admin-token-mcp"
SECRET = "upstream-bearer-never-shown"


@pytest.fixture()
async def gw(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    async with in_process_gateway(tmp_path, admin_token=TOKEN) as gw:
        yield gw


def admin(gw: InProcessGateway) -> httpx.AsyncClient:
    app = admin_app_for(gw.gateway)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://admin.test",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )


async def test_admin_crud_validation_and_grants(gw: InProcessGateway) -> None:
    """Create/list/get/update/delete a server; the §15.3 codes; the upstream secret never leaves; grants."""
    base = {"organisation": "acme", "name": "search", "endpoint_url": "http://127.0.0.1:9/mcp/"}
    async with admin(gw) as http:
        for body, code in (
            ({**base, "transport": "CARRIER_PIGEON"}, "invalid_transport"),
            ({**base, "endpoint_url": None}, "mcp_missing_endpoint"),
            ({**base, "transport": "STDIO", "endpoint_url": None}, "mcp_missing_stdio_command"),
            ({**base, "pricing": {"perCall": 1}}, "invalid_request"),
            ({**base, "auth": {"type": "BEARER"}}, "invalid_request"),
            ({**base, "slug": "a/b"}, "invalid_request"),
        ):
            resp = await http.post("/admin/mcp-servers", json=body)
            assert (resp.status_code, resp.json()["error"]["code"]) == (400, code), body
        created = await http.post(
            "/admin/mcp-servers",
            json={**base, "auth": {"type": "BEARER", "token": SECRET}, "blocked_tools": ["rm_*"]},
        )
        assert created.status_code == 201, created.text
        server = created.json()
        assert server["slug"] == "search" and server["auth_type"] == "BEARER" and server["has_auth"]
        assert server["endpoint_url"] == "http://127.0.0.1:9/mcp"
        assert (await http.post("/admin/mcp-servers", json=base)).status_code == 409
        listed = await http.get("/admin/mcp-servers", params={"organisation": "acme"})
        got = await http.get("/admin/mcp-servers/search", params={"organisation": "acme"})
        changed = await http.patch(
            f"/admin/mcp-servers/{server['id']}", json={"enabled": False, "auth": None}
        )
        assert changed.json()["enabled"] is False and changed.json()["has_auth"] is False
        for resp in (created, listed, got, changed):
            assert SECRET not in resp.text
        key = gw.seeded["key_id"]
        granted = await http.post(f"/admin/keys/{key}/mcp-grants", json={"mcp_server": "search"})
        assert granted.status_code == 201 and [s["slug"] for s in granted.json()["data"]] == ["search"]
        assert [s["slug"] for s in (await http.get(f"/admin/keys/{key}/mcp-grants")).json()["data"]] == [
            "search"
        ]
        removed = await http.delete(f"/admin/keys/{key}/mcp-grants/search")
        assert removed.json()["data"] == []
        assert (await http.delete(f"/admin/keys/{key}/mcp-grants/search")).status_code == 404
        assert (await http.delete(f"/admin/mcp-servers/{server['id']}")).status_code == 204
    # stored encrypted: the clear token is nowhere in the row
    async with gw.gateway.store.read() as conn:
        rows = (await conn.execute(sa.text("SELECT * FROM mcp_servers"))).all()
    assert all(SECRET not in str(tuple(row)) for row in rows)


async def test_migration_matches_schema_and_downgrades(tmp_path: Path) -> None:
    """0006 and 0008 create exactly the MCP tables the code queries (servers, grants, usage records); a downgrade
    to 0007 drops the usage records only, one to 0005 every MCP table."""
    url = f"sqlite:///{tmp_path / 'm.db'}"
    store = await SqlStore.open(
        url, Settings(database_url=url, secret_key=base64.b64encode(os.urandom(32)).decode())
    )
    names = {t.name for t in MCP_TABLES} | {schema.mcp_usage_records.name}

    def inspect(conn: sa.Connection) -> tuple[set[str], list[object], set[str], set[str]]:
        from alembic import command
        from alembic.config import Config

        from odock.state.sql import MIGRATIONS_DIR

        tables = set(sa.inspect(conn).get_table_names())
        diff = [
            d
            for d in compare_metadata(MigrationContext.configure(conn), schema.metadata)
            if any(n in str(d) for n in names)
        ]
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = conn
        command.downgrade(config, "0007_usage_rollups")
        before_usage = set(sa.inspect(conn).get_table_names())
        command.downgrade(config, "0005_budget_overspend_events")
        after = set(sa.inspect(conn).get_table_names())
        command.upgrade(config, "head")
        return tables, diff, before_usage, after

    try:
        async with store.engine.begin() as conn:
            tables, diff, before_usage, after = await conn.run_sync(inspect)
    finally:
        await store.close()
    assert tables >= names and diff == []
    assert before_usage & names == names - {"mcp_usage_records"}
    assert not (after & names)


async def test_yaml_applies_mcp_servers_and_grants(gw: InProcessGateway, tmp_path: Path) -> None:
    """`mcp_servers:` and a key's `mcp_servers:` grants apply, and applying twice changes nothing."""
    path = tmp_path / "mcp.yaml"
    path.write_text(
        """
mcp_servers:
  - organisation: acme
    name: Files
    slug: files
    endpoint_url: http://127.0.0.1:9/mcp
    auth: {type: BEARER, token: "${MCP_FILES_TOKEN}"}
    blocked_tools: [delete_file]
    pricing: {callNanosUsd: 2000}
keys:
  - organisation: acme
    name: mcp-user
    mcp_servers: [files]
"""
    )
    env = {"MCP_FILES_TOKEN": "tok-files-secret"}
    first = await apply_config(gw.service, path, env)
    assert "mcp server acme/files" in first.created and "key acme/mcp-user" in first.created
    second = await apply_config(gw.service, path, env)
    assert not second.changed, second
    mcp = McpCatalogueService(gw.gateway.store)
    assert [s.slug for s in await mcp.list_mcp_grants("mcp-user", "acme")] == ["files"]
    server = await mcp.find_server((await gw.service.get_organisation("acme")).id, "files")
    assert server is not None and server.auth == {"token": "tok-files-secret"}
    rotated = await apply_config(gw.service, path, {"MCP_FILES_TOKEN": "tok-rotated"})
    assert any("mcp server acme/files (auth)" in line for line in rotated.updated)
    path.write_text(path.read_text().replace('"${MCP_FILES_TOKEN}"', "inline-secret"))
    with pytest.raises(ConfigFileError, match="inline secrets are refused"):
        await apply_config(gw.service, path, env)


def test_cli_creates_lists_and_grants(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`odock mcp-servers create|list` and `odock mcp-grants add|list`; the token comes from the environment."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    os.environ["MCP_CLI_TOKEN"] = "tok-cli-secret"

    def run(*argv: str) -> int:
        try:
            main([*argv, "--database-url", url])
        except SystemExit as exit_:
            return int(exit_.code or 0)
        return 0

    assert run("orgs", "create", "acme") == 0
    assert run("keys", "create", "k1", "--org", "acme") == 0
    assert (
        run(
            "mcp-servers",
            "create",
            "tools",
            "--org",
            "acme",
            "--url",
            "http://127.0.0.1:9/mcp",
            "--auth-type",
            "BEARER",
            "--auth-secret-env",
            "MCP_CLI_TOKEN",
            "--blocked-tool",
            "rm",
        )
        == 0
    )
    assert run("mcp-servers", "create", "local", "--org", "acme", "--transport", "STDIO") == 1
    assert "mcp_missing_stdio_command" in capsys.readouterr().err
    assert run("mcp-grants", "add", "k1", "tools", "--org", "acme") == 0
    capsys.readouterr()
    assert run("mcp-servers", "list", "--org", "acme", "--json") == 0
    out = capsys.readouterr().out
    assert '"slug": "tools"' in out and "tok-cli-secret" not in out
    assert run("mcp-grants", "list", "k1", "--org", "acme", "--json") == 0
    assert '"slug": "tools"' in capsys.readouterr().out
