"""SqlStore: the `Store` seam on SQLite (embedded) or PostgreSQL (cluster), through SQLAlchemy Core.

One engine per database, shared by the catalogue, the usage ledger and governance (which also uses the store's
dedicated asyncpg `ChargeWriter` on PostgreSQL). Driver exceptions never leave this module's context managers
(`sql_errors`): connection trouble becomes `DependencyUnavailable(code="store_unavailable")`, constraint
violations a 409 `conflict`, values a column cannot hold a 400.
Every catalogue mutation bumps `catalogue_version` in its own transaction; after commit the in-process
listeners run (the gateway drops its caches), and other processes notice by polling `catalogue_version()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, StaticPool

from odock.errors import BadRequest, DependencyUnavailable, GatewayError
from odock.settings import Settings
from odock.state import rollups, schema
from odock.state.crypto import SecretBox, load_secret_box
from odock.state.records import (
    ApiKeyRecord,
    McpUsage,
    ModelRecord,
    Organisation,
    ProviderRecord,
    Team,
    UsageRecord,
    User,
)

log = logging.getLogger("odock.state")

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
ChangeListener = Callable[[], Awaitable[None]]
# a result row as a mapping (RowMapping keys may also be Column objects)
RowLike = Mapping[Any, Any]
# PostgreSQL advisory lock id serialising concurrent `upgrade head` from several workers/hosts
_MIGRATION_LOCK = 0x0D0C_0001
# SQLite: wait this long for a competing writer instead of failing with "database is locked"
_SQLITE_BUSY_TIMEOUT_MS = 10_000
# PostgreSQL: bounded waits, so that a stuck lock or query becomes a 503 instead of a hung call or post-flight
_PG_CONNECT_ARGS: dict[str, Any] = {
    "timeout": 5,
    "server_settings": {"lock_timeout": "5000", "statement_timeout": "15000"},
}


# SQLite: a fixed set of connections, each an aiosqlite thread with its own page cache (up to 2 MB). A burst of
# concurrent cache misses (every key's cache entry expiring at once) used to open up to 15 of them, and the memory
# of those threads stayed: the soak's RSS rose in a step at each expiry. Now such a burst queues for a connection.
SQLITE_POOL_SIZE = 4


def sqlite_pool_options(size: int = SQLITE_POOL_SIZE) -> dict[str, Any]:
    """Engine options for a SQLite file: `size` pooled connections and no overflow."""
    return {"poolclass": AsyncAdaptedQueuePool, "pool_size": size, "max_overflow": 0}


def normalize_database_url(database_url: str) -> URL:
    """Turn `sqlite:///…` / `postgresql://…` into the async driver URL (aiosqlite / asyncpg)."""
    try:
        url = make_url(database_url)
    except exc.ArgumentError:
        raise SystemExit("ODOCK_DATABASE_URL is not a valid database URL") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        return url.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+asyncpg")
    raise SystemExit(f"unsupported database {backend!r}: use sqlite:///path.db or postgresql://…")


# SQLSTATE classes meaning the server is unreachable, out of resources or refusing work (08 connection, 53
# resources, 57 operator intervention and statement timeout, 40 deadlock or serialization failure: retry later)
_UNAVAILABLE_CLASSES = frozenset({"08", "53", "57", "40"})
_LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout expired


def _sqlstate(error: BaseException) -> str:
    """The SQLSTATE of a driver error (asyncpg keeps it on the error or its cause; sqlite3 has none)."""
    for candidate in (error, getattr(error, "__cause__", None)):
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str):
            return state
    return ""


def _unavailable(error: BaseException) -> DependencyUnavailable:
    # the driver's class and message, never the URL (it may hold a password)
    text = str(error).splitlines()[0][:200] if str(error) else ""
    return DependencyUnavailable(
        f"the store is unavailable ({type(error).__name__}: {text})", "store_unavailable"
    )


def map_sql_error(error: BaseException) -> GatewayError | None:
    """The most specific gateway error for a database failure, or None for a fault of ours (a 500).

    One mapping for SQLAlchemy, asyncpg (also raw, for the charge writer) and sqlite3: a constraint violation is a
    409 `conflict`, a value the column cannot hold a 400, and only an unreachable or refusing database a 503.
    """
    if isinstance(error, GatewayError):
        return None
    orig: BaseException = (
        error.orig if isinstance(error, exc.DBAPIError) and error.orig is not None else error
    )
    state = _sqlstate(orig)
    if isinstance(error, exc.IntegrityError) or state[:2] == "23":
        return GatewayError(
            "the change conflicts with existing data (duplicate name or still referenced)",
            "conflict",
            status=409,
        )
    if state[:2] == "22":
        return BadRequest("a value does not fit its field (too long, out of range or of the wrong type)")
    if (
        state[:2] in _UNAVAILABLE_CLASSES
        or state == _LOCK_NOT_AVAILABLE
        or isinstance(
            error, exc.OperationalError | exc.InterfaceError | exc.TimeoutError | exc.DisconnectionError
        )
        # no statement: the error came while connecting (e.g. "database is not accepting connections")
        or (isinstance(error, exc.DBAPIError) and (error.connection_invalidated or error.statement is None))
        # raw asyncpg (the charge writer): a lost or confused connection
        or isinstance(
            orig,
            asyncpg.PostgresConnectionError
            | asyncpg.InterfaceError
            | asyncpg.InternalClientError
            | OSError
            | TimeoutError,
        )
    ):
        return _unavailable(orig)
    return None


class SqlErrors:
    """Map database failures raised inside it to our errors (`map_sql_error`); usable with `with` and `async with`."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _tb: object) -> None:
        if error is not None and isinstance(error, Exception):
            mapped = map_sql_error(error)
            if mapped is not None:
                raise mapped from error

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: object
    ) -> None:
        self.__exit__(kind, error, tb)


