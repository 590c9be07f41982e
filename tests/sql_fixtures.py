"""The catalogue store fixtures shared by the state, admin and commands tests: each test runs on SQLite and on
the real PostgreSQL (a fresh database per test, from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from odock.settings import Settings
from odock.state.crypto import generate_key_text
from odock.state.service import CatalogueService
from odock.state.sql import SqlStore


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Settings]:
    """A database URL and settings, for each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/odock.db", Settings()
    url: str = request.getfixturevalue("postgres_url")
    return url, Settings(secret_key=generate_key_text())


@pytest.fixture()
async def store(db: tuple[str, Settings]) -> AsyncIterator[SqlStore]:
    """An opened, migrated store."""
    opened = await SqlStore.open(db[0], db[1])
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture()
def service(store: SqlStore) -> CatalogueService:
    """The admin service over the store."""
    return CatalogueService(store)
