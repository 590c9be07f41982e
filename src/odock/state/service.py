"""The admin service: every catalogue change and report, shared by the admin API, the CLI and `odock apply`.

Inputs are plain mappings (JSON bodies, parsed YAML, CLI flags) validated here once. References to other
objects may be ids or names; a name is resolved within the organisation. Failures are our errors:
`BadRequest` (400), `NotFound` (404), `GatewayError(status=409, code="conflict")` for duplicates.
Secrets: API key secrets are returned once (`CreatedKey.secret`) and stored only as SHA-256; provider
credentials are stored encrypted and only `has_api_key` / a masked preview ever leave this module.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time
from typing import Any, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from odock.errors import BadRequest, GatewayError, NotFound
from odock.state import schema
from odock.state.crypto import mask_secret
from odock.state.records import (
    KeyType,
    ModelRecord,
    ModelType,
    Organisation,
    ProviderType,
    Team,
    User,
)
from odock.state.schema import utcnow
from odock.state.sql import RowLike, SqlStore

KEY_PREFIX = "sk-odock-"
KEY_TYPES: tuple[str, ...] = get_args(KeyType)
PROVIDER_TYPES: tuple[str, ...] = get_args(ProviderType)
MODEL_TYPES: tuple[str, ...] = get_args(ModelType)
GROUP_BY = ("organisation", "team", "user", "key", "model", "provider", "day")
_MIN_SECRET_LENGTH = 20


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


class UsageSummaryRow(msgspec.Struct, kw_only=True):
    """Totals of one group of usage records."""

    group: str | None
    requests: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    reasoning_tokens: int
    cost_nanos: int


def hash_secret(secret: str) -> str:
    """Return the SHA-256 hex digest under which a key secret is stored and looked up."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def generate_secret() -> str:
    """Return a new API key secret."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_preview(secret: str) -> str:
    """Return the masked form of a key secret (prefix and last four characters)."""
    head = secret[: len(KEY_PREFIX) + 2] if secret.startswith(KEY_PREFIX) else secret[:4]
    return f"{head}…{secret[-4:]}"


def to_json(value: Any) -> Any:
    """Convert records and info structs to JSON-ready builtins (datetimes as ISO 8601)."""
    return msgspec.to_builtins(value)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def conflict(message: str) -> GatewayError:
    """Return the 409 error for a duplicate."""
    return GatewayError(message, "conflict", status=409)


# ---------------------------------------------------------------------------------------------- validation


def _fields(data: Mapping[str, Any], allowed: Iterable[str], what: str) -> None:
    if not isinstance(data, Mapping):
        raise BadRequest(f"{what}: expected an object")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise BadRequest(f"{what}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _text(value: Any, field: str, *, max_len: int = 200) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{field} must be a non-empty string")
    text: str = value.strip()
    if len(text) > max_len:
        raise BadRequest(f"{field} is longer than {max_len} characters")
    if "\x00" in text:
        raise BadRequest(f"{field} must not contain NUL characters (PostgreSQL cannot store them)")
    return text


def _required(data: Mapping[str, Any], field: str, what: str) -> Any:
    if data.get(field) is None:
        raise BadRequest(f"{what}: {field} is required")
    return data[field]


def _choice(value: Any, field: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise BadRequest(f"{field} must be one of {', '.join(choices)} (got {value!r})")
    return str(value)


def _object(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{field} must be an object")
    if holds_nul(value):
        raise BadRequest(f"{field} must not contain NUL characters (PostgreSQL cannot store them)")
    return dict(value)


def holds_nul(value: Any) -> bool:
    """Whether a JSON value has a NUL character in any string or key (JSONB and TEXT refuse them)."""
    pending = [value]
    while pending:
        node = pending.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return True
        elif isinstance(node, dict):
            pending.extend(node)
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return False


def _policies(value: Any) -> dict[str, Any]:
    """A policy envelope, refused at write time when its routing section is malformed (it would be ignored)."""
    from odock.routing.strategies import validate_routing

    policies = _object(value, "policies")
    problems = validate_routing(policies)
    if problems:
        raise BadRequest("; ".join(problems), "invalid_policy")
    return policies


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{field} must be true or false")
    return value


def _timezone(value: Any, field: str = "timezone") -> str:
    name = _text(value, field, max_len=64)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadRequest(f"{field}: unknown time zone {name!r}") from None
    return name


INT32_MAX = 2**31 - 1  # an INTEGER column on PostgreSQL


def _positive_int(value: Any, field: str, maximum: int = INT32_MAX) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= maximum:
        raise BadRequest(f"{field} must be a positive integer of at most {maximum}")
    return value


# provider `config` keys the gateway reads itself (the rest is free-form)
PROVIDER_TIMEOUTS = ("connect_timeout_ms", "first_byte_timeout_ms")


def _provider_config(value: Any) -> dict[str, Any]:
    """A provider's `config`; its timeouts are read on every call, so a bad one is refused here."""
    config = _object(value, "config")
    for name in PROVIDER_TIMEOUTS:
        timeout = config.get(name)
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                    or not 0 < timeout <= INT32_MAX):
            raise BadRequest(f"config.{name} must be a positive number of milliseconds")
    return config


