"""MCP server CRUD and the keys' MCP grants, for the admin API, the CLI and `odock apply`.

Built on the catalogue service (same transactions, same version bump, so every process drops its caches). Upstream
auth and stdio environments are stored only as AES-256-GCM envelopes; what leaves is `McpServerInfo`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from odock.errors import BadRequest, NotFound
from odock.mcp.records import McpServer, McpServerInfo
from odock.mcp.runtime import screening_wanted
from odock.mcp.schema import key_mcp_grants, mcp_servers
from odock.mcp.validation import (
    McpServerChanges,
    NewMcpServer,
    check_auth,
    check_config,
    check_endpoint,
    check_env,
    check_pricing,
    check_semantic_filter,
    check_slug,
    check_transport,
)
from odock.state import schema
from odock.state.crud import CatalogueService, conflict
from odock.state.sql import RowLike, SqlStore
from odock.state.validation import decode, text


def _fields(row: RowLike) -> dict[str, Any]:
    """The columns both views of a server share (the secrets are each view's own business)."""
    return {
        "id": row["id"],
        "organisation_id": row["organisation_id"],
        "team_id": row["team_id"],
        "api_key_id": row["api_key_id"],
        "name": row["name"],
        "slug": row["slug"],
        "description": row["description"] or "",
        "transport": row["transport"],
        "endpoint_url": row["endpoint_url"],
        "stdio_command": row["stdio_command"],
        "stdio_args": list(row["stdio_args"] or []),
        "auth_type": row["auth_type"],
        "enabled": bool(row["enabled"]),
        "allowed_tools": list(row["allowed_tools"] or []),
        "blocked_tools": list(row["blocked_tools"] or []),
        "semantic_filter": row["semantic_filter"] or {},
        "pricing": row["pricing"] or {},
        "policies": row["policies"] or {},
        "config": row["config"] or {},
    }


def server_from_row(store: SqlStore, row: RowLike) -> McpServer:
    """The hot path's record, secrets decrypted."""
    box = store.box
    auth = json.loads(box.decrypt(row["auth_encrypted"])) if row["auth_encrypted"] else {}
    env = json.loads(box.decrypt(row["stdio_env_encrypted"])) if row["stdio_env_encrypted"] else {}
    return McpServer(**_fields(row), stdio_env=env, auth=auth)


def _info(row: RowLike, env_keys: list[str]) -> McpServerInfo:
    """The admin's view: never a secret, only which environment keys and whether auth is set."""
    return McpServerInfo(**_fields(row), stdio_env_keys=env_keys, has_auth=row["auth_encrypted"] is not None)


class McpCatalogueService(CatalogueService):
    """The catalogue service plus MCP servers and MCP grants."""

    def __init__(self, store: SqlStore) -> None:
        super().__init__(store)

    def _server_info(self, row: RowLike) -> McpServerInfo:
        env = server_from_row(self.store, row).stdio_env if row["stdio_env_encrypted"] else {}
        return _info(row, sorted(env))

    def _sealed(self, value: dict[str, Any] | None) -> str | None:
        return self.store.box.encrypt(json.dumps(value)) if value else None

    async def _scope_ids(
        self, conn: AsyncConnection, org_id: str, team: str | None, key: str | None
    ) -> dict[str, str | None]:
        team_id = key_id = None
        if team is not None:
            team_id = (await self._scoped_row(conn, schema.teams, "team", team, org_id))["id"]
        if key is not None:
            key_id = (await self._scoped_row(conn, schema.api_keys, "key", key, org_id))["id"]
        return {"team_id": team_id, "api_key_id": key_id}

    async def create_mcp_server(self, data: Mapping[str, Any]) -> McpServerInfo:
        """Create an MCP server (`organisation`, `name`, `transport`, `endpoint_url` or `stdio_command`, …)."""
        new = decode(NewMcpServer, data, "mcp server")
        transport = check_transport(new.transport)
        check_endpoint(transport, new.endpoint_url, new.stdio_command)
        auth_type, auth = check_auth(new.auth)
        values: dict[str, Any] = {
            "id": f"mcp_{uuid.uuid4().hex[:24]}",
            "name": new.name,
            "slug": check_slug(new.slug or new.name),
            "description": new.description or "",
            "transport": transport,
            "endpoint_url": new.endpoint_url.rstrip("/") if new.endpoint_url else None,
            "stdio_command": new.stdio_command,
            "stdio_args": new.stdio_args or [],
            "stdio_env_encrypted": self._sealed(check_env(new.stdio_env or {})),
            "auth_type": auth_type,
            "auth_encrypted": self._sealed(auth),
            "enabled": new.enabled,
            "allowed_tools": new.allowed_tools or [],
            "blocked_tools": new.blocked_tools or [],
            "semantic_filter": check_semantic_filter(new.semantic_filter or {}),
            "pricing": check_pricing(new.pricing or {}),
            "policies": new.policies or {},
            "config": check_config(new.config or {}),
        }
        t = mcp_servers
        async with self.store.mutate() as conn:
            org = await self._org_row(conn, new.organisation)
            values.update(await self._scope_ids(conn, org["id"], new.team, new.api_key))
            if await self._taken(conn, t, "slug", values["slug"], org["id"]):
                raise conflict(
                    f"mcp server {values['slug']!r} already exists in organisation {org['name']!r}"
                )
            await conn.execute(t.insert().values(organisation_id=org["id"], **values))
            row = await self._scoped_row(conn, t, "mcp server", values["id"], None, "slug")
        return self._server_info(row)

    async def list_mcp_servers(self, organisation: str | None = None) -> list[McpServerInfo]:
        """Return the MCP servers, of one organisation or all."""
        return [self._server_info(row) for row in await self._list(mcp_servers, organisation, "slug")]

    async def get_mcp_server(self, ref: str, organisation: str | None = None) -> McpServerInfo:
        """Return the server with this id (or slug within `organisation`)."""
        async with self.store.read() as conn:
            return self._server_info(
                await self._scoped_row(conn, mcp_servers, "mcp server", ref, organisation, "slug")
            )

    async def update_mcp_server(
        self, ref: str, changes: Mapping[str, Any], organisation: str | None = None
    ) -> McpServerInfo:
        """Change a server; `auth: null` removes the upstream credential."""
        values = decode(McpServerChanges, changes, "mcp server").given()
        t = mcp_servers
        async with self.store.mutate() as conn:
            row = await self._scoped_row(conn, t, "mcp server", ref, organisation, "slug")
            values = await self._change_values(conn, row, values)
            current = {**row, **values}
            check_endpoint(current["transport"], current["endpoint_url"], current["stdio_command"])
            if "slug" in values and await self._taken(
                conn, t, "slug", values["slug"], row["organisation_id"], row["id"]
            ):
                raise conflict(f"mcp server {values['slug']!r} already exists")
            await self._update(conn, t, row["id"], values)
            row = await self._scoped_row(conn, t, "mcp server", row["id"], None, "slug")
        return self._server_info(row)

    async def _change_values(
        self, conn: AsyncConnection, row: RowLike, values: dict[str, Any]
    ) -> dict[str, Any]:
        empty: dict[str, Any] = {
            "stdio_args": [],
            "allowed_tools": [],
            "blocked_tools": [],
            "semantic_filter": {},
            "pricing": {},
            "policies": {},
            "config": {},
            "description": "",
        }
        for field, default in empty.items():
            if field in values and values[field] is None:
                values[field] = default
        checks: dict[str, Callable[[Any], Any]] = {
            "transport": check_transport,
            "slug": check_slug,
            "pricing": check_pricing,
            "config": check_config,
            "semantic_filter": check_semantic_filter,
        }
        for field, check in checks.items():
            if field in values:
                values[field] = check(values[field])
        if values.get("endpoint_url"):
            values["endpoint_url"] = values["endpoint_url"].rstrip("/")
        if "auth" in values:
            auth_type, auth = check_auth(values.pop("auth"))
            values["auth_type"], values["auth_encrypted"] = auth_type, self._sealed(auth)
        if "stdio_env" in values:
            values["stdio_env_encrypted"] = self._sealed(check_env(values.pop("stdio_env") or {}))
        org_id = row["organisation_id"]
        if "team" in values:
            team = values.pop("team")
            values["team_id"] = (await self._scope_ids(conn, org_id, team, None))["team_id"]
        if "api_key" in values:
            key = values.pop("api_key")
            values["api_key_id"] = (await self._scope_ids(conn, org_id, None, key))["api_key_id"]
        return values

    async def delete_mcp_server(self, ref: str, organisation: str | None = None) -> None:
        """Delete a server and its grants."""
        async with self.store.mutate() as conn:
            row = await self._scoped_row(conn, mcp_servers, "mcp server", ref, organisation, "slug")
            await self._delete(conn, mcp_servers, row["id"])

    # ---------------------------------------------------------------------------------------- grants

    async def _server_for_key(self, conn: AsyncConnection, key: RowLike, ref: Any) -> RowLike:
        ref = text(ref, "mcp server")
        t = mcp_servers
        row = await self._row(conn, sa.select(t).where(t.c.id == ref))
        if row is not None and row["organisation_id"] != key["organisation_id"]:
            raise BadRequest(
                "the MCP server must belong to the key's organisation", "mcp_not_in_organisation"
            )
        if row is None:
            row = await self._row(
                conn, sa.select(t).where(t.c.organisation_id == key["organisation_id"], t.c.slug == ref)
            )
        if row is None:
            raise NotFound(f"mcp server {ref!r} not found in the key's organisation")
        return row

    async def _mcp_granted(self, conn: AsyncConnection, key_id: str) -> list[RowLike]:
        t, g = mcp_servers, key_mcp_grants
        query = (
            sa.select(t)
            .join(g, g.c.mcp_server_id == t.c.id)
            .where(g.c.api_key_id == key_id)
            .order_by(t.c.slug)
        )
        return list((await conn.execute(query)).mappings().all())

    async def list_mcp_grants(self, key: str, organisation: str | None = None) -> list[McpServerInfo]:
        """Return the MCP servers this key may call."""
        async with self.store.read() as conn:
            row = await self._scoped_row(conn, schema.api_keys, "key", key, organisation)
            return [self._server_info(s) for s in await self._mcp_granted(conn, row["id"])]

    async def add_mcp_grant(
        self, key: str, server: str, organisation: str | None = None
    ) -> list[McpServerInfo]:
        """Grant the key access to an MCP server of its organisation (no-op when already granted)."""
        g = key_mcp_grants
        async with self.store.mutate() as conn:
            row = await self._locked_key(conn, key, organisation)
            target = await self._server_for_key(conn, row, server)
            if not await self._exists(
                conn, g, g.c.api_key_id == row["id"], g.c.mcp_server_id == target["id"]
            ):
                await conn.execute(g.insert().values(api_key_id=row["id"], mcp_server_id=target["id"]))
            granted = await self._mcp_granted(conn, row["id"])
        return [self._server_info(s) for s in granted]

    async def remove_mcp_grant(
        self, key: str, server: str, organisation: str | None = None
    ) -> list[McpServerInfo]:
        """Withdraw the key's access to an MCP server (404 when it had none)."""
        g = key_mcp_grants
        async with self.store.mutate() as conn:
            row = await self._locked_key(conn, key, organisation)
            target = await self._server_for_key(conn, row, server)
            result = await conn.execute(
                g.delete().where(g.c.api_key_id == row["id"], g.c.mcp_server_id == target["id"])
            )
            if not result.rowcount:
                raise NotFound(f"key {row['name']!r} has no grant for mcp server {target['slug']!r}")
            granted = await self._mcp_granted(conn, row["id"])
        return [self._server_info(s) for s in granted]

    async def set_mcp_grants(self, key: str, servers: Sequence[str], organisation: str | None = None) -> bool:
        """Make the key's MCP grants exactly `servers`; return whether anything changed."""
        g = key_mcp_grants
        async with self.store.write() as conn:
            row = await self._locked_key(conn, key, organisation)
            wanted = {(await self._server_for_key(conn, row, ref))["id"] for ref in servers}
            current = {item["id"] for item in await self._mcp_granted(conn, row["id"])}
            if wanted == current:
                return False
            stale = current - wanted
            if stale:
                await conn.execute(
                    g.delete().where(g.c.api_key_id == row["id"], g.c.mcp_server_id.in_(stale))
                )
            for server_id in sorted(wanted - current):
                await conn.execute(g.insert().values(api_key_id=row["id"], mcp_server_id=server_id))
            await self.store.bump_version(conn)
        await self.store.notify_changed()
        return True

    # ------------------------------------------------------------------------------ hot-path reads

    async def find_server(self, organisation_id: str, ref: str) -> McpServer | None:
        """The server with this id, else this slug, in the organisation (any state: the caller checks)."""
        t = mcp_servers
        async with self.store.read() as conn:
            row = await self._row(
                conn, sa.select(t).where(t.c.id == ref, t.c.organisation_id == organisation_id)
            )
            if row is None:
                row = await self._row(
                    conn, sa.select(t).where(t.c.organisation_id == organisation_id, t.c.slug == ref)
                )
        return server_from_row(self.store, row) if row is not None else None

    async def granted_server_ids(self, api_key_id: str) -> frozenset[str]:
        g = key_mcp_grants
        async with self.store.read() as conn:
            rows = (
                await conn.execute(sa.select(g.c.mcp_server_id).where(g.c.api_key_id == api_key_id))
            ).all()
        return frozenset(r[0] for r in rows)


async def screening_wanted_anywhere(store: SqlStore) -> bool:
    """Whether some MCP server opted in to SafetySec or plugins: the gateway wires the MCP screening stage only
    then. A text prefilter keeps the scan cheap; it runs at start and on each catalogue change."""
    t = mcp_servers
    mentions = sa.or_(
        sa.cast(t.c.policies, sa.Text).like('%"safety"%'), sa.cast(t.c.config, sa.Text).like('%"plugins"%')
    )
    async with store.read() as conn:
        rows = (await conn.execute(sa.select(t.c.policies, t.c.config).where(mentions))).all()
    return any(screening_wanted(policies or {}, config or {}) for policies, config in rows)