sql_errors = SqlErrors()


class ChargeWriter:
    """One dedicated asyncpg connection for the busiest PostgreSQL write (governance's settled charges).

    The statement is atomic on its own, so it runs without BEGIN/COMMIT, and outside SQLAlchemy's pool (whose
    checkout ping and return rollback would add two more round trips and most of the CPU). The ledger's group
    commit keeps at most one batch in flight, so one connection is enough; a lock covers the rare other writer
    (reconciliation retries). A broken connection is dropped and replaced on the next write.
    """

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def fetch(self, statement: str, *args: Any) -> list[Any]:
        """Run one statement with positional parameters and return its rows (database errors mapped)."""
        async with self._lock:
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(
                        self._dsn,
                        timeout=5,
                        command_timeout=15,
                        server_settings={"lock_timeout": "5000", "statement_timeout": "15000"},
                    )
                return list(await self._conn.fetch(statement, *args))
            except asyncio.CancelledError:
                self._drop()  # mid-statement: the connection's state is unknown
                raise
            except Exception as error:
                mapped = map_sql_error(error)
                if mapped is None or mapped.status == 503:
                    # any failure but the data's may leave this one connection unusable: replace it next time
                    self._drop()
                    mapped = _unavailable(error)
                raise mapped from error

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)


# The driver threads of SQLite (aiosqlite: one per connection) run the usage and charge writes: a 500-row batch
# holds the CPU for milliseconds. At the event loop's priority they share its core as equals, and the loop thread,
# woken by a response, waits behind a batch (and behind the GIL the driver takes back after every row): the
# one-connection p99 tail. A little nicer (weight 335 vs 1024: still up to a quarter of a saturated core, several
# times what the writer needs) and the kernel runs the loop thread first as soon as it wakes.
SQLITE_THREAD_NICE = 5


def _nice_driver_thread(dbapi_connection: Any) -> None:
    thread = getattr(getattr(dbapi_connection, "_connection", None), "_thread", None)
    native_id = getattr(thread, "native_id", None)
    if native_id is None or not hasattr(os, "setpriority"):
        return
    with contextlib.suppress(OSError):  # relative to the loop's own, only ever lowered: needs no privileges
        own = os.getpriority(os.PRIO_PROCESS, 0)  # the calling (event loop) thread's
        os.setpriority(os.PRIO_PROCESS, native_id, min(19, own + SQLITE_THREAD_NICE))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    _nice_driver_thread(dbapi_connection)
    # take transaction control away from the driver so `begin` below decides DEFERRED vs IMMEDIATE
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # writers take the write lock up front: a deferred read-then-write transaction could otherwise fail
    # with SQLITE_BUSY on lock upgrade, which busy_timeout cannot wait out
    mode = "BEGIN IMMEDIATE" if connection.get_execution_options().get("odock_write") else "BEGIN"
    connection.exec_driver_sql(mode)


