"""The MCP usage records (reference §11.7) as the admin API reads them: filtered, newest first, in keyset pages.

The rows are written by the usage writer with their usage records (`UsageRecord.mcp`, odock.state.sql); this is
the read side only, never on the hot path.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec
import sqlalchemy as sa

from odock.errors import BadRequest, NotFound
from odock.mcp.schema import mcp_servers
from odock.state import schema
from odock.state.sql import SqlStore
from odock.state.validation import parse_datetime

PAGE = 100
MAX_PAGE = 1000
# filters on a column of the row, given as a query parameter of the same name
EXACT_FILTERS = ("method", "tool", "outcome", "transport")


class McpUsageRow(msgspec.Struct, kw_only=True):
    """One MCP call: its server, method, tool, bytes, latency, outcome and cost (`id` is its usage record's)."""

    id: str
    request_id: str
    created_at: datetime
    organisation_id: str
    team_id: str | None
    user_id: str | None
    api_key_id: str
    mcp_server_id: str | None
    server: str
    transport: str
    method: str
    tool: str | None
    tool_calls: int
    endpoint: str | None
    status: int
    outcome: str
    error_code: str | None
    upstream_status: int | None
    latency_ms: int
    bytes_in: int
    bytes_out: int
    cost_nanos: int | None
    pricing: dict[str, Any] | None
    metadata: dict[str, Any] | None


class McpUsagePage(msgspec.Struct, kw_only=True):
    """A page of MCP usage records, newest first; `next` is the cursor of the following page (null at the end)."""

    data: list[McpUsageRow]
    next: str | None


COLUMNS = tuple(McpUsageRow.__struct_fields__)


def _id_at(moment: datetime) -> str:
    """The smallest record id of this instant (ids start with the epoch microseconds in 14 hex digits)."""
    return f"{int(moment.timestamp() * 1_000_000):014x}"


def decode_cursor(cursor: str) -> str:
    """The record id a cursor stands for (400 when it is not one of ours)."""
    if not (16 <= len(cursor) <= 128) or not all(c in "0123456789abcdef" for c in cursor):
        raise BadRequest("invalid cursor: give back the `next` of a previous page")
    return cursor


def _limit(value: str | None) -> int:
    if not value:
        return PAGE
    if not value.isdigit() or not 1 <= int(value) <= MAX_PAGE:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_PAGE}")
    return int(value)


async def mcp_usage_page(store: SqlStore, params: Mapping[str, str]) -> McpUsagePage:
    """A page of MCP usage records, newest first, filtered by `organisation` (id or name), `server` (id or slug),
    `key` (id), `method`, `tool`, `outcome`, `transport`, `since` / `until` (ISO 8601, [since, until)); `before`
    is the cursor of the page to read (the previous page's `next`)."""
    m, servers, orgs = schema.mcp_usage_records, mcp_servers, schema.organisations
    limit = _limit(params.get("limit"))
    where: list[Any] = [m.c[name] == params[name] for name in EXACT_FILTERS if params.get(name)]
    if params.get("key"):
        where.append(m.c.api_key_id == params["key"])
    # ids are time-ordered: a time range and a page are ranges of ids (walking an index, never sorting)
    since, until = parse_datetime(params.get("since"), "since"), parse_datetime(params.get("until"), "until")
    if since is not None:
        where.append(m.c.id >= _id_at(since))
    if until is not None:
        where.append(m.c.id < _id_at(until))
    if params.get("before"):
        where.append(m.c.id < decode_cursor(params["before"]))
    async with store.read() as conn:
        org_id = None
        if params.get("organisation"):
            ref = params["organisation"]
            query = sa.select(orgs.c.id).where(sa.or_(orgs.c.id == ref, orgs.c.name == ref))
            org_id = (await conn.execute(query)).scalar_one_or_none()
            if org_id is None:
                raise NotFound(f"organisation {ref!r} not found")
            where.append(m.c.organisation_id == org_id)
        if params.get("server"):
            ref = params["server"]
            # the slug names today's server; the id also finds the records of a server deleted since
            lookup = sa.select(servers.c.id).where(sa.or_(servers.c.id == ref, servers.c.slug == ref))
            if org_id is not None:
                lookup = lookup.where(servers.c.organisation_id == org_id)
            ids = {ref, *(await conn.execute(lookup)).scalars().all()}
            where.append(m.c.mcp_server_id.in_(sorted(ids)))
        query = (
            sa.select(*[m.c[name] for name in COLUMNS]).where(*where).order_by(m.c.id.desc()).limit(limit + 1)
        )
        rows = (await conn.execute(query)).mappings().all()
    page = [McpUsageRow(**row) for row in rows[:limit]]
    following = page[-1].id if len(rows) > limit else None
    return McpUsagePage(data=page, next=following)
