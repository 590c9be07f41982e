"""SQL access for governance: budget/quota definitions, durable windows, charges and threshold events.

Never on the request hot path: definitions are loaded into memory and polled; windows are read once per window
start; charges are written after the response (write-through in cluster mode, write-behind in embedded mode).
Everything runs on the catalogue's `SqlStore`: its one engine, its SQLite write lock, its error mapping, and on
PostgreSQL its dedicated charge connection.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from odock.governance.periods import Period
from odock.governance.schema import budget_events, budgets, governance_charges, governance_windows, quotas
from odock.state.schema import UTCDateTime

if TYPE_CHECKING:
    from odock.state.sql import SqlStore

OwnerType = Literal["ORG", "TEAM", "USER", "APIKEY"]
Metric = Literal["REQUESTS", "TOKENS", "TOKENS_IN", "TOKENS_OUT", "ERRORS", "COST", "LATENCY_MS"]
OWNER_TYPES: tuple[OwnerType, ...] = ("ORG", "TEAM", "USER", "APIKEY")
METRICS: tuple[Metric, ...] = (
    "REQUESTS",
    "TOKENS",
    "TOKENS_IN",
    "TOKENS_OUT",
    "ERRORS",
    "COST",
    "LATENCY_MS",
)
DEFAULT_THRESHOLDS = [50, 80, 90, 100]


class Budget(msgspec.Struct, kw_only=True):
    """A spend limit in nanos USD for one owner and period."""

    id: str
    name: str
    owner_type: OwnerType
    owner_id: str
    period: Period
    amount_nanos: int
    organisation_id: str | None = None
    start_at: datetime | None = None
    end_at: datetime | None = None
    timezone: str = ""  # "" = the owner's time zone (organisation's, or the API key's for APIKEY owners)
    currency: str = "USD"
    thresholds: list[int] = msgspec.field(default_factory=lambda: list(DEFAULT_THRESHOLDS))
    rollover: bool = False
    active: bool = True
    created_at: datetime | None = None
    updated_at: datetime | None = None


class Quota(msgspec.Struct, kw_only=True):
    """A count limit (requests, tokens, errors, cost, latency) for one owner and period."""

    id: str
    name: str
    owner_type: OwnerType
    owner_id: str
    period: Period
    metric: Metric
    limit: int
    organisation_id: str | None = None
    start_at: datetime | None = None
    end_at: datetime | None = None
    timezone: str = ""  # "" = the owner's time zone (organisation's, or the API key's for APIKEY owners)
    rollover: bool = False
    active: bool = True
    created_at: datetime | None = None
    updated_at: datetime | None = None


class BudgetEvent(msgspec.Struct, kw_only=True):
    """A budget window crossed one of its thresholds (`threshold`), or one call was charged above what it reserved
    (`overspend`: a broken or dishonest upstream, or a failover to a dearer model; `threshold` then holds the
    percentage of the budget used after that charge)."""

    id: int
    budget_id: str
    window_key: str
    threshold: int
    used_nanos: int
    amount_nanos: int
    created_at: datetime
    kind: str = "threshold"
    request_id: str | None = None
    reserved_nanos: int | None = None
    charged_nanos: int | None = None


class NewEvent(NamedTuple):
    """A budget event to record."""

    budget_id: str
    window_key: str
    threshold: int
    used: int
    amount: int
    kind: str = "threshold"
    request_id: str = ""
    reserved: int | None = None
    charged: int | None = None


# One round trip per batch of charges. New charges (RETURNING of the insert) are summed per window; the windows
# are locked in key order first (LockRows above the Sort), so concurrent batches never deadlock on them.
_PG_RECORD_CHARGES = sa.text(
    """