def _upgrade(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    if connection.dialect.name == "postgresql":
        # a migration may rewrite a large table and wait for another worker's: no statement or lock time limit
        connection.execute(sa.text("SET LOCAL statement_timeout = 0"))
        connection.execute(sa.text("SET LOCAL lock_timeout = 0"))
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK})
    command.upgrade(config, "head")


class SqlStore:
    """The catalogue and ledger on one SQL database (implements `odock.state.store.Store`)."""

    def __init__(self, engine: AsyncEngine, box: SecretBox) -> None:
        self.engine = engine
        self.box = box
        self.dialect = engine.dialect.name
        self._listeners: list[ChangeListener] = []
        # SQLite has one writer at a time: queue this process's writers (catalogue, usage and governance alike)
        # here rather than in SQLite's busy handler, which sleeps in growing steps while it waits
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None
        self._charge_writer: ChargeWriter | None = None

    @classmethod
    async def open(
        cls, database_url: str, settings: Settings | None = None, *, migrate: bool = True
    ) -> SqlStore:
        """Connect, run the migrations to head, and return the store (SystemExit on bad configuration)."""
        settings = settings or Settings()
        url = normalize_database_url(database_url)
        box = load_secret_box(settings.secret_key, database_url)
        options: dict[str, Any] = {}
        if url.get_backend_name() == "sqlite":
            if url.database in (None, "", ":memory:"):
                # one shared connection, or each pooled connection would see its own empty database
                options["poolclass"] = StaticPool
            else:
                Path(url.database or "").expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
                options.update(sqlite_pool_options())
        else:
            options.update(pool_pre_ping=True, pool_size=5, max_overflow=10, connect_args=_PG_CONNECT_ARGS)
        # JSON columns through msgspec: the usage writer serializes four per record, std json is the slow part;
        # hide_parameters: a statement error (logged by callers) never carries key hashes or catalogue values
        engine = create_async_engine(
            url,
            json_serializer=_json_text,
            json_deserializer=msgspec.json.decode,
            hide_parameters=True,
            **options,
        )
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(engine.sync_engine, "begin", _sqlite_begin)
        store = cls(engine, box)
        try:
            if migrate:
                async with store.write() as conn:
                    await conn.run_sync(_upgrade)
            else:
                await store.ping()
        except BaseException:
            await engine.dispose()
            raise
        return store

    async def open_pool(self) -> None:
        """Open every connection of a SQLite file's fixed pool now, so a long-running process reaches its working
        memory at start instead of at its first burst of concurrent queries."""
        pool = self.engine.pool
        if self.dialect != "sqlite" or not isinstance(pool, AsyncAdaptedQueuePool):
            return
        async with sql_errors, AsyncExitStack() as stack:
            for _ in range(pool.size()):
                await stack.enter_async_context(self.engine.connect())

    # ------------------------------------------------------------------ connections and transactions

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a read transaction, with driver errors mapped."""
        async with sql_errors, self.engine.connect() as conn, conn.begin():
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a write transaction (committed on success), with driver errors mapped."""
        async with AsyncExitStack() as stack:
            if self._write_lock is not None:
                await stack.enter_async_context(self._write_lock)
            await stack.enter_async_context(sql_errors)
            conn = await stack.enter_async_context(self.engine.connect())
            conn = await conn.execution_options(odock_write=True)
            await stack.enter_async_context(conn.begin())
            yield conn

    @asynccontextmanager
    async def mutate(self) -> AsyncIterator[AsyncConnection]:
        """A catalogue write transaction: bumps catalogue_version before commit, notifies listeners after."""
        async with self.write() as conn:
            yield conn
            await self.bump_version(conn)
        await self.notify_changed()

    async def bump_version(self, conn: AsyncConnection) -> None:
        """Count a catalogue change in this write transaction (other processes poll the counter)."""
        await conn.execute(
            schema.catalogue_version.update()
            .where(schema.catalogue_version.c.id == 1)
            .values(version=schema.catalogue_version.c.version + 1)
        )

    @property
    def charge_writer(self) -> ChargeWriter | None:
        """PostgreSQL: the dedicated connection for governance's settled charges (opened on first use)."""
        if self.dialect != "postgresql":
            return None
        if self._charge_writer is None:
            dsn = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._charge_writer = ChargeWriter(dsn)
        return self._charge_writer

    def add_change_listener(self, listener: ChangeListener) -> None:
        """Call `await listener()` after every committed catalogue mutation made through this store."""
        self._listeners.append(listener)

    def remove_change_listener(self, listener: ChangeListener) -> None:
        """Stop calling `listener`."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    async def notify_changed(self) -> None:
        """Run the change listeners of this process (after a committed catalogue change)."""
        for listener in list(self._listeners):
            try:
                await listener()
            except Exception:
                # the change is committed; a failing cache hook must not turn it into an error
                log.exception("catalogue change listener failed")

    # ------------------------------------------------------------------ row → record

    def organisation_from_row(self, row: RowLike) -> Organisation:
        """Build an Organisation from a row."""
        return Organisation(
            id=row["id"], name=row["name"], timezone=row["timezone"], policies=row["policies"] or {}
        )

    def team_from_row(self, row: RowLike) -> Team:
        """Build a Team from a row."""
        return Team(
            id=row["id"],
            organisation_id=row["organisation_id"],
            name=row["name"],
            policies=row["policies"] or {},
        )

    def user_from_row(self, row: RowLike) -> User:
        """Build a User from a row."""
        return User(
            id=row["id"], organisation_id=row["organisation_id"], email=row["email"], name=row["name"]
        )

    def key_from_row(self, row: RowLike) -> ApiKeyRecord:
        """Build an ApiKeyRecord from a row."""
        return ApiKeyRecord(
            id=row["id"],
            name=row["name"],
            key_hash=row["key_hash"],
            key_preview=row["key_preview"],
            type=row["type"],
            organisation_id=row["organisation_id"],
            team_id=row["team_id"],
            user_id=row["user_id"],
            expires_at=row["expires_at"],
            revoked=bool(row["revoked"]),
            timezone=row["timezone"],
            policies=row["policies"] or {},
            rotation_count=row["rotation_count"],
            created_at=row["created_at"],
        )

    def provider_from_row(self, row: RowLike) -> ProviderRecord:
        """Build a ProviderRecord from a row, decrypting its credential."""
        encrypted = row["api_key_encrypted"]
        return ProviderRecord(
            id=row["id"],
            organisation_id=row["organisation_id"],
            name=row["name"],
            type=row["type"],
            base_url=row["base_url"],
            api_key=self.box.decrypt(encrypted) if encrypted else None,
            timeout_ms=row["timeout_ms"],
            enabled=bool(row["enabled"]),
            config=row["config"] or {},
        )

    def model_from_row(self, row: RowLike) -> ModelRecord:
        """Build a ModelRecord from a row."""
        return ModelRecord(
            id=row["id"],
            organisation_id=row["organisation_id"],
            name=row["name"],
            slug=row["slug"],
            provider_id=row["provider_id"],
            type=row["type"],
            capabilities=list(row["capabilities"] or []),
            pricing=row["pricing"] or {},
            policies=row["policies"] or {},
            config=row["config"] or {},
        )

    # ------------------------------------------------------------------ Store protocol

    async def _one(self, query: sa.Select[Any]) -> RowLike | None:
        async with self.read() as conn:
            row: RowLike | None = (await conn.execute(query)).mappings().first()
        return row

    async def find_key(self, key_hash: str) -> ApiKeyRecord | None:
        """Return the key whose secret hashes to `key_hash`."""
        row = await self._one(sa.select(schema.api_keys).where(schema.api_keys.c.key_hash == key_hash))
        return self.key_from_row(row) if row else None

    async def has_keys(self) -> bool:
        """Whether the catalogue holds at least one API key (an empty one gets a hint at start)."""
        return await self._one(sa.select(schema.api_keys.c.id).limit(1)) is not None

    async def find_model(self, organisation_id: str, name: str) -> ModelRecord | None:
        """Return the organisation's model called `name`."""
        t = schema.models
        row = await self._one(sa.select(t).where(t.c.organisation_id == organisation_id, t.c.name == name))
        return self.model_from_row(row) if row else None

    async def get_model(self, model_id: str) -> ModelRecord | None:
        """Return the model with this id."""
        row = await self._one(sa.select(schema.models).where(schema.models.c.id == model_id))
        return self.model_from_row(row) if row else None

    async def get_provider(self, provider_id: str) -> ProviderRecord | None:
        """Return the provider with its credential decrypted."""
        row = await self._one(sa.select(schema.providers).where(schema.providers.c.id == provider_id))
        return self.provider_from_row(row) if row else None

    async def granted_model_ids(self, api_key_id: str) -> frozenset[str]:
        """Return the ids of the models this key may call."""
        t = schema.key_model_grants
        async with self.read() as conn:
            rows = await conn.execute(sa.select(t.c.model_id).where(t.c.api_key_id == api_key_id))
            return frozenset(row[0] for row in rows)

    async def get_organisation(self, organisation_id: str) -> Organisation | None:
        """Return the organisation with this id."""
        t = schema.organisations
        row = await self._one(sa.select(t).where(t.c.id == organisation_id))
        return self.organisation_from_row(row) if row else None

    async def get_team(self, team_id: str) -> Team | None:
        """Return the team with this id."""
        row = await self._one(sa.select(schema.teams).where(schema.teams.c.id == team_id))
        return self.team_from_row(row) if row else None

    async def get_user(self, user_id: str) -> User | None:
        """Return the user with this id."""
        row = await self._one(sa.select(schema.users).where(schema.users.c.id == user_id))
        return self.user_from_row(row) if row else None

    async def policies_mentioning(self, *sections: str) -> list[dict[str, Any]]:
        """The policy envelopes (organisations, teams, keys, models) that name one of `sections` (e.g. "cache",
        "safety"): whether the gateway needs those stages at all. A text prefilter keeps this unindexed scan
        cheap; it runs at start and on each catalogue change, which are rare."""
        found: list[dict[str, Any]] = []
        async with self.read() as conn:
            for table in (schema.organisations, schema.teams, schema.api_keys, schema.models):
                text = sa.cast(table.c.policies, sa.Text)
                mentions = sa.or_(*(text.like(f'%"{section}"%') for section in sections))
                rows = await conn.execute(sa.select(table.c.policies).where(mentions))
                found += [policies for (policies,) in rows if isinstance(policies, dict)]
        return found

    async def catalogue_version(self) -> int:
        """Return the catalogue version counter (grows on every mutation, from any process)."""
        t = schema.catalogue_version
        async with self.read() as conn:
            value = (await conn.execute(sa.select(t.c.version).where(t.c.id == 1))).scalar_one_or_none()
        return int(value or 0)

    async def insert_usage(self, records: Sequence[UsageRecord]) -> None:
        """Insert usage rows in one executemany; rows whose id is already stored (a retried batch) are skipped.

        The ledger writer is the busiest SQL path, so it skips SQLAlchemy's per-row compilation and bind
        processing: one prepared statement, rows as tuples converted here exactly as the column types would.
        """
        if not records:
            return
        sqlite = self.dialect == "sqlite"
        # the batch's rows and rollup increments are prepared before the write, a slice at a time with an event-loop
        # turn between slices: in one go, a 2,000-record batch held the loop ~4 ms, and at one connection a request
        # in fifty waited for it (p99 2.4-3 ms). The statements stay one executemany per table and batch: slicing
        # those too cut the same p99 but halved what the writer keeps up with at saturation.
        rows: list[tuple[Any, ...]] = []
        batch = rollups.Aggregate()
        for start in range(0, len(records), _PREPARE_SLICE):
            if start:
                await asyncio.sleep(0)
            piece = records[start : start + _PREPARE_SLICE]
            rows.extend([_usage_values(record, sqlite) for record in piece])
            batch.add(piece)
        hourly, daily = batch.rows()
        try:
            async with self.write() as conn:
                inserted = await self._insert_usage_rows(conn, rows, sqlite)
                if inserted != len(rows):
                    # a retried batch: some rows were stored already and must not count twice in the rollups;
                    # undo and redo without them (rare, so the common batch pays no extra query for it)
                    raise _RetriedBatch
                await _upsert_rollups(conn, hourly, daily, sqlite)
                await _insert_mcp_rows(conn, records, rows, sqlite)
        except _RetriedBatch:
            async with self.write() as conn:
                stored = await _stored_usage_ids(conn, [record.id for record in records], sqlite)
                fresh = [record for record in records if record.id not in stored]
                if fresh:
                    fresh_rows = [_usage_values(r, sqlite) for r in fresh]
                    await self._insert_usage_rows(conn, fresh_rows, sqlite)
                    await _upsert_rollups(conn, *rollups.aggregate(fresh), sqlite)
                    await _insert_mcp_rows(conn, fresh, fresh_rows, sqlite)

    async def _insert_usage_rows(
        self, conn: AsyncConnection, rows: list[tuple[Any, ...]], sqlite: bool
    ) -> int:
        if sqlite:
            result = await conn.exec_driver_sql(_USAGE_INSERT_SQLITE, rows)
        else:
            result = await conn.exec_driver_sql(
                _USAGE_INSERT_PG, tuple(list(column) for column in zip(*rows, strict=False))
            )
        return int(result.rowcount)

    async def ping(self) -> None:
        """Raise DependencyUnavailable when the database cannot answer."""
        async with self.read() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def close(self) -> None:
        """Close the charge writer's connection and every pooled connection."""
        try:
            if self._charge_writer is not None:
                await self._charge_writer.close()
        finally:
            await self.engine.dispose()


