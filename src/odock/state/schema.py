"""The catalogue and ledger schema (SQLAlchemy Core), shared by SQLite and PostgreSQL.

One `metadata` object: other modules add their tables to it (with their own Alembic revision after
`0001_catalogue`). The Alembic revisions in `odock.state.migrations` are the source of truth for the database;
these tables are what the code queries, and a test checks that the two agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

# explicit constraint names so migrations (and SQLite batch mode) can refer to them
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# JSONB on PostgreSQL (indexable, compact), plain JSON text elsewhere
JsonType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, whatever the backend stores."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        # SQLite has no timezone type: store the UTC wall clock so text ordering stays chronological
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


def _created() -> Column[Any]:
    return Column("created_at", UTCDateTime(), nullable=False, default=utcnow)


def _updated() -> Column[Any]:
    return Column("updated_at", UTCDateTime(), nullable=False, default=utcnow, onupdate=utcnow)


ID = String(40)

organisations = Table(
    "organisations",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("timezone", String(64), nullable=False, default="UTC"),
    Column("policies", JsonType, nullable=False, default=dict),
    _created(),
    _updated(),
)

teams = Table(
    "teams",
    metadata,
    Column("id", ID, primary_key=True),
    Column("organisation_id", ID, ForeignKey("organisations.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("policies", JsonType, nullable=False, default=dict),
    _created(),
    _updated(),
    UniqueConstraint("organisation_id", "name"),
)

users = Table(
    "users",
    metadata,
    Column("id", ID, primary_key=True),
    Column("organisation_id", ID, ForeignKey("organisations.id", ondelete="CASCADE"), nullable=False),
    Column("email", String(320), nullable=False),
    Column("name", String(200), nullable=False, default=""),
    _created(),
    _updated(),
    UniqueConstraint("organisation_id", "email"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", String(200), nullable=False),
    # SHA-256 hex of the secret; the secret itself is never stored
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("key_preview", String(64), nullable=False),
    Column("type", String(16), nullable=False),
    Column("organisation_id", ID, ForeignKey("organisations.id", ondelete="CASCADE"), nullable=False),
    # no ON DELETE: a team or user that still owns keys cannot be deleted (409), but an organisation can
    Column("team_id", ID, ForeignKey("teams.id"), nullable=True),
    Column("user_id", ID, ForeignKey("users.id"), nullable=True),
    Column("expires_at", UTCDateTime(), nullable=True),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("revealed", Boolean, nullable=False, default=False),
    Column("timezone", String(64), nullable=False, default="UTC"),
    Column("policies", JsonType, nullable=False, default=dict),
    Column("rotation_count", Integer, nullable=False, default=0),
    _created(),
    _updated(),
    UniqueConstraint("organisation_id", "name"),
)

key_rotations = Table(
    "key_rotations",
    metadata,
    Column("id", ID, primary_key=True),
    Column("api_key_id", ID, ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("rotated_at", UTCDateTime(), nullable=False, default=utcnow),
    Column("previous_preview", String(64), nullable=False),
    Column("previous_expires_at", UTCDateTime(), nullable=True),
    Column("new_expires_at", UTCDateTime(), nullable=True),
    Column("rotated_by", String(200), nullable=True),
)

providers = Table(
    "providers",
    metadata,
    Column("id", ID, primary_key=True),
    Column("organisation_id", ID, ForeignKey("organisations.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("type", String(32), nullable=False),
    Column("base_url", String(2000), nullable=False),
    # AES-256-GCM envelope (odock.state.crypto); never the clear credential
    Column("api_key_encrypted", Text, nullable=True),
    Column("api_key_preview", String(32), nullable=True),
    Column("timeout_ms", Integer, nullable=True),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("config", JsonType, nullable=False, default=dict),
    _created(),
    _updated(),
    UniqueConstraint("organisation_id", "name"),
)

models = Table(
    "models",
    metadata,
    Column("id", ID, primary_key=True),
    Column("organisation_id", ID, ForeignKey("organisations.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("slug", String(300), nullable=False),
    # no ON DELETE: a provider still used by models cannot be deleted (409)
    Column("provider_id", ID, ForeignKey("providers.id"), nullable=False, index=True),
    Column("type", String(32), nullable=False, default="chat"),
    Column("capabilities", JsonType, nullable=False, default=list),
    Column("pricing", JsonType, nullable=False, default=dict),
    Column("policies", JsonType, nullable=False, default=dict),
    Column("config", JsonType, nullable=False, default=dict),
    _created(),
    _updated(),
    UniqueConstraint("organisation_id", "name"),
)

key_model_grants = Table(
    "key_model_grants",
    metadata,
    Column("api_key_id", ID, ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True),
    Column("model_id", ID, ForeignKey("models.id", ondelete="CASCADE"), primary_key=True, index=True),
    _created(),
)

# one row (id=1); bumped in the same transaction as every catalogue mutation, polled by other processes
catalogue_version = Table(
    "catalogue_version",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", BigInteger, nullable=False, default=0),
)

# the ledger: no foreign keys, so rows survive the deletion of what they describe
usage_records = Table(
    "usage_records",
    metadata,
    # ids of rows written before migration 0004 are their request ids, hence the width
    Column("id", String(128), primary_key=True),
    Column("request_id", String(128), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("organisation_id", ID, nullable=False),
    Column("team_id", ID, nullable=True),
    Column("user_id", ID, nullable=True),
    Column("api_key_id", ID, nullable=False),
    Column("route", String(200), nullable=False),
    Column("status", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("model", String(200), nullable=True),
    Column("model_slug", String(300), nullable=True),
    Column("provider", String(64), nullable=True),
    Column("stream", Boolean, nullable=False, default=False),
    Column("input_tokens", BigInteger, nullable=False, default=0),
    Column("output_tokens", BigInteger, nullable=False, default=0),
    Column("cached_input_tokens", BigInteger, nullable=False, default=0),
    Column("cache_write_tokens", BigInteger, nullable=False, default=0),
    Column("reasoning_tokens", BigInteger, nullable=False, default=0),
    Column("usage_estimated", Boolean, nullable=False, default=False),
    Column("latency_ms", Integer, nullable=False, default=0),
    Column("provider_request_id", String(300), nullable=True),
    Column("error_code", String(100), nullable=True),
    Column("cost_nanos", BigInteger, nullable=True),
    Column("pricing", JsonType, nullable=True),
    Column("raw_usage", JsonType, nullable=True),
    Column("routing", JsonType, nullable=True),
    Column("metadata", JsonType, nullable=True),
    Index("ix_usage_records_created_at", "created_at"),
    Index("ix_usage_records_organisation_id_created_at", "organisation_id", "created_at"),
    Index("ix_usage_records_api_key_id_created_at", "api_key_id", "created_at"),
    Index(
        "ix_usage_records_failed_created_at",
        "created_at",
        sqlite_where=text("outcome <> 'success'"),
        postgresql_where=text("outcome <> 'success'"),
    ),
)


def _rollup_sums(*, histogram: bool) -> list[Column[Any]]:
    from odock.state.rollups import HISTOGRAMS, SUMS

    names = SUMS + HISTOGRAMS if histogram else SUMS
    return [Column(name, BigInteger, nullable=False, default=0) for name in names]


# rollups of usage_records kept by the usage writer (odock.state.rollups); the console's charts read only these
usage_rollup_hourly = Table(
    "usage_rollup_hourly",
    metadata,
    Column("bucket", String(13), primary_key=True),  # YYYY-MM-DDTHH (UTC)
    Column("organisation_id", ID, primary_key=True),
    *_rollup_sums(histogram=True),
)

usage_rollup_daily = Table(
    "usage_rollup_daily",
    metadata,
    # one of odock.state.rollups.DIMENSIONS, and the organisation, team, user, key id or model name
    Column("dimension", String(16), primary_key=True),
    Column("value", String(200), primary_key=True),
    Column("day", String(10), primary_key=True),  # YYYY-MM-DD (UTC)
    Column("organisation_id", ID, primary_key=True),
    *_rollup_sums(histogram=False),
)

# the MCP side of MCP calls' ledger rows (reference §11.7): one row per usage_records row of an MCP call, same id,
# written by the usage writer in the same transaction; no foreign keys either
mcp_usage_records = Table(
    "mcp_usage_records",
    metadata,
    Column("id", String(128), primary_key=True),  # the usage record's id
    Column("request_id", String(128), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("organisation_id", ID, nullable=False),
    Column("team_id", ID, nullable=True),
    Column("user_id", ID, nullable=True),
    Column("api_key_id", ID, nullable=False),
    Column("mcp_server_id", ID, nullable=True),
    Column("server", String(200), nullable=False),
    Column("transport", String(16), nullable=False),
    Column("method", String(64), nullable=False),
    Column("tool", String(200), nullable=True),
    Column("tool_calls", Integer, nullable=False, default=0),
    Column("endpoint", String(500), nullable=True),
    Column("status", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("error_code", String(100), nullable=True),
    Column("upstream_status", Integer, nullable=True),
    Column("latency_ms", Integer, nullable=False, default=0),
    Column("bytes_in", BigInteger, nullable=False, default=0),
    Column("bytes_out", BigInteger, nullable=False, default=0),
    Column("cost_nanos", BigInteger, nullable=True),
    Column("pricing", JsonType, nullable=True),
    Column("metadata", JsonType, nullable=True),
    # ids are time-ordered (new_usage_id): pages and time ranges walk the primary key or these, and a row costs
    # the writer two index entries besides its key
    Index("ix_mcp_usage_records_organisation_id_id", "organisation_id", "id"),
    Index("ix_mcp_usage_records_mcp_server_id_id", "mcp_server_id", "id"),
)


CATALOGUE_TABLES = (
    "organisations",
    "teams",
    "users",
    "api_keys",
    "key_rotations",
    "providers",
    "models",
    "key_model_grants",
    "catalogue_version",
    "usage_records",
)
