"""Store fixtures for these tests: the data tests run on SQLite and on PostgreSQL."""

from tests.sql_fixtures import db, service, store  # noqa: F401