# every field but the last (`mcp`: the MCP sidecar row, written to mcp_usage_records)
_USAGE_FIELDS = tuple(UsageRecord.__struct_fields__)[:-1]
# records prepared per event-loop turn by the usage writer (~0.2 ms of work)
_PREPARE_SLICE = 16
assert UsageRecord.__struct_fields__[-1] == "mcp"
_CREATED_AT = _USAGE_FIELDS.index("created_at")
_JSON_COLUMNS = tuple(_USAGE_FIELDS.index(name) for name in ("pricing", "raw_usage", "routing", "metadata"))
_USAGE_INSERT_SQLITE = (
    f"INSERT INTO usage_records ({', '.join(_USAGE_FIELDS)}) VALUES ({', '.join('?' * len(_USAGE_FIELDS))}) "
    "ON CONFLICT (id) DO NOTHING"
)


def _pg_array_type(column: sa.Column[Any]) -> str:
    kind = column.type
    if isinstance(kind, sa.BigInteger):
        return "int8"
    if isinstance(kind, sa.Integer):
        return "int4"
    if isinstance(kind, sa.Boolean):
        return "bool"
    if isinstance(kind, schema.UTCDateTime):
        return "timestamptz"
    return "text"  # strings, and JSON as text cast to jsonb below


# PostgreSQL: the whole batch as one statement over column arrays (one execution server-side instead of one per
# row, about 5x less work for the database than executemany)
_USAGE_INSERT_PG = (
    f"INSERT INTO usage_records ({', '.join(_USAGE_FIELDS)}) SELECT "
    + ", ".join(
        f"{name}::jsonb" if index in _JSON_COLUMNS else name for index, name in enumerate(_USAGE_FIELDS)
    )
    + " FROM unnest("
    + ", ".join(
        f"${n}::{_pg_array_type(schema.usage_records.c[name])}[]"
        for n, name in enumerate(_USAGE_FIELDS, start=1)
    )
    + f") AS batch({', '.join(_USAGE_FIELDS)}) ON CONFLICT (id) DO NOTHING"
)