WITH ins AS (
  INSERT INTO governance_charges (reservation_id, window_key, amount, created_at)
  SELECT t.reservation_id, t.window_key, t.amount, CAST(:now AS timestamptz)
  FROM unnest(CAST(:rids AS text[]), CAST(:keys AS text[]), CAST(:amounts AS bigint[]))
    AS t(reservation_id, window_key, amount)
  ON CONFLICT DO NOTHING
  RETURNING reservation_id, window_key, amount
), fresh AS (
  SELECT window_key, sum(amount) AS total FROM ins GROUP BY window_key
), locked AS (
  SELECT w.window_key FROM governance_windows w
  WHERE w.window_key IN (SELECT window_key FROM fresh)
  ORDER BY w.window_key FOR UPDATE
), upd AS (
  UPDATE governance_windows w SET used = w.used + fresh.total, updated_at = CAST(:now AS timestamptz)
  FROM fresh JOIN locked ON locked.window_key = fresh.window_key
  WHERE w.window_key = fresh.window_key AND fresh.total <> 0
)
SELECT reservation_id, window_key FROM ins
"""
).bindparams(
    sa.bindparam("rids", type_=sa.ARRAY(sa.Text())),
    sa.bindparam("keys", type_=sa.ARRAY(sa.Text())),
    sa.bindparam("amounts", type_=sa.ARRAY(sa.BigInteger())),
    sa.bindparam("now", type_=UTCDateTime()),
)

# The same statement for the store's dedicated asyncpg connection (`ChargeWriter`, positional parameters).
_PG_RECORD_CHARGES_RAW = (
    str(_PG_RECORD_CHARGES.text)
    .replace("CAST(:now AS timestamptz)", "$4::timestamptz")
    .replace("CAST(:rids AS text[])", "$1::text[]")
    .replace("CAST(:keys AS text[])", "$2::text[]")
    .replace("CAST(:amounts AS bigint[])", "$3::bigint[]")
)


# SQLite: the rows travel as one JSON array (one bound parameter, so the SQL never varies with the batch size and the
# per-row work is SQLite's, not Python's). `WHERE true` lets the parser tell the upsert clause from a join.
_SQLITE_INSERT_CHARGES = sa.text(
    """
