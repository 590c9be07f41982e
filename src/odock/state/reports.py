"""Usage reports over the ledger (`usage_records`): totals grouped by owner, model, provider or day."""

from __future__ import annotations

from typing import Any

import msgspec
import sqlalchemy as sa

from odock.errors import BadRequest
from odock.state import schema
from odock.state.sql import SqlStore
from odock.state.validation import parse_datetime

GROUP_BY = ("organisation", "team", "user", "key", "model", "provider", "day")
# a report may scan much of the ledger: longer than the store's default statement limit
_REPORT_TIMEOUT = "300s"


class UsageSummaryRow(msgspec.Struct, kw_only=True):
    """Totals of one group of usage records."""

    group: str | None
    requests: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    reasoning_tokens: int
    cost_nanos: int


def _group_column(store: SqlStore, group_by: str) -> Any:
    u = schema.usage_records
    if group_by == "day":
        if store.dialect == "postgresql":
            return sa.func.to_char(sa.func.timezone("UTC", u.c.created_at), "YYYY-MM-DD")
        return sa.func.strftime("%Y-%m-%d", u.c.created_at)
    return {
        "organisation": u.c.organisation_id,
        "team": u.c.team_id,
        "user": u.c.user_id,
        "key": u.c.api_key_id,
        "model": u.c.model,
        "provider": u.c.provider,
    }[group_by]


async def usage_summary(
    store: SqlStore,
    group_by: str = "model",
    *,
    since: Any = None,
    until: Any = None,
    organisation_id: str | None = None,
) -> list[UsageSummaryRow]:
    """Sum requests, tokens and cost over [since, until), grouped by one of `GROUP_BY`."""
    if group_by not in GROUP_BY:
        raise BadRequest(f"group_by must be one of {', '.join(GROUP_BY)} (got {group_by!r})")
    start = parse_datetime(since, "since")
    end = parse_datetime(until, "until")
    u = schema.usage_records
    column = _group_column(store, group_by)
    query = (
        sa.select(
            column.label("group"),
            sa.func.count().label("requests"),
            sa.func.coalesce(sa.func.sum(u.c.input_tokens), 0).label("input_tokens"),
            sa.func.coalesce(sa.func.sum(u.c.output_tokens), 0).label("output_tokens"),
            sa.func.coalesce(sa.func.sum(u.c.cached_input_tokens), 0).label("cached_input_tokens"),
            sa.func.coalesce(sa.func.sum(u.c.reasoning_tokens), 0).label("reasoning_tokens"),
            sa.func.coalesce(sa.func.sum(u.c.cost_nanos), 0).label("cost_nanos"),
        )
        .group_by(column)
        .order_by(column)
    )
    if organisation_id is not None:
        query = query.where(u.c.organisation_id == organisation_id)
    if start is not None:
        query = query.where(u.c.created_at >= start)
    if end is not None:
        query = query.where(u.c.created_at < end)
    async with store.read() as conn:
        if store.dialect == "postgresql":
            await conn.execute(sa.text(f"SET LOCAL statement_timeout = '{_REPORT_TIMEOUT}'"))
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
