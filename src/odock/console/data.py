"""The console's reads: charts from the usage rollups, lists by keyset pages. A handful of queries per page.

Nothing here scans the raw ledger except the request log, which walks one of its (…, created_at) indexes
backwards a page at a time.

Each page's queries run as one unit of work (`_read`). On a SQLite file that unit runs on a worker thread over a
plain pysqlite connection: one hand-off to and from the event loop per page, where aiosqlite costs one per
cursor step (begin, execute, fetch, close, rollback: a dozen a page). Under full traffic every hand-off waits
behind the gateway's ready callbacks, so the hand-offs, not the queries, made a page slow. The console's threads
are niced as the store's driver threads are (odock.state.sql.SQLITE_THREAD_NICE): on a saturated core the
gateway's loop runs first and a page waits, never the traffic. PostgreSQL keeps the async pool.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from odock.errors import BadRequest
from odock.governance.periods import window_at
from odock.state import schema
from odock.state.rollups import HISTOGRAMS, LATENCY_COLUMNS, SUMS, TTFT_BOUNDS_MS, TTFT_COLUMNS, percentile_ms
from odock.state.sql import SQLITE_THREAD_NICE, SqlStore, sql_errors

T = TypeVar("T")

PAGE = 50
MAX_PAGE = 500
MAX_HOURS = 24 * 31
MAX_DAYS = 400
EXPLORER_GROUPS = ("organisation", "team", "user", "key", "model", "day")
# the ledger's columns the request log shows (the detail adds pricing, usage, routing and metadata)
LOG_COLUMNS = (
    "id",
    "request_id",
    "created_at",
    "organisation_id",
    "team_id",
    "api_key_id",
    "route",
    "status",
    "outcome",
    "model",
    "provider",
    "stream",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "reasoning_tokens",
    "latency_ms",
    "error_code",
    "cost_nanos",
)
DETAIL_COLUMNS = (
    *LOG_COLUMNS,
    "user_id",
    "model_slug",
    "cache_write_tokens",
    "usage_estimated",
    "provider_request_id",
    "pricing",
    "raw_usage",
    "routing",
    "metadata",
)


_SYNC_ENGINES: weakref.WeakKeyDictionary[SqlStore, sa.Engine] = weakref.WeakKeyDictionary()


def _sqlite_reader(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA query_only=ON")  # the console reads here; its changes go through the admin API
    finally:
        cursor.close()


def _sync_engine(store: SqlStore) -> sa.Engine | None:
    """A synchronous engine on the same SQLite file (None: PostgreSQL, or an in-memory database)."""
    if store.dialect != "sqlite":
        return None
    database = store.engine.url.database
    if not database or database == ":memory:":
        return None
    engine = _SYNC_ENGINES.get(store)
    if engine is None:
        # a connection per page (NullPool): opening a SQLite file is ~0.1 ms, and nothing stays open after close
        engine = sa.create_engine(
            f"sqlite:///{database}", poolclass=NullPool, json_deserializer=msgspec.json.decode
        )
        sa.event.listen(engine, "connect", _sqlite_reader)
        _SYNC_ENGINES[store] = engine
    return engine


def _nice_reader_thread() -> None:
    with contextlib.suppress(OSError, AttributeError):  # only ever lowered: needs no privileges
        own = os.getpriority(os.PRIO_PROCESS, 0)  # this new thread's, inherited from the event loop's
        os.setpriority(os.PRIO_PROCESS, 0, min(19, own + SQLITE_THREAD_NICE))


_READERS: ThreadPoolExecutor | None = None


def _readers() -> ThreadPoolExecutor:
    # its own threads (not the loop's default executor: the niceness stays with the thread)
    global _READERS
    if _READERS is None:
        _READERS = ThreadPoolExecutor(2, thread_name_prefix="console-read", initializer=_nice_reader_thread)
    return _READERS


async def _read(store: SqlStore, work: Callable[[sa.Connection], T]) -> T:
    """Run `work` (a page's queries, written against a synchronous connection) in one read transaction."""
    engine = _sync_engine(store)
    if engine is None:
        async with store.read() as conn:
            return await conn.run_sync(work)

    def run() -> T:
        with engine.connect() as conn, conn.begin():
            return work(conn)

    async with sql_errors:
        return await asyncio.get_running_loop().run_in_executor(_readers(), run)


def _int_param(value: str | None, name: str, default: int, high: int) -> int:
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if not 1 <= number <= high:
        raise BadRequest(f"{name} must be between 1 and {high}")
    return number


def _day_param(value: str | None, name: str) -> str | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").strftime("%Y-%m-%d")
    except ValueError:
        raise BadRequest(f"{name} must be a day YYYY-MM-DD") from None


def _sum_columns(table: sa.Table, names: Sequence[str]) -> list[Any]:
    # PostgreSQL's sum(bigint) is numeric (Python Decimal, slow to add and compare): back to bigint
    return [sa.cast(sa.func.sum(table.c[name]), sa.BigInteger).label(name) for name in names]


def _totals(row: Any) -> dict[str, int]:
    return {name: int(row[name] or 0) for name in SUMS}


async def overview(store: SqlStore, hours: str | None, organisation: str | None) -> dict[str, Any]:
    """Per-hour requests, errors, tokens, cost, p50/p95 latency and p50/p95 time to first token (streamed calls)
    over the last `hours`, plus per-model totals (those by whole days: from the first day the range touches)."""
    span = _int_param(hours, "hours", 24, MAX_HOURS)
    now = datetime.now(UTC)
    since = (now - timedelta(hours=span - 1)).strftime("%Y-%m-%dT%H")
    h = schema.usage_rollup_hourly
    where = [h.c.bucket >= since]
    if organisation:
        where.append(h.c.organisation_id == organisation)
    series = (
        sa.select(h.c.bucket, *_sum_columns(h, SUMS + HISTOGRAMS))
        .where(*where)
        .group_by(h.c.bucket)
        .order_by(h.c.bucket)
    )
    # per model from the daily rows of the days the range touches (one row per model, organisation and day)
    d = schema.usage_rollup_daily
    by_model_where = [d.c.dimension == "model", d.c.day >= since[:10]]
    if organisation:
        by_model_where.append(d.c.organisation_id == organisation)
    by_model = (
        sa.select(d.c.value.label("model"), *_sum_columns(d, SUMS))
        .where(*by_model_where)
        .group_by(d.c.value)
        .order_by(d.c.value)
    )
    rows, models = await _read(
        store, lambda c: (c.execute(series).mappings().all(), c.execute(by_model).mappings().all())
    )
    points = []
    totals = dict.fromkeys(SUMS, 0)
    histogram = [0] * len(LATENCY_COLUMNS)
    ttft_histogram = [0] * len(TTFT_COLUMNS)
    for row in rows:
        sums = _totals(row)
        hist = [int(row[c] or 0) for c in LATENCY_COLUMNS]
        ttft = [int(row[c] or 0) for c in TTFT_COLUMNS]
        for name, value in sums.items():
            totals[name] += value
        histogram = [a + b for a, b in zip(histogram, hist, strict=True)]
        ttft_histogram = [a + b for a, b in zip(ttft_histogram, ttft, strict=True)]
        points.append(
            {
                "t": row["bucket"],
                **sums,
                "p50_ms": percentile_ms(hist, 0.5),
                "p95_ms": percentile_ms(hist, 0.95),
                "ttft_p50_ms": percentile_ms(ttft, 0.5, TTFT_BOUNDS_MS),
                "ttft_p95_ms": percentile_ms(ttft, 0.95, TTFT_BOUNDS_MS),
            }
        )
    return {
        "hours": span,
        "since": since,
        "series": points,
        "totals": {
            **totals,
            "p50_ms": percentile_ms(histogram, 0.5),
            "p95_ms": percentile_ms(histogram, 0.95),
            "ttft_p50_ms": percentile_ms(ttft_histogram, 0.5, TTFT_BOUNDS_MS),
            "ttft_p95_ms": percentile_ms(ttft_histogram, 0.95, TTFT_BOUNDS_MS),
        },
        "models": [{"model": row["model"], **_totals(row)} for row in models],
        "models_since": since[:10],
    }


def _explorer_filters(params: Any) -> tuple[str, str, str | None, list[Any]]:
    """The day range, the one dimension filter (for the daily series) and the page's conditions."""
    d = schema.usage_rollup_daily
    today = datetime.now(UTC).date()
    until = _day_param(params.get("until"), "until") or today.isoformat()
    since = _day_param(params.get("since"), "since") or (today - timedelta(days=29)).isoformat()
    if since > until:
        raise BadRequest("since must not be after until")
    filters = [name for name in ("team", "user", "key", "model") if params.get(name)]
    group = _group(params)
    if filters and (group != "day" or len(filters) > 1):
        # each daily row counts one dimension: a page filters by its organisation, or charts one value by day
        raise BadRequest("filter by team, user, key or model with group_by=day, one at a time")
    where: list[Any] = [d.c.day >= since, d.c.day <= until]
    if params.get("organisation"):
        where.append(d.c.organisation_id == params["organisation"])
    return since, until, (filters[0] if filters else None), where


def _group(params: Any) -> str:
    group = params.get("group_by") or "model"
    if group not in EXPLORER_GROUPS:
        raise BadRequest(f"group_by must be one of {', '.join(EXPLORER_GROUPS)} (got {group!r})")
    return str(group)


def _explorer_page_query(group: str, where: list[Any], after: str | None, limit: int) -> sa.Select[Any]:
    d = schema.usage_rollup_daily
    query = sa.select(d.c.value.label("group"), *_sum_columns(d, SUMS)).where(d.c.dimension == group, *where)
    if after is not None:
        query = query.where(d.c.value > after)
    # grouped in primary-key order (dimension, value, day): the database stops after one page of groups
    return query.group_by(d.c.value).order_by(d.c.value).limit(limit)


def _daily_series_query(params: Any, dimension: str | None, where: list[Any]) -> sa.Select[Any]:
    d = schema.usage_rollup_daily
    if dimension is not None:
        scope = [d.c.dimension == dimension, d.c.value == params[dimension]]
    elif params.get("organisation"):
        scope = [d.c.dimension == "organisation", d.c.value == params["organisation"]]
    else:
        scope = [d.c.dimension == "organisation"]  # every organisation's rows: one per organisation and day
    return (
        sa.select(d.c.day, *_sum_columns(d, SUMS)).where(*scope, *where).group_by(d.c.day).order_by(d.c.day)
    )


async def explorer(store: SqlStore, params: Any) -> dict[str, Any]:
    """One keyset page of totals grouped by organisation, team, user, key, model or day, plus the daily series."""
    group = _group(params)
    since, until, dimension, where = _explorer_filters(params)
    limit = _int_param(params.get("limit"), "limit", PAGE, MAX_PAGE)
    after = params.get("after") or None

    def work(conn: sa.Connection) -> tuple[Sequence[Any], Sequence[Any], dict[str, str]]:
        days = conn.execute(_daily_series_query(params, dimension, where)).mappings().all()
        if group == "day":
            return days, [], {}
        rows = conn.execute(_explorer_page_query(group, where, after, limit + 1)).mappings().all()
        return days, rows, _names(conn, group, [row["group"] for row in rows[:limit]])

    days, rows, names = await _read(store, work)
    series = [{"t": row["day"], **_totals(row)} for row in days]
    if group == "day":
        page = [{"group": point["t"], "name": None, **point} for point in series]
        page = [{k: v for k, v in row.items() if k != "t"} for row in page]
        return {
            "group_by": group,
            "since": since,
            "until": until,
            "data": page,
            "next": None,
            "series": series,
        }
    page = [{"group": row["group"], "name": names.get(row["group"]), **_totals(row)} for row in rows[:limit]]
    return {
        "group_by": group,
        "since": since,
        "until": until,
        "data": page,
        "next": page[-1]["group"] if len(rows) > limit else None,
        "series": series,
    }


def _names(conn: sa.Connection, group: str, ids: list[str]) -> dict[str, str]:
    tables = {"organisation": schema.organisations, "team": schema.teams, "key": schema.api_keys}
    if group == "user" and ids:
        u = schema.users
        rows = conn.execute(sa.select(u.c.id, u.c.email).where(u.c.id.in_(ids)))
        return {row.id: row.email for row in rows}
    table = tables.get(group)
    if table is None or not ids:
        return {}
    rows = conn.execute(sa.select(table.c.id, table.c.name).where(table.c.id.in_(ids)))
    return {row.id: row.name for row in rows}


async def explorer_csv(store: SqlStore, params: Any) -> AsyncIterator[str]:
    """The explorer's whole grouping as CSV, read in keyset pages (never one huge result in memory)."""
    yield "group,name," + ",".join(SUMS) + "\r\n"
    if _group(params) == "day":
        for point in (await explorer(store, params))["series"]:
            yield f"{point['t']},," + ",".join(str(point[name]) for name in SUMS) + "\r\n"
        return
    group = _group(params)
    _since, _until, _dimension, where = _explorer_filters(params)
    after: str | None = None
    while True:
        query = _explorer_page_query(group, where, after, 5000)

        def work(conn: sa.Connection, query: Any = query) -> tuple[Sequence[Any], dict[str, str]]:
            rows = conn.execute(query).mappings().all()
            return rows, _names(conn, group, [row["group"] for row in rows])

        rows, names = await _read(store, work)
        for row in rows:
            name = names.get(row["group"], "")
            values = ",".join(str(v) for v in _totals(row).values())
            yield f"{_csv_cell(row['group'])},{_csv_cell(name)},{values}\r\n"
        if len(rows) < 5000:
            return
        after = rows[-1]["group"]


def _csv_cell(value: str) -> str:
    text = str(value)
    if text[:1] in ("=", "+", "-", "@"):
        text = "'" + text  # never a formula when opened in a spreadsheet
    if any(c in text for c in ',"\r\n'):
        text = '"' + text.replace('"', '""') + '"'
    return text


def encode_cursor(created_at: datetime, ident: str) -> str:
    """An opaque keyset cursor for the request log."""
    raw = f"{created_at.astimezone(UTC).isoformat()}|{ident}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) a cursor stands for (400 when it is not one of ours)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, ident = raw.split("|", 1)
        return datetime.fromisoformat(stamp).astimezone(UTC), ident
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("invalid cursor") from None


# filters the ledger has a (…, created_at) index for, and the others, checked on a bounded stretch of rows
_INDEXED_FILTERS = (("organisation", "organisation_id"), ("key", "api_key_id"))
_SCANNED_FILTERS = (("team", "team_id"), ("model", "model"), ("provider", "provider"))
# a page with an unindexed filter looks at most this many records, then offers to continue from there
SCAN_ROWS = 10_000


def _filters(table: Any, params: Any, pairs: Sequence[tuple[str, str]]) -> list[Any]:
    return [table.c[column] == params[param] for param, column in pairs if params.get(param)]


def _log_row(row: Any, columns: Sequence[str]) -> dict[str, Any]:
    return {name: row[name] for name in columns}


async def records(store: SqlStore, params: Any) -> dict[str, Any]:
    """A page of usage records, newest first (`before`: the next page), or the ones after `after` (live tail).

    Organisation, key and failure filters walk their index; team, model and provider are checked on at most
    `SCAN_ROWS` records a page, so a rare value never makes a page read the whole ledger: such a page may come
    back short with a `next` cursor to carry on from where it stopped (`scanned_to`)."""
    u = schema.usage_records
    limit = _int_param(params.get("limit"), "limit", PAGE, MAX_PAGE)
    indexed = _filters(u, params, _INDEXED_FILTERS)
    outcome = params.get("outcome")
    if outcome:
        indexed.append(u.c.outcome == outcome)
        if outcome != "success":  # the same condition as the partial index of failures, so that it is used
            indexed.append(u.c.outcome != "success")
    scanned = [(column, params[param]) for param, column in _SCANNED_FILTERS if params.get(param)]
    columns = [u.c[name] for name in LOG_COLUMNS]
    if params.get("after"):
        stamp, ident = decode_cursor(params["after"])
        where = [
            *indexed,
            *[u.c[c] == v for c, v in scanned],
            u.c.created_at >= stamp,
            sa.or_(u.c.created_at > stamp, u.c.id > ident),
        ]
        query = sa.select(*columns).where(*where).order_by(u.c.created_at, u.c.id).limit(limit)
        rows = await _read(store, lambda c: c.execute(query).mappings().all())
        tail = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if rows else str(params["after"])
        return {"data": [_log_row(row, LOG_COLUMNS) for row in rows], "next": None, "tail": tail}
    if params.get("before"):
        stamp, ident = decode_cursor(params["before"])
        indexed += [u.c.created_at <= stamp, sa.or_(u.c.created_at < stamp, u.c.id < ident)]
    newest_first = (u.c.created_at.desc(), u.c.id.desc())

    def work(conn: sa.Connection) -> tuple[Sequence[Any], Any]:
        if not scanned:
            query = sa.select(*columns).where(*indexed).order_by(*newest_first).limit(limit + 1)
            return conn.execute(query).mappings().all(), None
        stretch = sa.select(*columns).where(*indexed).order_by(*newest_first).limit(SCAN_ROWS).subquery()
        conditions = [stretch.c[column] == value for column, value in scanned]
        query = (
            sa.select(*[stretch.c[name] for name in LOG_COLUMNS])
            .where(*conditions)
            .order_by(stretch.c.created_at.desc(), stretch.c.id.desc())
            .limit(limit + 1)
        )
        rows = conn.execute(query).mappings().all()
        if len(rows) > limit:
            return rows, None
        last = sa.select(u.c.created_at, u.c.id).where(*indexed).order_by(*newest_first)
        return rows, conn.execute(last.offset(SCAN_ROWS - 1).limit(1)).first()

    rows, scan_end = await _read(store, work)
    page = rows[:limit]
    following: str | None = None
    if len(rows) > limit:
        following = encode_cursor(page[-1]["created_at"], page[-1]["id"])
    elif scan_end is not None:
        following = encode_cursor(scan_end[0], scan_end[1])
    return {
        "data": [_log_row(row, LOG_COLUMNS) for row in page],
        "next": following,
        "scanned_to": scan_end[0] if scan_end is not None else None,
        # the tail's position: the newest record seen (the first of a newest-first page)
        "tail": encode_cursor(page[0]["created_at"], page[0]["id"]) if page else None,
    }


async def record_detail(store: SqlStore, record_id: str) -> dict[str, Any] | None:
    """One usage record: tokens, cost, pricing, routing attempts and decisions (the ledger holds no prompt text)."""
    u = schema.usage_records
    query = sa.select(*[u.c[n] for n in DETAIL_COLUMNS]).where(u.c.id == record_id)
    row = await _read(store, lambda c: c.execute(query).mappings().first())
    return _log_row(row, DETAIL_COLUMNS) if row else None


async def keys_page(store: SqlStore, params: Any) -> dict[str, Any]:
    """A keyset page of keys ordered by (organisation, name), optionally of one organisation or name prefix."""
    k = schema.api_keys
    limit = _int_param(params.get("limit"), "limit", PAGE, MAX_PAGE)
    columns = [k.c[n] for n in ("id", "name", "key_preview", "type", "organisation_id", "team_id", "user_id")]
    columns += [k.c[n] for n in ("expires_at", "revoked", "revealed", "rotation_count", "created_at")]
    query = sa.select(*columns)
    if params.get("organisation"):
        query = query.where(k.c.organisation_id == params["organisation"])
    if params.get("q"):
        escaped = params["q"].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(k.c.name.like(escaped + "%", escape="\\"))
    if params.get("after"):
        org, _, name = params["after"].partition("/")
        query = query.where(sa.tuple_(k.c.organisation_id, k.c.name) > sa.tuple_(org, name))
    query = query.order_by(k.c.organisation_id, k.c.name).limit(limit + 1)
    rows = await _read(store, lambda c: c.execute(query).mappings().all())
    page = [dict(row) for row in rows[:limit]]
    for row in page:
        row["revoked"], row["revealed"] = bool(row["revoked"]), bool(row["revealed"])
    last = page[-1] if page else None
    return {
        "data": page,
        "next": f"{last['organisation_id']}/{last['name']}" if last and len(rows) > limit else None,
    }


_OWNER_DIMENSIONS = {"ORG": "organisation", "TEAM": "team", "USER": "user", "APIKEY": "key"}


async def budget_burn(store: SqlStore, budget: Any, windows: list[dict[str, Any]]) -> dict[str, Any]:
    """The current window's spend, day by day and cumulative, against the budget's amount (from daily rollups)."""
    now = datetime.now(UTC)
    current = next((w for w in windows if w["start_at"] <= now < w["end_at"]), None)
    if current is not None:
        start, end = current["start_at"], current["end_at"]
    else:
        # no charge in this window yet: its bounds from the schedule ("" = the owner's zone, taken as UTC here:
        # the rollups' days are UTC days anyway)
        bounds = window_at(budget.period, now, budget.timezone or "UTC", budget.start_at, budget.end_at)
        start, end = bounds if bounds is not None else (now - timedelta(days=29), now)
    d = schema.usage_rollup_daily
    query = (
        sa.select(d.c.day, sa.func.sum(d.c.cost_nanos).label("cost_nanos"))
        .where(d.c.dimension == _OWNER_DIMENSIONS[budget.owner_type], d.c.value == budget.owner_id)
        .where(d.c.day >= start.strftime("%Y-%m-%d"), d.c.day <= now.strftime("%Y-%m-%d"))
        .group_by(d.c.day)
        .order_by(d.c.day)
    )
    rows = await _read(store, lambda c: c.execute(query).mappings().all())
    days: list[dict[str, Any]] = []
    running = 0
    for row in rows:
        running += int(row["cost_nanos"] or 0)
        days.append({"t": row["day"], "cost_nanos": int(row["cost_nanos"] or 0), "cumulative_nanos": running})
    return {
        "amount_nanos": budget.amount_nanos,
        "window": {"start_at": start, "end_at": end, "used": current["used"] if current else None},
        "by_day": days,
    }