def _base_url(value: Any) -> str:
    url = _text(value, "base_url", max_len=2000)
    if not url.startswith(("http://", "https://")):
        raise BadRequest("base_url must start with http:// or https://")
    return url.rstrip("/")


def _capabilities(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) and item and "\x00" not in item
                                              for item in value):
        raise BadRequest("capabilities must be a list of strings (without NUL characters)")
    return list(dict.fromkeys(value))


def _pricing(value: Any, field: str = "pricing") -> dict[str, Any]:
    pricing = _object(value, field)
    for name, price in pricing.items():
        if isinstance(price, dict):
            _pricing(price, f"{field}.{name}")
        elif isinstance(price, bool) or not isinstance(price, int | float) or not math.isfinite(price) or price < 0:
            raise BadRequest(f"{field}.{name} must be a non-negative number")
    return pricing


def parse_datetime(value: Any, field: str) -> datetime | None:
    """Parse an ISO 8601 instant or date (naive means UTC); None or "" means no value."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime.combine(value, time())
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise BadRequest(f"{field} must be an ISO 8601 date-time, e.g. 2027-01-01T00:00:00Z") from None
    else:
        raise BadRequest(f"{field} must be an ISO 8601 date-time")
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _future(value: Any, field: str = "expires_at") -> datetime | None:
    moment = parse_datetime(value, field)
    if moment is not None and moment <= utcnow():
        raise BadRequest(f"{field} is in the past", "invalid_expiry")
    return moment


def _ownership(key_type: str, team_id: str | None, user_id: str | None) -> None:
    # reference §3.3: the type decides which owner is required and which is forbidden
    if key_type == "ORGANISATION" and (team_id or user_id):
        raise BadRequest("an ORGANISATION key must not have a team or a user", "invalid_key_ownership")
    if key_type == "TEAM" and (not team_id or user_id):
        raise BadRequest("a TEAM key requires a team and must not have a user", "invalid_key_ownership")
    if key_type == "USER" and (not user_id or team_id):
        raise BadRequest("a USER key requires a user and must not have a team", "invalid_key_ownership")


ORG_FIELDS = ("name", "timezone", "policies")
TEAM_FIELDS = ("organisation", "name", "policies")
USER_FIELDS = ("organisation", "email", "name")
PROVIDER_FIELDS = ("organisation", "name", "type", "base_url", "api_key", "timeout_ms", "enabled", "config")
MODEL_FIELDS = (
    "organisation", "name", "provider", "slug", "type", "capabilities", "pricing", "policies", "config",
)
KEY_FIELDS = ("organisation", "name", "type", "team", "user", "expires_at", "timezone", "policies", "secret", "models")
KEY_UPDATE_FIELDS = ("name", "type", "team", "user", "expires_at", "timezone", "policies", "revoked")


class CatalogueService:
    """Create, read, update and delete the catalogue; keys, grants and usage reports."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    # ------------------------------------------------------------------------------------ resolution

    async def _row(self, conn: AsyncConnection, query: sa.Select[Any]) -> RowLike | None:
        row: RowLike | None = (await conn.execute(query)).mappings().first()
        return row

    async def _org_row(self, conn: AsyncConnection, ref: Any) -> RowLike:
        ref = _text(ref, "organisation")
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
        ref = _text(ref, what, max_len=320)
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
        return (await conn.execute(sa.select(sa.literal(1)).select_from(table).where(*where))).first() is not None

    async def _delete(self, conn: AsyncConnection, table: sa.Table, row_id: str, what: str) -> None:
        await conn.execute(table.delete().where(table.c.id == row_id))

    # ---------------------------------------------------------------------------------- organisations

    async def create_organisation(self, data: Mapping[str, Any]) -> Organisation:
        """Create an organisation (`name`, optional `timezone`, `policies`)."""
        _fields(data, ORG_FIELDS, "organisation")
        values = {
            "id": _new_id("org"),
            "name": _text(_required(data, "name", "organisation"), "name"),
            "timezone": _timezone(data.get("timezone") or "UTC"),
            "policies": _policies(data.get("policies")),
        }
        t = schema.organisations
        async with self.store.mutate() as conn:
            if await self._exists(conn, t, t.c.name == values["name"]):
                raise conflict(f"organisation {values['name']!r} already exists")
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
        _fields(changes, ORG_FIELDS, "organisation")
        values: dict[str, Any] = {}
        if "name" in changes:
            values["name"] = _text(changes["name"], "name")
        if "timezone" in changes:
            values["timezone"] = _timezone(changes["timezone"])
        if "policies" in changes:
            values["policies"] = _policies(changes["policies"])
        t = schema.organisations
        async with self.store.mutate() as conn:
            row = await self._org_row(conn, ref)
            if "name" in values and await self._exists(conn, t, t.c.name == values["name"], t.c.id != row["id"]):
                raise conflict(f"organisation {values['name']!r} already exists")
            if values:
                await conn.execute(t.update().where(t.c.id == row["id"]).values(**values))
            row = await self._org_row(conn, row["id"])
        return self.store.organisation_from_row(row)

    async def delete_organisation(self, ref: str) -> None:
        """Delete an organisation and everything in it (teams, users, keys, providers, models, grants)."""
        async with self.store.mutate() as conn:
            row = await self._org_row(conn, ref)
            # models reference providers without ON DELETE: remove them first so the cascade cannot trip
            await conn.execute(schema.models.delete().where(schema.models.c.organisation_id == row["id"]))
            await conn.execute(schema.api_keys.delete().where(schema.api_keys.c.organisation_id == row["id"]))
            await self._delete(conn, schema.organisations, row["id"], "organisation")

    # ------------------------------------------------------------------------------------------ teams

    async def create_team(self, data: Mapping[str, Any]) -> Team:
        """Create a team (`organisation`, `name`, optional `policies`)."""
        _fields(data, TEAM_FIELDS, "team")
        name = _text(_required(data, "name", "team"), "name")
        policies = _policies(data.get("policies"))
        t = schema.teams
        async with self.store.mutate() as conn:
            org = await self._org_row(conn, _required(data, "organisation", "team"))
            if await self._exists(conn, t, t.c.organisation_id == org["id"], t.c.name == name):
                raise conflict(f"team {name!r} already exists in organisation {org['name']!r}")
            team_id = _new_id("team")
            await conn.execute(t.insert().values(id=team_id, organisation_id=org["id"], name=name, policies=policies))
            row = await self._scoped_row(conn, t, "team", team_id, None)
        return self.store.team_from_row(row)

    async def list_teams(self, organisation: str | None = None) -> list[Team]:
        """Return the teams, of one organisation or all."""
        t = schema.teams
        async with self.store.read() as conn:
            query = sa.select(t).order_by(t.c.organisation_id, t.c.name)
            if organisation is not None:
                query = query.where(t.c.organisation_id == (await self._org_row(conn, organisation))["id"])
            rows = (await conn.execute(query)).mappings().all()
        return [self.store.team_from_row(row) for row in rows]

    async def get_team(self, ref: str, organisation: str | None = None) -> Team:
        """Return the team with this id (or name within `organisation`)."""
        async with self.store.read() as conn:
            return self.store.team_from_row(await self._scoped_row(conn, schema.teams, "team", ref, organisation))

    async def update_team(self, ref: str, changes: Mapping[str, Any], organisation: str | None = None) -> Team:
        """Change a team's name or policies."""
        _fields(changes, ("name", "policies"), "team")
        values: dict[str, Any] = {}
        if "name" in changes:
            values["name"] = _text(changes["name"], "name")
        if "policies" in changes:
            values["policies"] = _policies(changes["policies"])
        t = schema.teams
        async with self.store.mutate() as conn:
            row = await self._scoped_row(conn, t, "team", ref, organisation)
            if "name" in values and await self._exists(
                conn, t, t.c.organisation_id == row["organisation_id"], t.c.name == values["name"], t.c.id != row["id"]
            ):
                raise conflict(f"team {values['name']!r} already exists")
            if values:
                await conn.execute(t.update().where(t.c.id == row["id"]).values(**values))
            row = await self._scoped_row(conn, t, "team", row["id"], None)
        return self.store.team_from_row(row)

    async def delete_team(self, ref: str, organisation: str | None = None) -> None:
        """Delete a team (refused with 409 while keys belong to it)."""
        async with self.store.mutate() as conn:
            row = await self._scoped_row(conn, schema.teams, "team", ref, organisation)
            if await self._exists(conn, schema.api_keys, schema.api_keys.c.team_id == row["id"]):
                raise conflict(f"team {row['name']!r} still owns API keys; delete or reassign them first")
            await self._delete(conn, schema.teams, row["id"], "team")

    # ------------------------------------------------------------------------------------------ users

    async def create_user(self, data: Mapping[str, Any]) -> User:
        """Create a user (`organisation`, `email`, optional `name`)."""
        _fields(data, USER_FIELDS, "user")
        email = _text(_required(data, "email", "user"), "email", max_len=320)
        if "@" not in email:
            raise BadRequest("email must be an e-mail address")
        name = "" if data.get("name") is None else _text(data["name"], "name")
        t = schema.users
        async with self.store.mutate() as conn:
            org = await self._org_row(conn, _required(data, "organisation", "user"))
            if await self._exists(conn, t, t.c.organisation_id == org["id"], t.c.email == email):
                raise conflict(f"user {email!r} already exists in organisation {org['name']!r}")
            user_id = _new_id("user")
            await conn.execute(t.insert().values(id=user_id, organisation_id=org["id"], email=email, name=name))
            row = await self._scoped_row(conn, t, "user", user_id, None)
        return self.store.user_from_row(row)

    async def list_users(self, organisation: str | None = None) -> list[User]:
        """Return the users, of one organisation or all."""
        t = schema.users
        async with self.store.read() as conn:
            query = sa.select(t).order_by(t.c.organisation_id, t.c.email)
            if organisation is not None:
                query = query.where(t.c.organisation_id == (await self._org_row(conn, organisation))["id"])
            rows = (await conn.execute(query)).mappings().all()
        return [self.store.user_from_row(row) for row in rows]

    async def get_user(self, ref: str, organisation: str | None = None) -> User:
        """Return the user with this id (or e-mail within `organisation`)."""
        async with self.store.read() as conn:
            row = await self._scoped_row(conn, schema.users, "user", ref, organisation, "email")
        return self.store.user_from_row(row)

    async def update_user(self, ref: str, changes: Mapping[str, Any], organisation: str | None = None) -> User:
        """Change a user's e-mail or display name."""
        _fields(changes, ("email", "name"), "user")
        values: dict[str, Any] = {}
        if "email" in changes:
            values["email"] = _text(changes["email"], "email", max_len=320)
        if "name" in changes:
            values["name"] = "" if changes["name"] is None else _text(changes["name"], "name")
        t = schema.users
        async with self.store.mutate() as conn:
            row = await self._scoped_row(conn, t, "user", ref, organisation, "email")
            if "email" in values and await self._exists(
                conn, t, t.c.organisation_id == row["organisation_id"], t.c.email == values["email"], t.c.id != row["id"]
            ):
                raise conflict(f"user {values['email']!r} already exists")
            if values:
                await conn.execute(t.update().where(t.c.id == row["id"]).values(**values))
            row = await self._scoped_row(conn, t, "user", row["id"], None)
        return self.store.user_from_row(row)

    async def delete_user(self, ref: str, organisation: str | None = None) -> None:
        """Delete a user (refused with 409 while keys belong to them)."""
        async with self.store.mutate() as conn:
            row = await self._scoped_row(conn, schema.users, "user", ref, organisation, "email")
            if await self._exists(conn, schema.api_keys, schema.api_keys.c.user_id == row["id"]):
                raise conflict(f"user {row['email']!r} still owns API keys; delete or reassign them first")
            await self._delete(conn, schema.users, row["id"], "user")

    # -------------------------------------------------------------------------------------- providers

    def _credential(self, value: Any) -> tuple[str | None, str | None]:
        if value is None or value == "":
            return None, None
        secret = _text(value, "api_key", max_len=8000)
        return self.store.box.encrypt(secret), mask_secret(secret)

    async def create_provider(self, data: Mapping[str, Any]) -> ProviderInfo:
        """Create a provider (`organisation`, `name`, `type`, `base_url`, optional `api_key`, `timeout_ms`, …)."""
        _fields(data, PROVIDER_FIELDS, "provider")
        encrypted, preview = self._credential(data.get("api_key"))
        values: dict[str, Any] = {
            "id": _new_id("prov"),
            "name": _text(_required(data, "name", "provider"), "name"),
            "type": _choice(_required(data, "type", "provider"), "type", PROVIDER_TYPES),
            "base_url": _base_url(_required(data, "base_url", "provider")),
            "api_key_encrypted": encrypted,
            "api_key_preview": preview,
            "timeout_ms": _positive_int(data.get("timeout_ms"), "timeout_ms"),
            "enabled": _bool(data.get("enabled", True), "enabled"),
            "config": _provider_config(data.get("config")),
        }
        t = schema.providers
        async with self.store.mutate() as conn:
            org = await self._org_row(conn, _required(data, "organisation", "provider"))
            if await self._exists(conn, t, t.c.organisation_id == org["id"], t.c.name == values["name"]):
                raise conflict(f"provider {values['name']!r} already exists in organisation {org['name']!r}")
            await conn.execute(t.insert().values(organisation_id=org["id"], **values))
            row = await self._scoped_row(conn, t, "provider", values["id"], None)
        return self._provider_info(row)

    async def list_providers(self, organisation: str | None = None) -> list[ProviderInfo]:
        """Return the providers, of one organisation or all."""
        t = schema.providers
        async with self.store.read() as conn:
            query = sa.select(t).order_by(t.c.organisation_id, t.c.name)
            if organisation is not None:
                query = query.where(t.c.organisation_id == (await self._org_row(conn, organisation))["id"])
            rows = (await conn.execute(query)).mappings().all()
        return [self._provider_info(row) for row in rows]

    async def get_provider(self, ref: str, organisation: str | None = None) -> ProviderInfo:
        """Return the provider with this id (or name within `organisation`)."""
        async with self.store.read() as conn:
            return self._provider_info(await self._scoped_row(conn, schema.providers, "provider", ref, organisation))

    async def provider_api_key(self, ref: str, organisation: str | None = None) -> str | None:
        """Return a provider's clear credential (for `odock apply` comparisons; never for display)."""
        async with self.store.read() as conn:
            row = await self._scoped_row(conn, schema.providers, "provider", ref, organisation)
        return self.store.provider_from_row(row).api_key

    async def update_provider(
        self, ref: str, changes: Mapping[str, Any], organisation: str | None = None
    ) -> ProviderInfo:
        """Change a provider; `api_key: null` removes the credential."""
        _fields(changes, tuple(f for f in PROVIDER_FIELDS if f != "organisation"), "provider")
        values: dict[str, Any] = {}
        if "name" in changes:
            values["name"] = _text(changes["name"], "name")
        if "type" in changes:
            values["type"] = _choice(changes["type"], "type", PROVIDER_TYPES)
        if "base_url" in changes:
            values["base_url"] = _base_url(changes["base_url"])
        if "api_key" in changes:
            values["api_key_encrypted"], values["api_key_preview"] = self._credential(changes["api_key"])
        if "timeout_ms" in changes:
            values["timeout_ms"] = _positive_int(changes["timeout_ms"], "timeout_ms")
        if "enabled" in changes:
            values["enabled"] = _bool(changes["enabled"], "enabled")
        if "config" in changes:
            values["config"] = _provider_config(changes["config"])
        t = schema.providers
        async with self.store.mutate() as conn:
            row = await self._scoped_row(conn, t, "provider", ref, organisation)
            if "name" in values and await self._exists(
                conn, t, t.c.organisation_id == row["organisation_id"], t.c.name == values["name"], t.c.id != row["id"]
            ):
                raise conflict(f"provider {values['name']!r} already exists")
            if values:
                await conn.execute(t.update().where(t.c.id == row["id"]).values(**values))
            row = await self._scoped_row(conn, t, "provider", row["id"], None)
        return self._provider_info(row)

    async def delete_provider(self, ref: str, organisation: str | None = None) -> None:
        """Delete a provider (refused with 409 while models use it)."""
        async with self.store.mutate() as conn:
            row = await self._scoped_row(conn, schema.providers, "provider", ref, organisation)
            if await self._exists(conn, schema.models, schema.models.c.provider_id == row["id"]):
                raise conflict(f"provider {row['name']!r} is still used by models; delete or move them first")
            await self._delete(conn, schema.providers, row["id"], "provider")

    # ----------------------------------------------------------------------------------------- models

    async def create_model(self, data: Mapping[str, Any]) -> ModelRecord:
        """Create a model (`organisation`, `name`, `provider`, `slug`, optional `type`, `capabilities`, …)."""
        _fields(data, MODEL_FIELDS, "model")
        values: dict[str, Any] = {
            "id": _new_id("model"),
            "name": _text(_required(data, "name", "model"), "name"),
            "slug": _text(_required(data, "slug", "model"), "slug", max_len=300),
            "type": _choice(data.get("type") or "chat", "type", MODEL_TYPES),
            "capabilities": _capabilities(data.get("capabilities")),
            "pricing": _pricing(data.get("pricing")),
            "policies": _policies(data.get("policies")),
            "config": _object(data.get("config"), "config"),
        }
        t = schema.models
        async with self.store.mutate() as conn:
            org = await self._org_row(conn, _required(data, "organisation", "model"))
            provider = await self._scoped_row(
                conn, schema.providers, "provider", _required(data, "provider", "model"), org["id"]
            )
            if await self._exists(conn, t, t.c.organisation_id == org["id"], t.c.name == values["name"]):
                raise conflict(f"model {values['name']!r} already exists in organisation {org['name']!r}")
            await conn.execute(t.insert().values(organisation_id=org["id"], provider_id=provider["id"], **values))
            row = await self._scoped_row(conn, t, "model", values["id"], None)
        return self.store.model_from_row(row)

    async def list_models(self, organisation: str | None = None) -> list[ModelRecord]:
        """Return the models, of one organisation or all."""
        t = schema.models
        async with self.store.read() as conn:
            query = sa.select(t).order_by(t.c.organisation_id, t.c.name)
            if organisation is not None:
                query = query.where(t.c.organisation_id == (await self._org_row(conn, organisation))["id"])
            rows = (await conn.execute(query)).mappings().all()
        return [self.store.model_from_row(row) for row in rows]

    async def get_model(self, ref: str, organisation: str | None = None) -> ModelRecord:
        """Return the model with this id (or name within `organisation`)."""
        async with self.store.read() as conn:
            return self.store.model_from_row(await self._scoped_row(conn, schema.models, "model", ref, organisation))

    async def update_model(self, ref: str, changes: Mapping[str, Any], organisation: str | None = None) -> ModelRecord:
        """Change a model; `provider` is resolved within the model's organisation."""
        _fields(changes, tuple(f for f in MODEL_FIELDS if f != "organisation"), "model")
        values: dict[str, Any] = {}
        if "name" in changes:
            values["name"] = _text(changes["name"], "name")
        if "slug" in changes:
            values["slug"] = _text(changes["slug"], "slug", max_len=300)
        if "type" in changes:
            values["type"] = _choice(changes["type"], "type", MODEL_TYPES)
        if "capabilities" in changes:
            values["capabilities"] = _capabilities(changes["capabilities"])
        if "pricing" in changes:
            values["pricing"] = _pricing(changes["pricing"])
        if "policies" in changes:
            values["policies"] = _policies(changes["policies"])
        if "config" in changes:
            values["config"] = _object(changes["config"], "config")
        t = schema.models
        async with self.store.mutate() as conn:
            row = await self._scoped_row(conn, t, "model", ref, organisation)
            if "provider" in changes:
                provider = await self._scoped_row(
                    conn, schema.providers, "provider", changes["provider"], row["organisation_id"]
                )
                values["provider_id"] = provider["id"]
            if "name" in values and await self._exists(
                conn, t, t.c.organisation_id == row["organisation_id"], t.c.name == values["name"], t.c.id != row["id"]
            ):
                raise conflict(f"model {values['name']!r} already exists")
            if values:
                await conn.execute(t.update().where(t.c.id == row["id"]).values(**values))
            row = await self._scoped_row(conn, t, "model", row["id"], None)
        return self.store.model_from_row(row)

    async def delete_model(self, ref: str, organisation: str | None = None) -> None:
        """Delete a model and its grants."""
        async with self.store.mutate() as conn:
            row = await self._scoped_row(conn, schema.models, "model", ref, organisation)
            await self._delete(conn, schema.models, row["id"], "model")

    # ------------------------------------------------------------------------------------------- keys

    async def _owners(
        self, conn: AsyncConnection, org_id: str, key_type: str, team: Any, user: Any
    ) -> tuple[str | None, str | None]:
        team_id = user_id = None
        if team is not None and team != "":
            team_id = (await self._scoped_row(conn, schema.teams, "team", team, org_id))["id"]
        if user is not None and user != "":
            user_id = (await self._scoped_row(conn, schema.users, "user", user, org_id, "email"))["id"]
        _ownership(key_type, team_id, user_id)
        return team_id, user_id

    def _secret(self, value: Any) -> str:
        if value is None or value == "":
            return generate_secret()
        if not isinstance(value, str) or len(value) < _MIN_SECRET_LENGTH or value != value.strip() \
                or "\x00" in value:
            raise BadRequest(f"secret must be a string of at least {_MIN_SECRET_LENGTH} characters, no spaces "
                             "or NUL characters")
        return value

    async def create_key(self, data: Mapping[str, Any]) -> CreatedKey:
        """Create an API key; the returned secret is shown once (only its SHA-256 is stored)."""
        _fields(data, KEY_FIELDS, "key")
        name = _text(_required(data, "name", "key"), "name")
        key_type = _choice(data.get("type") or "ORGANISATION", "type", KEY_TYPES)
        expires_at = _future(data.get("expires_at"))
        policies = _policies(data.get("policies"))
        secret = self._secret(data.get("secret"))
        models = data.get("models")
        if models is not None and not isinstance(models, list):
            raise BadRequest("models must be a list of model names or ids")
        t = schema.api_keys
        async with self.store.mutate() as conn:
            org = await self._org_row(conn, _required(data, "organisation", "key"))
            timezone = _timezone(data.get("timezone") or org["timezone"])
            team_id, user_id = await self._owners(conn, org["id"], key_type, data.get("team"), data.get("user"))
            if await self._exists(conn, t, t.c.organisation_id == org["id"], t.c.name == name):
                raise conflict(f"key {name!r} already exists in organisation {org['name']!r}")
            if await self._exists(conn, t, t.c.key_hash == hash_secret(secret)):
                raise conflict("another key already uses this secret")
            key_id = _new_id("key")
            await conn.execute(
                t.insert().values(
                    id=key_id,
                    name=name,
                    key_hash=hash_secret(secret),
                    key_preview=key_preview(secret),
                    type=key_type,
                    organisation_id=org["id"],
                    team_id=team_id,
                    user_id=user_id,
                    expires_at=expires_at,
                    revoked=False,
                    revealed=False,
                    timezone=timezone,
                    policies=policies,
                    rotation_count=0,
                )
            )
            for model_ref in models or []:
                model = await self._scoped_row(conn, schema.models, "model", model_ref, org["id"])
                await conn.execute(schema.key_model_grants.insert().values(api_key_id=key_id, model_id=model["id"]))
            row = await self._scoped_row(conn, t, "key", key_id, None)
        return CreatedKey(key=self._key_info(row), secret=secret)

    async def list_keys(self, organisation: str | None = None) -> list[KeyInfo]:
        """Return the keys (masked), of one organisation or all."""
        t = schema.api_keys
        async with self.store.read() as conn:
            query = sa.select(t).order_by(t.c.organisation_id, t.c.name)
            if organisation is not None:
                query = query.where(t.c.organisation_id == (await self._org_row(conn, organisation))["id"])
            rows = (await conn.execute(query)).mappings().all()
        return [self._key_info(row) for row in rows]

    async def get_key(self, ref: str, organisation: str | None = None) -> KeyInfo:
        """Return the key with this id (or name within `organisation`)."""
        async with self.store.read() as conn:
            return self._key_info(await self._scoped_row(conn, schema.api_keys, "key", ref, organisation))

    async def key_matches_secret(self, ref: str, secret: str, organisation: str | None = None) -> bool:
        """Tell whether the key's stored hash is the hash of `secret`."""
        async with self.store.read() as conn:
            row = await self._scoped_row(conn, schema.api_keys, "key", ref, organisation)
        return secrets.compare_digest(row["key_hash"], hash_secret(secret))

    async def update_key(self, ref: str, changes: Mapping[str, Any], organisation: str | None = None) -> KeyInfo:
        """Change a key's name, ownership, expiry, timezone, policies or revoked flag (not its secret)."""
        _fields(changes, KEY_UPDATE_FIELDS, "key")
        t = schema.api_keys
        async with self.store.mutate() as conn:
            row = await self._scoped_row(conn, t, "key", ref, organisation)
            values: dict[str, Any] = {}
            if "name" in changes:
                values["name"] = _text(changes["name"], "name")
                if await self._exists(
                    conn, t, t.c.organisation_id == row["organisation_id"], t.c.name == values["name"],
                    t.c.id != row["id"],
                ):
                    raise conflict(f"key {values['name']!r} already exists")
            if {"type", "team", "user"} & set(changes):
                key_type = _choice(changes.get("type", row["type"]), "type", KEY_TYPES)
                team = changes["team"] if "team" in changes else row["team_id"]
                user = changes["user"] if "user" in changes else row["user_id"]
                values["type"] = key_type
                values["team_id"], values["user_id"] = await self._owners(
                    conn, row["organisation_id"], key_type, team, user
                )
            if "expires_at" in changes:
                values["expires_at"] = _future(changes["expires_at"])
            if "timezone" in changes:
                values["timezone"] = _timezone(changes["timezone"])
            if "policies" in changes:
                values["policies"] = _policies(changes["policies"])
            if "revoked" in changes:
                values["revoked"] = _bool(changes["revoked"], "revoked")
            if values:
                await conn.execute(t.update().where(t.c.id == row["id"]).values(**values))
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
        new_expiry = _future(expires_at)
        new_secret = self._secret(secret)
        t = schema.api_keys
        async with self.store.mutate() as conn:
            row = await self._scoped_row(conn, t, "key", ref, organisation)
            if await self._exists(conn, t, t.c.key_hash == hash_secret(new_secret)):
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
                    key_hash=hash_secret(new_secret),
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
                await conn.execute(sa.select(r).where(r.c.api_key_id == row["id"]).order_by(r.c.rotated_at, r.c.id))
            ).mappings().all()
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
            await self._delete(conn, schema.api_keys, row["id"], "key")

    # ----------------------------------------------------------------------------------------- grants

    async def _grant_model(self, conn: AsyncConnection, key: RowLike, model_ref: Any) -> RowLike:
        model_ref = _text(model_ref, "model")
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
        query = sa.select(m).join(g, g.c.model_id == m.c.id).where(g.c.api_key_id == key_id).order_by(m.c.name)
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
            row = await self._scoped_row(conn, schema.api_keys, "key", key, organisation)
            target = await self._grant_model(conn, row, model)
            if not await self._exists(conn, g, g.c.api_key_id == row["id"], g.c.model_id == target["id"]):
                await conn.execute(g.insert().values(api_key_id=row["id"], model_id=target["id"]))
            granted = await self._granted(conn, row["id"])
        return [self.store.model_from_row(item) for item in granted]

    async def remove_grant(self, key: str, model: str, organisation: str | None = None) -> list[ModelRecord]:
        """Withdraw the key's access to a model (404 when it had none)."""
        g = schema.key_model_grants
        async with self.store.mutate() as conn:
            row = await self._scoped_row(conn, schema.api_keys, "key", key, organisation)
            target = await self._grant_model(conn, row, model)
            result = await conn.execute(
                g.delete().where(g.c.api_key_id == row["id"], g.c.model_id == target["id"])
            )
            if not result.rowcount:
                raise NotFound(f"key {row['name']!r} has no grant for model {target['name']!r}")
            granted = await self._granted(conn, row["id"])
        return [self.store.model_from_row(item) for item in granted]

    async def set_grants(self, key: str, models: Sequence[str], organisation: str | None = None) -> bool:
        """Make the key's grants exactly `models`; return whether anything changed."""
        g = schema.key_model_grants
        async with self.store.read() as conn:
            row = await self._scoped_row(conn, schema.api_keys, "key", key, organisation)
            wanted = {(await self._grant_model(conn, row, ref))["id"] for ref in models}
            current = {item["id"] for item in await self._granted(conn, row["id"])}
        if wanted == current:
            return False
        async with self.store.mutate() as conn:
            stale = current - wanted
            if stale:
                await conn.execute(g.delete().where(g.c.api_key_id == row["id"], g.c.model_id.in_(stale)))
            for model_id in sorted(wanted - current):
                await conn.execute(g.insert().values(api_key_id=row["id"], model_id=model_id))
        return True

    # ------------------------------------------------------------------------------------------ usage

    async def usage_summary(
        self,
        group_by: str = "model",
        *,
        since: Any = None,
        until: Any = None,
        organisation: str | None = None,
    ) -> list[UsageSummaryRow]:
        """Sum requests, tokens and cost over [since, until), grouped by organisation/team/user/key/model/provider/day."""
        group_by = _choice(group_by, "group_by", GROUP_BY)
        start = parse_datetime(since, "since")
        end = parse_datetime(until, "until")
        u = schema.usage_records
        column: Any
        if group_by == "day":
            if self.store.dialect == "postgresql":
                column = sa.func.to_char(sa.func.timezone("UTC", u.c.created_at), "YYYY-MM-DD")
            else:
                column = sa.func.strftime("%Y-%m-%d", u.c.created_at)
        else:
            column = {
                "organisation": u.c.organisation_id,
                "team": u.c.team_id,
                "user": u.c.user_id,
                "key": u.c.api_key_id,
                "model": u.c.model,
                "provider": u.c.provider,
            }[group_by]
        group = column.label("group")
        query = sa.select(
            group,
            sa.func.count().label("requests"),
            sa.func.coalesce(sa.func.sum(u.c.input_tokens), 0).label("input_tokens"),
            sa.func.coalesce(sa.func.sum(u.c.output_tokens), 0).label("output_tokens"),
            sa.func.coalesce(sa.func.sum(u.c.cached_input_tokens), 0).label("cached_input_tokens"),
            sa.func.coalesce(sa.func.sum(u.c.reasoning_tokens), 0).label("reasoning_tokens"),
            sa.func.coalesce(sa.func.sum(u.c.cost_nanos), 0).label("cost_nanos"),
        ).group_by(column).order_by(column)
        async with self.store.read() as conn:
            if organisation is not None:
                query = query.where(u.c.organisation_id == (await self._org_row(conn, organisation))["id"])
            if start is not None:
                query = query.where(u.c.created_at >= start)
            if end is not None:
                query = query.where(u.c.created_at < end)
            rows = (await conn.execute(query)).mappings().all()
        return [
            UsageSummaryRow(
                group=None if row["group"] is None else str(row["group"]),
                requests=int(row["requests"]),
                input_tokens=int(row["input_tokens"]),
                output_tokens=int(row["output_tokens"]),
                cached_input_tokens=int(row["cached_input_tokens"]),
                reasoning_tokens=int(row["reasoning_tokens"]),
                cost_nanos=int(row["cost_nanos"]),
            )
            for row in rows
        ]


__all__ = [
    "CatalogueService",
    "CreatedKey",
    "KeyInfo",
    "KeyRotation",
    "ProviderInfo",
    "UsageSummaryRow",
    "generate_secret",
    "hash_secret",
    "key_preview",
    "parse_datetime",
    "to_json",
]
