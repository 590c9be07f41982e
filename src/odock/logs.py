"""Structured logs on stdout: JSON lines, or human-readable lines on a terminal (`ODOCK_LOG_FORMAT`).

Never given prompts, completions, keys or auth headers: callers pass ids. A record's structured fields come from
`extra={"fields": {...}}` (the per-request line) or from the well-known `extra` names in `_FIELDS`.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import msgspec

_FIELDS = ("request_id", "route", "provider", "model", "organisation_id", "audit")
# database drivers log statements with their parameters (key hashes, catalogue values) and result rows below
# WARNING (aiosqlite's "executing …" at DEBUG, SQLAlchemy's engine at INFO/DEBUG): only their warnings and errors
# pass, whatever the level, and they carry no parameters (engines use hide_parameters)
_DRIVER_LOGGERS = ("aiosqlite", "sqlalchemy", "asyncpg")
_ENCODER = msgspec.json.Encoder()


class DriverDetailFilter(logging.Filter):
    """Drop the database drivers' records below WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(_DRIVER_LOGGERS)


_second: list[Any] = [None, ""]  # the last second formatted (one strftime a second, not one a line)


def _timestamp(record: logging.LogRecord) -> str:
    second = int(record.created)
    if _second[0] != second:
        _second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_second[1]}.{int(record.msecs):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name in _FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            fields[name] = value
    extra = getattr(record, "fields", None)
    if isinstance(extra, dict):
        fields.update(extra)
    return fields


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(out).decode()


def _text_value(value: Any) -> str:
    if isinstance(value, str):
        # quoted when it could be misread (spaces, '=', quotes, control characters: no forged log lines)
        plain = value and value.isprintable() and not any(c in value for c in ' ="')
        return value if plain else _ENCODER.encode(value).decode()
    return _ENCODER.encode(value).decode()


class TextFormatter(logging.Formatter):
    """One readable line: time, level, logger, message, then `name=value` pairs."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), f"{record.levelname.lower():<7}", record.name, record.getMessage()]
        parts += [f"{name}={_text_value(value)}" for name, value in _fields(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def formatter(fmt: str = "auto", stream: Any = None) -> logging.Formatter:
    """The formatter for `fmt`: "json", "text", or "auto" (text on a terminal, JSON otherwise)."""
    if fmt == "auto":
        isatty = getattr(stream or sys.stdout, "isatty", None)
        fmt = "text" if isatty is not None and isatty() else "json"
    return TextFormatter() if fmt == "text" else JSONFormatter()


def configure(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    """Send odock's logs to stdout (or `stream`): JSON lines, or readable lines on a terminal (`fmt`)."""
    stream = stream or sys.stdout
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(fmt, stream))
    handler.addFilter(DriverDetailFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _DRIVER_LOGGERS:
        # also spares the drivers the cost of building those records
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
