"""Structured JSON logs on stdout. Never given prompts, completions, keys or auth headers (callers pass ids)."""

from __future__ import annotations

import logging
import sys
import time

import msgspec

_FIELDS = ("request_id", "route", "provider", "model", "organisation_id", "audit")
# database drivers log statements with their parameters (key hashes, catalogue values) and result rows below
# WARNING (aiosqlite's "executing …" at DEBUG, SQLAlchemy's engine at INFO/DEBUG): only their warnings and errors
# pass, whatever the level, and they carry no parameters (engines use hide_parameters)
_DRIVER_LOGGERS = ("aiosqlite", "sqlalchemy", "asyncpg")


class DriverDetailFilter(logging.Filter):
    """Drop the database drivers' records below WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(_DRIVER_LOGGERS)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return msgspec.json.encode(out).decode()


def configure(level: str = "info") -> None:
    """Send odock's logs to stdout as JSON lines."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JSONFormatter())
    handler.addFilter(DriverDetailFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _DRIVER_LOGGERS:
        # also spares the drivers the cost of building those records
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