# mcp_usage_records: the MCP fields, and the parent record's that the MCP record repeats (for its own filters)
_MCP_FIELDS = tuple(McpUsage.__struct_fields__)
_MCP_PARENT = (
    "id",
    "request_id",
    "created_at",
    "organisation_id",
    "team_id",
    "user_id",
    "api_key_id",
    "status",
    "error_code",
    "latency_ms",
    "cost_nanos",
    "pricing",
)
_MCP_COLUMNS = tuple(
    "mcp_server_id" if name == "server_id" else name for name in (*_MCP_PARENT, *_MCP_FIELDS)
)
# where each parent column sits in the usage row (already converted there: the timestamp, the pricing's JSON)
_MCP_FROM_USAGE = tuple(_USAGE_FIELDS.index(name) for name in _MCP_PARENT)
_MCP_METADATA = _MCP_COLUMNS.index("metadata") - len(_MCP_PARENT)
_MCP_JSON = tuple(_MCP_COLUMNS.index(name) for name in ("pricing", "metadata"))
_MCP_INSERT_SQLITE = (
    f"INSERT INTO mcp_usage_records ({', '.join(_MCP_COLUMNS)}) VALUES ({', '.join('?' * len(_MCP_COLUMNS))}) "
    "ON CONFLICT (id) DO NOTHING"
)
_MCP_INSERT_PG = (
    f"INSERT INTO mcp_usage_records ({', '.join(_MCP_COLUMNS)}) SELECT "
    + ", ".join(f"{name}::jsonb" if index in _MCP_JSON else name for index, name in enumerate(_MCP_COLUMNS))
    + " FROM unnest("
    + ", ".join(
        f"${n}::{_pg_array_type(schema.mcp_usage_records.c[name])}[]"
        for n, name in enumerate(_MCP_COLUMNS, start=1)
    )
    + f") AS batch({', '.join(_MCP_COLUMNS)}) ON CONFLICT (id) DO NOTHING"
)


