"""Catalogue CRUD: organisations, teams, users, providers, models, API keys and grants, over one SqlStore.

Inputs are validated once by `odock.state.validation`. References to other objects may be ids or names; a name
is resolved within the organisation. Failures are our errors: `BadRequest` (400), `NotFound` (404),
`GatewayError(status=409, code="conflict")` for duplicates. Secrets: API key secrets are returned once
(`CreatedKey.secret`) and stored only as SHA-256 (`odock.state.keys`); provider credentials are stored encrypted
and only `has_api_key` / a masked preview ever leave this module.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from odock.errors import BadRequest, GatewayError, NotFound
from odock.providers.registry import provider_type
from odock.state import reports, schema
from odock.state.crypto import mask_secret
from odock.state.keys import generate_secret, hash_key, key_preview, secret_matches
from odock.state.records import ModelRecord, Organisation, Team, User
from odock.state.sql import RowLike, SqlStore
from odock.state.validation import (
    KeyChanges,
    ModelChanges,
    NewKey,
    NewModel,
    NewOrganisation,
    NewProvider,
    NewTeam,
    NewUser,
    OrganisationChanges,
    ProviderChanges,
    TeamChanges,
    UserChanges,
    chosen_secret,
    decode,
    expiry,
    ownership,
    provider_config,
    text,
)


class ProviderInfo(msgspec.Struct, kw_only=True):
    """A provider as the admin surfaces show it: never the credential, only whether one is set."""

    id: str
    organisation_id: str
    name: str
    type: str
    base_url: str
    has_api_key: bool
    api_key_preview: str | None
    timeout_ms: int | None
    enabled: bool
    config: dict[str, Any]


class KeyInfo(msgspec.Struct, kw_only=True):
    """An API key as the admin surfaces show it: a masked preview, never the secret or its hash."""

    id: str
    name: str
    key_preview: str
    type: str
    organisation_id: str
    team_id: str | None
    user_id: str | None
    expires_at: datetime | None
    revoked: bool
    revealed: bool
    timezone: str
    policies: dict[str, Any]
    rotation_count: int
    created_at: datetime


class CreatedKey(msgspec.Struct, kw_only=True):
    """A key just created or rotated, with its secret: the only time the secret is shown."""

    key: KeyInfo
    secret: str


class KeyRotation(msgspec.Struct, kw_only=True):
    """One rotation history row."""

    rotated_at: datetime
    previous_preview: str
    previous_expires_at: datetime | None
    new_expires_at: datetime | None
    rotated_by: str | None


def conflict(message: str) -> GatewayError:
    """Return the 409 error for a duplicate."""
    return GatewayError(message, "conflict", status=409)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class CatalogueService:
    """Create, read, update and delete the catalogue; keys, grants and usage reports."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    # ------------------------------------------------------------------------------------ resolution

    async def _row(self, conn: AsyncConnection, query: sa.Select[Any]) -> RowLike | None:
        row: RowLike | None = (await conn.execute(query)).mappings().first()
        return row

    async def _org_row(self, conn: AsyncConnection, ref: Any) -> RowLike:
        ref = text(ref, "organisation", max_len=200)
        t = schema.organisations
        row = await self._row(conn, sa.select(t).where(sa.or_(t.c.id == ref, t.c.name == ref)))
        if row is None:
            raise NotFound(f"organisation {ref!r} not found")
        return row

    async def _scoped_row(
        self,
        conn: AsyncConnection,
        table: sa.Table,
        what: str,
        ref: Any,
        organisation: Any | None,
        name_column: str = "name",
    ) -> RowLike:
        ref = text(ref, what)
        row = await self._row(conn, sa.select(table).where(table.c.id == ref))
        if row is None:
            if organisation is None:
                raise NotFound(f"{what} {ref!r} not found (to refer to it by name, give its organisation)")
            org = await self._org_row(conn, organisation)
            row = await self._row(
                conn,
                sa.select(table).where(table.c.organisation_id == org["id"], table.c[name_column] == ref),
            )
        elif organisation is not None:
            org = await self._org_row(conn, organisation)
            if row["organisation_id"] != org["id"]:
                row = None
        if row is None:
            raise NotFound(f"{what} {ref!r} not found")
        return row

    def _provider_info(self, row: RowLike) -> ProviderInfo:
        return ProviderInfo(
            id=row["id"],
            organisation_id=row["organisation_id"],
            name=row["name"],
            type=row["type"],
            base_url=row["base_url"],
            has_api_key=row["api_key_encrypted"] is not None,
            api_key_preview=row["api_key_preview"],
            timeout_ms=row["timeout_ms"],
            enabled=bool(row["enabled"]),
            config=row["config"] or {},
        )

    def _key_info(self, row: RowLike) -> KeyInfo:
        return KeyInfo(
            id=row["id"],
            name=row["name"],
            key_preview=row["key_preview"],
            type=row["type"],
            organisation_id=row["organisation_id"],
            team_id=row["team_id"],
            user_id=row["user_id"],
            expires_at=row["expires_at"],
            revoked=bool(row["revoked"]),
            revealed=bool(row["revealed"]),
            timezone=row["timezone"],
            policies=row["policies"] or {},
            rotation_count=row["rotation_count"],
            created_at=row["created_at"],
        )

    async def _exists(self, conn: AsyncConnection, table: sa.Table, *where: Any) -> bool:
        return (
            await conn.execute(sa.select(sa.literal(1)).select_from(table).where(*where))
        ).first() is not None

    async def _taken(
        self,
        conn: AsyncConnection,
        table: sa.Table,
        column: str,
        value: str,
        org_id: str,
        row_id: str | None = None,
    ) -> bool:
        """Whether another row of the organisation already uses this name (or e-mail)."""
        where = [table.c.organisation_id == org_id, table.c[column] == value]
        if row_id is not None:
            where.append(table.c.id != row_id)
        return await self._exists(conn, table, *where)

    async def _delete(self, conn: AsyncConnection, table: sa.Table, row_id: str) -> None:
        await conn.execute(table.delete().where(table.c.id == row_id))

    async def _update(
        self, conn: AsyncConnection, table: sa.Table, row_id: str, values: dict[str, Any]
    ) -> None:
        if values:
            await conn.execute(table.update().where(table.c.id == row_id).values(**values))

    # ---------------------------------------------------------------------------------- organisations

    async def create_organisation(self, data: Mapping[str, Any]) -> Organisation:
        """Create an organisation (`name`, optional `timezone`, `policies`)."""
        new = decode(NewOrganisation, data, "organisation")
        values = {
            "id": _new_id("org"),
            "name": new.name,
            "timezone": new.timezone or "UTC",
            "policies": new.policies or {},
        }
        t = schema.organisations
        async with self.store.mutate() as conn:
            if await self._exists(conn, t, t.c.name == new.name):
                raise conflict(f"organisation {new.name!r} already exists")
            await conn.execute(t.insert().values(**values))
            row = await self._org_row(conn, values["id"])
        return self.store.organisation_from_row(row)

    async def list_organisations(self) -> list[Organisation]:
        """Return every organisation, by name."""
        t = schema.organisations
        async with self.store.read() as conn:
            rows = (await conn.execute(sa.select(t).order_by(t.c.name))).mappings().all()
        return [self.store.organisation_from_row(row) for row in rows]

    async def get_organisation(self, ref: str) -> Organisation:
        """Return the organisation with this id or name."""
        async with self.store.read() as conn:
            return self.store.organisation_from_row(await self._org_row(conn, ref))

    async def update_organisation(self, ref: str, changes: Mapping[str, Any]) -> Organisation:
        """Change an organisation's name, timezone or policies."""
        values = decode(OrganisationChanges, changes, "organisation").given()
        if "policies" in values:
            values["policies"] = values["policies"] or {}
        t = schema.organisations
        async with self.store.mutate() as conn:
            row = await self._org_row(conn, ref)
            if "name" in values and await self._exists(
                conn, t, t.c.name == values["name"], t.c.id != row["id"]
            ):
                raise conflict(f"organisation {values['name']!r} already exists")
            await self._update(conn, t, row["id"], values)
            row = await self._org_row(conn, row["id"])
        return self.store.organisation_from_row(row)

    async def delete_organisation(self, ref: str) -> None:
        """Delete an organisation and everything in it (teams, users, keys, providers, models, grants)."""
        async with self.store.mutate() as conn:
            row = await self._org_row(conn, ref)
            # models reference providers without ON DELETE: remove them first so the cascade cannot trip
            await conn.execute(schema.models.delete().where(schema.models.c.organisation_id == row["id"]))
            await conn.execute(schema.api_keys.delete().where(schema.api_keys.c.organisation_id == row["id"]))
            await self._delete(conn, schema.organisations, row["id"])

    # ------------------------------------------------------------------------------------------ teams

    async def create_team(self, data: Mapping[str, Any]) -> Team:
        """Create a team (`organisation`, `name`, optional `policies`)."""
        new = decode(NewTeam, data, "team")
        t = schema.teams
        async with self.store.mutate() as conn:
            org = await self._org_row(conn, new.organisation)
            if await self._taken(conn, t, "name", new.name, org["id"]):
                raise conflict(f"team {new.name!r} already exists in organisation {org['name']!r}")
            team_id = _new_id("team")
            await conn.execute(
                t.insert().values(
                    id=team_id, organisation_id=org["id"], name=new.name, policies=new.policies or {}
                )
            )
            row = await self._scoped_row(conn, t, "team", team_id, None)
        return self.store.team_from_row(row)

    async def list_teams(self, organisation: str | None = None) -> list[Team]:
        """Return the teams, of one organisation or all."""
        rows = await self._list(schema.teams, organisation, "name")
        return [self.store.team_from_row(row) for row in rows]

    async def get_team(self, ref: str, organisation: str | None = None) -> Team:
        """Return the team with this id (or name within `organisation`)."""
        async with self.store.read() as conn:
            return self.store.team_from_row(
                await self._scoped_row(conn, schema.teams, "team", ref, organisation)
            )

    async def update_team(
        self, ref: str, changes: Mapping[str, Any], organisation: str | None = None
    ) -> Team:
        """Change a team's name or policies."""
        values = decode(TeamChanges, changes, "team").given()
        if "policies" in values:
            values["policies"] = values["policies"] or {}
        t = schema.teams
        async with self.store.mutate() as conn:
            row = await self._scoped_row(conn, t, "team", ref, organisation)
            if "name" in values and await self._taken(
                conn, t, "name", values["name"], row["organisation_id"], row["id"]
            ):
                raise conflict(f"team {values['name']!r} already exists")
            await self._update(conn, t, row["id"], values)
            row = await self._scoped_row(conn, t, "team", row["id"], None)
        return self.store.team_from_row(row)

    async def delete_team(self, ref: str, organisation: str | None = None) -> None:
        """Delete a team (refused with 409 while keys belong to it)."""
        async with self.store.mutate() as conn:
            row = await self._scoped_row(conn, schema.teams, "team", ref, organisation)
            if await self._exists(conn, schema.api_keys, schema.api_keys.c.team_id == row["id"]):
                raise conflict(f"team {row['name']!r} still owns API keys; delete or reassign them first")
            await self._delete(conn, schema.teams, row["id"])

    # ------------------------------------------------------------------------------------------ users

    async def create_user(self, data: Mapping[str, Any]) -> User:
        """Create a user (`organisation`, `email`, optional `name`)."""
        new = decode(NewUser, data, "user")
        t = schema.users
        async with self.store.mutate() as conn:
            org = await self._org_row(conn, new.organisation)
            if await self._taken(conn, t, "email", new.email, org["id"]):
                raise conflict(f"user {new.email!r} already exists in organisation {org['name']!r}")
            user_id = _new_id("user")
            await conn.execute(
                t.insert().values(id=user_id, organisation_id=org["id"], email=new.email, name=new.name or "")
            )
            row = await self._scoped_row(conn, t, "user", user_id, None)
        return self.store.user_from_row(row)

    async def list_users(self, organisation: str | None = None) -> list[User]:
        """Return the users, of one organisation or all."""
        rows = await self._list(schema.users, organisation, "email")
        return [self.store.user_from_row(row) for row in rows]

    async def get_user(self, ref: str, organisation: str | None = None) -> User:
        """Return the user with this id (or e-mail within `organisation`)."""
        async with self.store.read() as conn:
            row = await self._scoped_row(conn, schema.users, "user", ref, organisation, "email")
        return self.store.user_from_row(row)

    async def update_user(
        self, ref: str, changes: Mapping[str, Any], organisation: str | None = None
    ) -> User:
        """Change a user's e-mail or display name."""
        values = decode(UserChanges, changes, "user").given()
        if "name" in values:
            values["name"] = values["name"] or ""
        t = schema.users
        async with self.store.mutate() as conn:
            row = await self._scoped_row(conn, t, "user", ref, organisation, "email")
            if "email" in values and await self._taken(
                conn, t, "email", values["email"], row["organisation_id"], row["id"]
            ):
                raise conflict(f"user {values['email']!r} already exists")
            await self._update(conn, t, row["id"], values)
            row = await self._scoped_row(conn, t, "user", row["id"], None)
        return self.store.user_from_row(row)

    async def delete_user(self, ref: str, organisation: str | None = None) -> None:
        """Delete a user (refused with 409 while keys belong to them)."""
        async with self.store.mutate() as conn:
            row = await self._scoped_row(conn, schema.users, "user", ref, organisation, "email")
            if await self._exists(conn, schema.api_keys, schema.api_keys.c.user_id == row["id"]):
                raise conflict(f"user {row['email']!r} still owns API keys; delete or reassign them first")
            await self._delete(conn, schema.users, row["id"])

    # -------------------------------------------------------------------------------------- providers

    def _credential(self, secret: str | None) -> dict[str, str | None]:
        if secret is None:
            return {"api_key_encrypted": None, "api_key_preview": None}
        return {"api_key_encrypted": self.store.box.encrypt(secret), "api_key_preview": mask_secret(secret)}

    async def create_provider(self, data: Mapping[str, Any]) -> ProviderInfo:
        """Create a provider (`organisation`, `name`, `type`, `base_url`, optional `api_key`, `timeout_ms`, …)."""
        new = decode(NewProvider, data, "provider")
        values: dict[str, Any] = {
            "id": _new_id("prov"),
            "name": new.name,
            "type": _registered(new.type),
            "base_url": new.base_url,
            **self._credential(new.api_key),
            "timeout_ms": new.timeout_ms,
            "enabled": new.enabled,
            "config": provider_config(new.config or {}),
        }
        t = schema.providers
        async with self.store.mutate() as conn:
            org = await self._org_row(conn, new.organisation)
            if await self._taken(conn, t, "name", new.name, org["id"]):
                raise conflict(f"provider {new.name!r} already exists in organisation {org['name']!r}")
            await conn.execute(t.insert().values(organisation_id=org["id"], **values))
            row = await self._scoped_row(conn, t, "provider", values["id"], None)
        return self._provider_info(row)

    async def list_providers(self, organisation: str | None = None) -> list[ProviderInfo]:
        """Return the providers, of one organisation or all."""
        return [self._provider_info(row) for row in await self._list(schema.providers, organisation, "name")]

    async def get_provider(self, ref: str, organisation: str | None = None) -> ProviderInfo:
        """Return the provider with this id (or name within `organisation`)."""
        async with self.store.read() as conn:
            return self._provider_info(
                await self._scoped_row(conn, schema.providers, "provider", ref, organisation)
            )

    async def provider_api_key(self, ref: str, organisation: str | None = None) -> str | None:
        """Return a provider's clear credential (for `odock apply` comparisons; never for display)."""
        async with self.store.read() as conn:
            row = await self._scoped_row(conn, schema.providers, "provider", ref, organisation)
        return self.store.provider_from_row(row).api_key

    async def update_provider(
        self, ref: str, changes: Mapping[str, Any], organisation: str | None = None
    ) -> ProviderInfo:
        """Change a provider; `api_key: null` removes the credential."""
        values = decode(ProviderChanges, changes, "provider").given()
        if "type" in values:
            _registered(values["type"])
        if "api_key" in values:
            values.update(self._credential(values.pop("api_key")))
        if "config" in values:
            values["config"] = provider_config(values["config"] or {})
        t = schema.providers
        async with self.store.mutate() as conn:
            row = await self._scoped_row(conn, t, "provider", ref, organisation)
            if "name" in values and await self._taken(
                conn, t, "name", values["name"], row["organisation_id"], row["id"]
            ):
                raise conflict(f"provider {values['name']!r} already exists")
            await self._update(conn, t, row["id"], values)
            row = await self._scoped_row(conn, t, "provider", row["id"], None)
        return self._provider_info(row)

    async def delete_provider(self, ref: str, organisation: str | None = None) -> None:
        """Delete a provider (refused with 409 while models use it)."""
        async with self.store.mutate() as conn:
            row = await self._scoped_row(conn, schema.providers, "provider", ref, organisation)
            if await self._exists(conn, schema.models, schema.models.c.provider_id == row["id"]):
                raise conflict(f"provider {row['name']!r} is still used by models; delete or move them first")
            await self._delete(conn, schema.providers, row["id"])

    # ----------------------------------------------------------------------------------------- models

    async def create_model(self, data: Mapping[str, Any]) -> ModelRecord:
        """Create a model (`organisation`, `name`, `provider`, `slug`, optional `type`, `capabilities`, …)."""
        new = decode(NewModel, data, "model")
        values: dict[str, Any] = {
            "id": _new_id("model"),
            "name": new.name,
            "slug": new.slug,
            "type": new.type or "chat",
            "capabilities": new.capabilities or [],
            "pricing": new.pricing or {},
            "policies": new.policies or {},
            "config": new.config or {},
        }
        t = schema.models
        async with self.store.mutate() as conn:
            org = await self._org_row(conn, new.organisation)
            provider = await self._scoped_row(conn, schema.providers, "provider", new.provider, org["id"])
            if await self._taken(conn, t, "name", new.name, org["id"]):
                raise conflict(f"model {new.name!r} already exists in organisation {org['name']!r}")
            await conn.execute(
                t.insert().values(organisation_id=org["id"], provider_id=provider["id"], **values)
            )
            row = await self._scoped_row(conn, t, "model", values["id"], None)
        return self.store.model_from_row(row)

    async def list_models(self, organisation: str | None = None) -> list[ModelRecord]:
        """Return the models, of one organisation or all."""
        return [
            self.store.model_from_row(row) for row in await self._list(schema.models, organisation, "name")
        ]

    async def get_model(self, ref: str, organisation: str | None = None) -> ModelRecord:
        """Return the model with this id (or name within `organisation`)."""
        async with self.store.read() as conn:
            return self.store.model_from_row(
                await self._scoped_row(conn, schema.models, "model", ref, organisation)
            )

    async def update_model(
        self, ref: str, changes: Mapping[str, Any], organisation: str | None = None
    ) -> ModelRecord:
        """Change a model; `provider` is resolved within the model's organisation."""
        values = decode(ModelChanges, changes, "model").given()
        empty: dict[str, Any] = {"capabilities": [], "pricing": {}, "policies": {}, "config": {}}
        for field, default in empty.items():
            if field in values and values[field] is None:
                values[field] = default
        t = schema.models
        async with self.store.mutate() as conn:
            row = await self._scoped_row(conn, t, "model", ref, organisation)
            if "provider" in values:
                provider = await self._scoped_row(
                    conn, schema.providers, "provider", values.pop("provider"), row["organisation_id"]
                )
                values["provider_id"] = provider["id"]
            if "name" in values and await self._taken(
                conn, t, "name", values["name"], row["organisation_id"], row["id"]
            ):
                raise conflict(f"model {values['name']!r} already exists")
            await self._update(conn, t, row["id"], values)
            row = await self._scoped_row(conn, t, "model", row["id"], None)
        return self.store.model_from_row(row)

    async def delete_model(self, ref: str, organisation: str | None = None) -> None:
        """Delete a model and its grants."""
        async with self.store.mutate() as conn:
            row = await self._scoped_row(conn, schema.models, "model", ref, organisation)
            await self._delete(conn, schema.models, row["id"])

    async def _list(self, table: sa.Table, organisation: str | None, order: str) -> Sequence[RowLike]:
        async with self.store.read() as conn:
            query = sa.select(table).order_by(table.c.organisation_id, table.c[order])
            if organisation is not None:
                query = query.where(
                    table.c.organisation_id == (await self._org_row(conn, organisation))["id"]
                )
            return (await conn.execute(query)).mappings().all()

    # ------------------------------------------------------------------------------------------- keys

    async def _owners(
        self, conn: AsyncConnection, org_id: str, key_type: str, team: str | None, user: str | None
    ) -> tuple[str | None, str | None]:
        team_id = user_id = None
        if team is not None:
            team_id = (await self._scoped_row(conn, schema.teams, "team", team, org_id))["id"]
        if user is not None:
            user_id = (await self._scoped_row(conn, schema.users, "user", user, org_id, "email"))["id"]
        ownership(key_type, team_id, user_id)
        return team_id, user_id

    async def create_key(self, data: Mapping[str, Any]) -> CreatedKey:
        """Create an API key; the returned secret is shown once (only its SHA-256 is stored)."""
        new = decode(NewKey, data, "key")
        key_type = new.type or "ORGANISATION"
        secret = new.secret or generate_secret()
        t = schema.api_keys
        async with self.store.mutate() as conn:
            org = await self._org_row(conn, new.organisation)
            team_id, user_id = await self._owners(conn, org["id"], key_type, new.team, new.user)
            if await self._taken(conn, t, "name", new.name, org["id"]):
                raise conflict(f"key {new.name!r} already exists in organisation {org['name']!r}")
            if await self._exists(conn, t, t.c.key_hash == hash_key(secret)):
                raise conflict("another key already uses this secret")
            key_id = _new_id("key")
            await conn.execute(
                t.insert().values(
                    id=key_id,
                    name=new.name,
                    key_hash=hash_key(secret),
                    key_preview=key_preview(secret),
                    type=key_type,
                    organisation_id=org["id"],
                    team_id=team_id,
                    user_id=user_id,
                    expires_at=new.expires_at,
                    revoked=False,
                    revealed=False,
                    timezone=new.timezone or org["timezone"],
                    policies=new.policies or {},
                    rotation_count=0,
                )
            )
            for model_ref in new.models or []:
                model = await self._scoped_row(conn, schema.models, "model", model_ref, org["id"])
                await conn.execute(
                    schema.key_model_grants.insert().values(api_key_id=key_id, model_id=model["id"])
                )
            row = await self._scoped_row(conn, t, "key", key_id, None)
        return CreatedKey(key=self._key_info(row), secret=secret)

    async def list_keys(self, organisation: str | None = None) -> list[KeyInfo]:
        """Return the keys (masked), of one organisation or all."""
        return [self._key_info(row) for row in await self._list(schema.api_keys, organisation, "name")]

    async def get_key(self, ref: str, organisation: str | None = None) -> KeyInfo:
        """Return the key with this id (or name within `organisation`)."""
        async with self.store.read() as conn:
            return self._key_info(await self._scoped_row(conn, schema.api_keys, "key", ref, organisation))

    async def key_matches_secret(self, ref: str, secret: str, organisation: str | None = None) -> bool:
        """Tell whether the key's stored hash is the hash of `secret`."""
        async with self.store.read() as conn:
            row = await self._scoped_row(conn, schema.api_keys, "key", ref, organisation)
        return secret_matches(row["key_hash"], secret)

    async def update_key(
        self, ref: str, changes: Mapping[str, Any], organisation: str | None = None
    ) -> KeyInfo:
        """Change a key's name, ownership, expiry, timezone, policies or revoked flag (not its secret)."""
        values = decode(KeyChanges, changes, "key").given()
        if "policies" in values:
            values["policies"] = values["policies"] or {}
        t = schema.api_keys
        async with self.store.mutate() as conn:
            row = await self._scoped_row(conn, t, "key", ref, organisation)
            if "name" in values and await self._taken(
                conn, t, "name", values["name"], row["organisation_id"], row["id"]
            ):
                raise conflict(f"key {values['name']!r} already exists")
            if {"type", "team", "user"} & set(values):
                key_type = str(values.setdefault("type", row["type"]))
                team = values.pop("team") if "team" in values else row["team_id"]
                user = values.pop("user") if "user" in values else row["user_id"]
                values["team_id"], values["user_id"] = await self._owners(
                    conn, row["organisation_id"], key_type, team, user
                )
            await self._update(conn, t, row["id"], values)
            row = await self._scoped_row(conn, t, "key", row["id"], None)
        return self._key_info(row)

    async def revoke_key(self, ref: str, organisation: str | None = None) -> KeyInfo:
        """Revoke a key (its secret stops authenticating once caches drop it)."""
        return await self.update_key(ref, {"revoked": True}, organisation)

    async def rotate_key(
        self,
        ref: str,
        *,
        expires_at: Any = None,
        organisation: str | None = None,
        rotated_by: str | None = None,
        secret: str | None = None,
    ) -> CreatedKey:
        """Rotate in place: same id, new secret (shown once), new expiry (empty = none; past = refused)."""
        new_expiry = expiry(expires_at)
        new_secret = chosen_secret(secret) or generate_secret()
        t = schema.api_keys
        async with self.store.mutate() as conn:
            row = await self._scoped_row(conn, t, "key", ref, organisation)
            if await self._exists(conn, t, t.c.key_hash == hash_key(new_secret)):
                raise conflict("another key already uses this secret")
            await conn.execute(
                schema.key_rotations.insert().values(
                    id=_new_id("rot"),
                    api_key_id=row["id"],
                    previous_preview=row["key_preview"],
                    previous_expires_at=row["expires_at"],
                    new_expires_at=new_expiry,
                    rotated_by=rotated_by,
                )
            )
            await conn.execute(
                t.update()
                .where(t.c.id == row["id"])
                .values(
                    key_hash=hash_key(new_secret),
                    key_preview=key_preview(new_secret),
                    expires_at=new_expiry,
                    revealed=False,
                    rotation_count=t.c.rotation_count + 1,
                )
            )
            row = await self._scoped_row(conn, t, "key", row["id"], None)
        return CreatedKey(key=self._key_info(row), secret=new_secret)

    async def key_rotations(self, ref: str, organisation: str | None = None) -> list[KeyRotation]:
        """Return a key's rotation history, oldest first."""
        r = schema.key_rotations
        async with self.store.read() as conn:
            row = await self._scoped_row(conn, schema.api_keys, "key", ref, organisation)
            rows = (
                (
                    await conn.execute(
                        sa.select(r).where(r.c.api_key_id == row["id"]).order_by(r.c.rotated_at, r.c.id)
                    )
                )
                .mappings()
                .all()
            )
        return [
            KeyRotation(
                rotated_at=item["rotated_at"],
                previous_preview=item["previous_preview"],
                previous_expires_at=item["previous_expires_at"],
                new_expires_at=item["new_expires_at"],
                rotated_by=item["rotated_by"],
            )
            for item in rows
        ]

    async def delete_key(self, ref: str, organisation: str | None = None) -> None:
        """Delete a key, its grants and its rotation history."""
        async with self.store.mutate() as conn:
            row = await self._scoped_row(conn, schema.api_keys, "key", ref, organisation)
            await self._delete(conn, schema.api_keys, row["id"])

    # ----------------------------------------------------------------------------------------- grants

    async def _locked_key(self, conn: AsyncConnection, key: str, organisation: str | None) -> RowLike:
        """The key's row, locked until commit (PostgreSQL; SQLite's writers are serialised already), so that
        concurrent grant changes of one key apply one after the other, each on the grants the last one left."""
        row = await self._scoped_row(conn, schema.api_keys, "key", key, organisation)
        t = schema.api_keys
        await conn.execute(sa.select(t.c.id).where(t.c.id == row["id"]).with_for_update())
        return row

    async def _grant_model(self, conn: AsyncConnection, key: RowLike, model_ref: Any) -> RowLike:
        model_ref = text(model_ref, "model")
        m = schema.models
        row = await self._row(conn, sa.select(m).where(m.c.id == model_ref))
        if row is not None and row["organisation_id"] != key["organisation_id"]:
            raise BadRequest("the model must belong to the key's organisation", "model_not_in_organisation")
        if row is None:
            row = await self._row(
                conn, sa.select(m).where(m.c.organisation_id == key["organisation_id"], m.c.name == model_ref)
            )
        if row is None:
            raise NotFound(f"model {model_ref!r} not found in the key's organisation")
        return row

    async def _granted(self, conn: AsyncConnection, key_id: str) -> list[RowLike]:
        m, g = schema.models, schema.key_model_grants
        query = (
            sa.select(m).join(g, g.c.model_id == m.c.id).where(g.c.api_key_id == key_id).order_by(m.c.name)
        )
        return list((await conn.execute(query)).mappings().all())

    async def list_grants(self, key: str, organisation: str | None = None) -> list[ModelRecord]:
        """Return the models this key may call."""
        async with self.store.read() as conn:
            row = await self._scoped_row(conn, schema.api_keys, "key", key, organisation)
            return [self.store.model_from_row(model) for model in await self._granted(conn, row["id"])]

    async def add_grant(self, key: str, model: str, organisation: str | None = None) -> list[ModelRecord]:
        """Grant the key access to a model of its organisation (no-op when already granted)."""
        g = schema.key_model_grants
        async with self.store.mutate() as conn:
            row = await self._locked_key(conn, key, organisation)
            target = await self._grant_model(conn, row, model)
            if not await self._exists(conn, g, g.c.api_key_id == row["id"], g.c.model_id == target["id"]):
                await conn.execute(g.insert().values(api_key_id=row["id"], model_id=target["id"]))
            granted = await self._granted(conn, row["id"])
        return [self.store.model_from_row(item) for item in granted]

    async def remove_grant(self, key: str, model: str, organisation: str | None = None) -> list[ModelRecord]:
        """Withdraw the key's access to a model (404 when it had none)."""
        g = schema.key_model_grants
        async with self.store.mutate() as conn:
            row = await self._locked_key(conn, key, organisation)
            target = await self._grant_model(conn, row, model)
            result = await conn.execute(
                g.delete().where(g.c.api_key_id == row["id"], g.c.model_id == target["id"])
            )
            if not result.rowcount:
                raise NotFound(f"key {row['name']!r} has no grant for model {target['name']!r}")
            granted = await self._granted(conn, row["id"])
        return [self.store.model_from_row(item) for item in granted]

    async def set_grants(self, key: str, models: Sequence[str], organisation: str | None = None) -> bool:
        """Make the key's grants exactly `models`; return whether anything changed.

        The difference is computed and written in one transaction on the locked key, so concurrent calls leave
        exactly one caller's set, and a failure part-way leaves the grants as they were."""
        g = schema.key_model_grants
        async with self.store.write() as conn:
            row = await self._locked_key(conn, key, organisation)
            wanted = {(await self._grant_model(conn, row, ref))["id"] for ref in models}
            current = {item["id"] for item in await self._granted(conn, row["id"])}
            if wanted == current:
                return False
            stale = current - wanted
            if stale:
                await conn.execute(g.delete().where(g.c.api_key_id == row["id"], g.c.model_id.in_(stale)))
            for model_id in sorted(wanted - current):
                await conn.execute(g.insert().values(api_key_id=row["id"], model_id=model_id))
            await self.store.bump_version(conn)
        await self.store.notify_changed()
        return True

    # ------------------------------------------------------------------------------------------ usage

    async def usage_summary(
        self,
        group_by: str = "model",
        *,
        since: Any = None,
        until: Any = None,
        organisation: str | None = None,
    ) -> list[reports.UsageSummaryRow]:
        """Sum requests, tokens and cost over [since, until), grouped by organisation/team/user/key/model/provider/day."""
        organisation_id = None
        if organisation is not None:
            organisation_id = (await self.get_organisation(organisation)).id
        return await reports.usage_summary(
            self.store, group_by, since=since, until=until, organisation_id=organisation_id
        )


def _registered(type_name: Any) -> str:
    """A provider type of the provider registry, or 400 provider_type_unsupported (reference §4.1)."""
    if not isinstance(type_name, str):
        raise BadRequest(
            f"type must be a provider type name (got {type_name!r})", "provider_type_unsupported"
        )
    provider_type(type_name)
    return type_name