INSERT INTO governance_charges (reservation_id, window_key, amount, created_at)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'), :now
FROM json_each(:rows) WHERE true
ON CONFLICT DO NOTHING
RETURNING reservation_id, window_key, amount
"""
).bindparams(sa.bindparam("rows", type_=sa.Text()), sa.bindparam("now", type_=UTCDateTime()))
_SQLITE_CHUNK = 2000
_json_encode = msgspec.json.Encoder().encode

_ADD_USED = (
    governance_windows.update()
    .where(governance_windows.c.window_key == sa.bindparam("w_key"))
    .values(
        used=governance_windows.c.used + sa.bindparam("w_delta", type_=sa.BigInteger()),
        updated_at=sa.bindparam("w_now", type_=UTCDateTime()),
    )
)


# polled every catalogue interval: both tables' count and last change in one statement (one round trip, not two)
_DEFINITIONS_VERSION = sa.select(
    sa.select(sa.func.count()).select_from(budgets).scalar_subquery(),
    sa.select(sa.func.max(budgets.c.updated_at)).scalar_subquery(),
    sa.select(sa.func.count()).select_from(quotas).scalar_subquery(),
    sa.select(sa.func.max(quotas.c.updated_at)).scalar_subquery(),
)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _fresh_flags(items: list[tuple[str, str, int]], fresh: set[tuple[str, str]]) -> list[bool]:
    """Per charge in order: newly written (only the first of repeated (reservation, window) pairs can be)."""
    out: list[bool] = []
    for rid, key, _ in items:
        pair = (rid, key)
        out.append(pair in fresh)
        fresh.discard(pair)
    return out


class GovernanceStore:
    """Governance rows in SQLite or PostgreSQL, on the catalogue's store (one engine, one write lock)."""

    def __init__(self, sql: SqlStore) -> None:
        self.sql = sql
        self.engine = sql.engine
        self.dialect = sql.dialect
        self._charges = sql.charge_writer
        # built once, so SQLAlchemy's compiled cache serves every call
        self._window_insert = self._insert(governance_windows).on_conflict_do_nothing(
            index_elements=["window_key"]
        )

    async def _run(self, work: Callable[[AsyncConnection], Awaitable[Any]], *, write: bool = True) -> Any:
        """Run `work` in one transaction of the store (a write by default: SQLite queues it behind the lock)."""
        async with self.sql.write() if write else self.sql.read() as conn:
            return await work(conn)

    def _insert(self, table: sa.Table) -> Any:
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    # --- definitions -----------------------------------------------------------------------------------------

    async def definitions_version(self) -> tuple[Any, ...]:
        """Return a value that changes whenever a budget or quota is created, updated or deleted."""

        async def work(conn: AsyncConnection) -> tuple[Any, ...]:
            row = (await conn.execute(_DEFINITIONS_VERSION)).one()
            return (row[0], str(row[1]), row[2], str(row[3]))

        result: tuple[Any, ...] = await self._run(work, write=False)
        return result

    async def list_budgets(self, **filters: Any) -> list[Budget]:
        """List budgets, optionally filtered by column equality (owner_type, owner_id, organisation_id, active)."""
        rows = await self._select(budgets, filters)
        return [self._budget(r) for r in rows]

    async def list_quotas(self, **filters: Any) -> list[Quota]:
        """List quotas, optionally filtered by column equality."""
        rows = await self._select(quotas, filters)
        return [self._quota(r) for r in rows]

    async def _select(self, table: sa.Table, filters: dict[str, Any]) -> Sequence[sa.Row[Any]]:
        query = sa.select(table).order_by(table.c.created_at, table.c.id)
        for name, value in filters.items():
            if value is not None:
                query = query.where(table.c[name] == value)

        async def work(conn: AsyncConnection) -> Sequence[sa.Row[Any]]:
            return (await conn.execute(query)).all()

        rows: Sequence[sa.Row[Any]] = await self._run(work, write=False)
        return rows

    @staticmethod
    def _budget(row: sa.Row[Any]) -> Budget:
        m = row._mapping
        return Budget(
            id=m["id"],
            name=m["name"],
            owner_type=m["owner_type"],
            owner_id=m["owner_id"],
            organisation_id=m["organisation_id"],
            period=m["period"],
            amount_nanos=int(m["amount_nanos"]),
            start_at=_utc(m["start_at"]),
            end_at=_utc(m["end_at"]),
            timezone=m["timezone"],
            currency=m["currency"],
            thresholds=[int(t) for t in (m["thresholds"] or [])],
            rollover=bool(m["rollover"]),
            active=bool(m["active"]),
            created_at=_utc(m["created_at"]),
            updated_at=_utc(m["updated_at"]),
        )

    @staticmethod
    def _quota(row: sa.Row[Any]) -> Quota:
        m = row._mapping
        return Quota(
            id=m["id"],
            name=m["name"],
            owner_type=m["owner_type"],
            owner_id=m["owner_id"],
            organisation_id=m["organisation_id"],
            period=m["period"],
            metric=m["metric"],
            limit=int(m["limit_value"]),
            start_at=_utc(m["start_at"]),
            end_at=_utc(m["end_at"]),
            timezone=m["timezone"],
            rollover=bool(m["rollover"]),
            active=bool(m["active"]),
            created_at=_utc(m["created_at"]),
            updated_at=_utc(m["updated_at"]),
        )

    async def insert_budget(self, budget: Budget) -> Budget:
        """Insert a budget (id generated when empty) and return it as stored."""
        now = _now()
        budget = msgspec.structs.replace(
            budget,
            id=budget.id or str(uuid.uuid4()),
            created_at=now,
            updated_at=now,
            start_at=_utc(budget.start_at),
            end_at=_utc(budget.end_at),
        )
        values = msgspec.structs.asdict(budget)
        await self._run(lambda c: c.execute(budgets.insert().values(**values)))
        return budget

    async def insert_quota(self, quota: Quota) -> Quota:
        """Insert a quota (id generated when empty) and return it as stored."""
        now = _now()
        quota = msgspec.structs.replace(
            quota,
            id=quota.id or str(uuid.uuid4()),
            created_at=now,
            updated_at=now,
            start_at=_utc(quota.start_at),
            end_at=_utc(quota.end_at),
        )
        values = msgspec.structs.asdict(quota)
        values["limit_value"] = values.pop("limit")
        await self._run(lambda c: c.execute(quotas.insert().values(**values)))
        return quota

    async def update_budget(self, budget: Budget) -> Budget:
        """Replace a stored budget's fields (by id)."""
        budget = msgspec.structs.replace(
            budget, updated_at=_now(), start_at=_utc(budget.start_at), end_at=_utc(budget.end_at)
        )
        values = msgspec.structs.asdict(budget)
        values.pop("created_at")
        await self._run(
            lambda c: c.execute(budgets.update().where(budgets.c.id == budget.id).values(**values))
        )
        return budget

    async def update_quota(self, quota: Quota) -> Quota:
        """Replace a stored quota's fields (by id)."""
        quota = msgspec.structs.replace(
            quota, updated_at=_now(), start_at=_utc(quota.start_at), end_at=_utc(quota.end_at)
        )
        values = msgspec.structs.asdict(quota)
        values.pop("created_at")
        values["limit_value"] = values.pop("limit")
        await self._run(lambda c: c.execute(quotas.update().where(quotas.c.id == quota.id).values(**values)))
        return quota

    async def delete(self, kind: Literal["budget", "quota"], definition_id: str) -> bool:
        """Delete a budget or quota by id; return whether it existed."""
        table = budgets if kind == "budget" else quotas

        async def work(conn: AsyncConnection) -> bool:
            result = await conn.execute(table.delete().where(table.c.id == definition_id))
            return bool(result.rowcount)

        deleted: bool = await self._run(work)
        return deleted

    # --- windows and charges ------------------------------------------------------------------------------------

    async def window_used(
        self, window_key: str, kind: str, definition_id: str, start: datetime, end: datetime, limit: int
    ) -> int:
        """Return the settled `used` of a window, creating its row (used 0) on first sight."""
        return (await self.windows_used([(window_key, kind, definition_id, start, end, limit)]))[0]

    async def windows_used(
        self, windows: Sequence[tuple[str, str, str, datetime, datetime, int]]
    ) -> list[int]:
        """`window_used` for many (window_key, kind, definition_id, start, end, limit) windows in one transaction."""
        if not windows:
            return []
        now = _now()
        rows = [
            {
                "window_key": key,
                "kind": kind,
                "definition_id": definition_id,
                "start_at": start,
                "end_at": end,
                "limit_value": limit,
                "used": 0,
                "updated_at": now,
            }
            for key, kind, definition_id, start, end, limit in windows
        ]
        keys = list({w[0] for w in windows})

        async def work(conn: AsyncConnection) -> dict[str, int]:
            await conn.execute(self._window_insert, rows)
            result = await conn.execute(
                sa.select(governance_windows.c.window_key, governance_windows.c.used).where(
                    governance_windows.c.window_key.in_(keys)
                )
            )
            return {r[0]: int(r[1]) for r in result}

        used: dict[str, int] = await self._run(work)
        return [used[w[0]] for w in windows]

    async def record_charges(self, charges: Iterable[tuple[str, str, int]]) -> list[bool]:
        """Write (reservation_id, window_key, amount) charges once each; add new ones to the window's `used`.

        Return, per charge in order, whether it was new (a repeat of a stored charge, or of an earlier one in the
        same call, is not). Set-based and atomic: one statement on PostgreSQL (on its own connection, see
        `ChargeWriter`); on SQLite, in one transaction, an INSERT … RETURNING per chunk of rows (passed as one
        JSON array), then one UPDATE per distinct window.
        """
        items = list(charges)
        if not items:
            return []
        # first occurrence of each (reservation, window) only: repeats are never new
        unique: dict[tuple[str, str], int] = {}
        for rid, key, amount in items:
            unique.setdefault((rid, key), amount)
        now = _now()
        if self._charges is not None:
            written = await self._charges.fetch(
                _PG_RECORD_CHARGES_RAW,
                [k[0] for k in unique],
                [k[1] for k in unique],
                list(unique.values()),
                now,
            )
            return _fresh_flags(items, {(r[0], r[1]) for r in written})
        rows = [(rid, key, amount) for (rid, key), amount in unique.items()]
        chunks = [
            _json_encode(rows[i : i + _SQLITE_CHUNK]).decode() for i in range(0, len(rows), _SQLITE_CHUNK)
        ]

        async def work(conn: AsyncConnection) -> set[tuple[str, str]]:
            inserted: set[tuple[str, str]] = set()
            totals: dict[str, int] = {}
            for chunk in chunks:
                for rid, key, amount in await conn.execute(
                    _SQLITE_INSERT_CHARGES, {"rows": chunk, "now": now}
                ):
                    inserted.add((rid, key))
                    totals[key] = totals.get(key, 0) + int(amount)
            updates = [{"w_key": k, "w_delta": v, "w_now": now} for k, v in totals.items() if v]
            if updates:
                await conn.execute(_ADD_USED, updates)
            return inserted

        fresh: set[tuple[str, str]] = await self._run(work)
        return _fresh_flags(items, fresh)

    async def prune_charges(self, before: datetime) -> int:
        """Delete settled charges created before `before` (no reservation that old can still be reconciled)."""

        async def work(conn: AsyncConnection) -> int:
            result = await conn.execute(
                governance_charges.delete().where(governance_charges.c.created_at < before)
            )
            return int(result.rowcount or 0)

        deleted: int = await self._run(work)
        return deleted

    async def charges_for(self, reservation_id: str) -> dict[str, int]:
        """Return the settled charges of a reservation by window key (empty when never settled)."""

        async def work(conn: AsyncConnection) -> dict[str, int]:
            rows = await conn.execute(
                sa.select(governance_charges.c.window_key, governance_charges.c.amount).where(
                    governance_charges.c.reservation_id == reservation_id
                )
            )
            return {r[0]: int(r[1]) for r in rows}

        result: dict[str, int] = await self._run(work, write=False)
        return result

    async def windows(self, definition_id: str) -> list[dict[str, Any]]:
        """Return a definition's stored windows, newest first (admin views)."""

        async def work(conn: AsyncConnection) -> list[dict[str, Any]]:
            rows = await conn.execute(
                sa.select(governance_windows)
                .where(governance_windows.c.definition_id == definition_id)
                .order_by(governance_windows.c.start_at.desc())
            )
            return [
                {
                    "window_key": r.window_key,
                    "start_at": _utc(r.start_at),
                    "end_at": _utc(r.end_at),
                    "limit": int(r.limit_value),
                    "used": int(r.used),
                }
                for r in rows
            ]

        result: list[dict[str, Any]] = await self._run(work, write=False)
        return result

    # --- budget events --------------------------------------------------------------------------------------------

    async def record_events(self, events: Iterable[NewEvent | tuple[str, str, int, int, int]]) -> None:
        """Insert budget events; a repeated crossing (or a call's repeated overspend) is ignored."""
        items = [NewEvent(*e) for e in events]
        if not items:
            return
        now = _now()

        async def work(conn: AsyncConnection) -> None:
            for e in items:
                await conn.execute(
                    self._insert(budget_events)
                    .values(
                        budget_id=e.budget_id,
                        window_key=e.window_key,
                        threshold=e.threshold,
                        used_nanos=e.used,
                        amount_nanos=e.amount,
                        created_at=now,
                        kind=e.kind,
                        request_id=e.request_id,
                        reserved_nanos=e.reserved,
                        charged_nanos=e.charged,
                    )
                    .on_conflict_do_nothing(index_elements=["window_key", "kind", "threshold", "request_id"])
                )

        await self._run(work)

    async def list_events(
        self, *, budget_id: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[BudgetEvent]:
        """Return budget events (threshold crossings and overspends), newest first."""
        query = sa.select(budget_events).order_by(
            budget_events.c.created_at.desc(), budget_events.c.id.desc()
        )
        if budget_id is not None:
            query = query.where(budget_events.c.budget_id == budget_id)
        if since is not None:
            query = query.where(budget_events.c.created_at >= since)
        query = query.limit(max(1, min(limit, 1000)))

        async def work(conn: AsyncConnection) -> list[BudgetEvent]:
            rows = await conn.execute(query)
            return [
                BudgetEvent(
                    id=int(r.id),
                    budget_id=r.budget_id,
                    window_key=r.window_key,
                    threshold=int(r.threshold),
                    used_nanos=int(r.used_nanos),
                    amount_nanos=int(r.amount_nanos),
                    created_at=_utc(r.created_at) or _now(),
                    kind=r.kind,
                    request_id=r.request_id or None,
                    reserved_nanos=r.reserved_nanos,
                    charged_nanos=r.charged_nanos,
                )
                for r in rows
            ]

        result: list[BudgetEvent] = await self._run(work, write=False)
        return result