def _mcp_values(usage_row: tuple[Any, ...], mcp: McpUsage) -> tuple[Any, ...]:
    own = list(msgspec.structs.astuple(mcp))
    if own[_MCP_METADATA] is not None:
        own[_MCP_METADATA] = _json_text(own[_MCP_METADATA])
    return (*[usage_row[index] for index in _MCP_FROM_USAGE], *own)


async def _insert_mcp_rows(
    conn: AsyncConnection, records: Sequence[UsageRecord], usage_rows: list[tuple[Any, ...]], sqlite: bool
) -> None:
    """The batch's MCP usage records, in the transaction of their usage records (one statement, none when the
    batch holds no MCP call); their shared columns are taken from the usage rows, converted once."""
    rows = [
        _mcp_values(row, record.mcp)
        for record, row in zip(records, usage_rows, strict=True)
        if record.mcp is not None
    ]
    if not rows:
        return
    if sqlite:
        await conn.exec_driver_sql(_MCP_INSERT_SQLITE, rows)
    else:
        await conn.exec_driver_sql(_MCP_INSERT_PG, tuple(list(column) for column in zip(*rows, strict=True)))


class _RetriedBatch(Exception):
    """Raised inside the ledger's write transaction to roll it back when some rows were stored already."""


async def _stored_usage_ids(conn: AsyncConnection, ids: list[str], sqlite: bool) -> set[str]:
    if sqlite:
        found: set[str] = set()
        for start in range(0, len(ids), 500):  # under SQLite's bound-parameter limit
            chunk = ids[start : start + 500]
            sql = f"SELECT id FROM usage_records WHERE id IN ({', '.join('?' * len(chunk))})"
            found.update(row[0] for row in await conn.exec_driver_sql(sql, tuple(chunk)))
        return found
    result = await conn.exec_driver_sql("SELECT id FROM usage_records WHERE id = ANY($1::text[])", (ids,))
    return {row[0] for row in result}


