"""The store seam: what the gateway's hot path and background tasks need from persistent state.

Two implementations share one SQL schema (SQLAlchemy Core + Alembic): SQLite for the embedded default and
PostgreSQL for cluster mode (`odock.state.sql.SqlStore`). Callers never see driver exceptions: a store that
cannot be reached raises `DependencyUnavailable(code="store_unavailable")`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from odock.state.records import (
    ApiKeyRecord,
    ModelRecord,
    Organisation,
    ProviderRecord,
    Team,
    UsageRecord,
)


class Store(Protocol):
    """Reads for the hot path's caches, and the usage ledger writer."""

    async def find_key(self, key_hash: str) -> ApiKeyRecord | None: ...

    async def find_model(self, organisation_id: str, name: str) -> ModelRecord | None: ...

    async def get_model(self, model_id: str) -> ModelRecord | None: ...

    async def get_provider(self, provider_id: str) -> ProviderRecord | None: ...

    async def granted_model_ids(self, api_key_id: str) -> frozenset[str]: ...

    async def get_organisation(self, organisation_id: str) -> Organisation | None: ...

    async def get_team(self, team_id: str) -> Team | None: ...

    async def catalogue_version(self) -> int:
        """Return a number that grows on every catalogue mutation (any process), for cache invalidation."""
        ...

    async def insert_usage(self, records: Sequence[UsageRecord]) -> None:
        """Insert usage rows; a row whose request_id is already stored is skipped (idempotent)."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
