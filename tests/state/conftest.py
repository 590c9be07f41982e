"""Store fixtures for these tests: every test runs on SQLite and on PostgreSQL."""

from tests.sql_fixtures import db, service, store  # noqa: F401