async def _upsert_rollups(
    conn: AsyncConnection, hourly: list[tuple[Any, ...]], daily: list[tuple[Any, ...]], sqlite: bool
) -> None:
    """Add a batch's increments to the hourly and daily rollups (rows in key order, so concurrent writers never
    deadlock)."""
    if not hourly:
        return
    if sqlite:
        await conn.exec_driver_sql(rollups.HOURLY_UPSERT_SQLITE, hourly)
        await conn.exec_driver_sql(rollups.DAILY_UPSERT_SQLITE, daily)
    else:
        # rows are unique by key within each list (aggregated), so one statement cannot update a row twice
        for statement, rows in ((rollups.HOURLY_UPSERT_PG, hourly), (rollups.DAILY_UPSERT_PG, daily)):
            if rows:
                await conn.exec_driver_sql(
                    statement, tuple(list(column) for column in zip(*rows, strict=True))
                )


def _json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _usage_values(record: UsageRecord, sqlite: bool) -> tuple[Any, ...]:
    values = list(msgspec.structs.astuple(record))[:-1]  # without `mcp`
    created: datetime = values[_CREATED_AT].astimezone(UTC)
    # SQLite: the naive UTC text SQLAlchemy's DATETIME stores (UTCDateTime reads it back as aware UTC)
    values[_CREATED_AT] = created.replace(tzinfo=None).isoformat(" ", "microseconds") if sqlite else created
    for index in _JSON_COLUMNS:
        if values[index] is not None:
            values[index] = _json_text(values[index])
    return tuple(values)
