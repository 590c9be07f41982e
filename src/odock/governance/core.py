"""The governance facade the pipeline calls: pre_auth → early → final → (upstream) → complete.

Stages (reference §2.2, §5.3):
  pre_auth   global policy: IP allow/block, then the global scope's RPS/RPM/burst (before any auth or DB work).
  early      org/team/key IP rules; payload bytes and max_tokens (if known) on global/org/team/key; concurrency
             lease on global/org/team/key; RPS/RPM/burst on org/team/key. One limiter round trip.
  final      model scope joins: payload/max_tokens caps on every scope; model RPS/RPM/burst/concurrency; TPM
             reservation (estimated input + output cap) on every scope — one limiter round trip; then one budget
             and quota reservation over every active matching window (org → team/user → key) of the most an
             honest provider can bill (`governance.bounds`); a request naming no output cap gets the reserved one.
  complete   post-flight: drop leases, refund unused tokens, settle budgets/quotas to actual (or release); a
             charge above its reservation is kept, counted and raised as an overspend budget event.
             Idempotent per call, never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from odock import metrics
from odock.context import CallContext
from odock.errors import DependencyUnavailable, GatewayError, PaymentRequired, TooManyRequests
from odock.governance import bounds, pricing
from odock.governance.ledger import Item, LocalLedger, RedisLedger, WindowRef
from odock.governance.limiter import Check, GateResult, Limiter, LocalLimiter, RedisLimiter
from odock.governance.periods import as_aware, window_at
from odock.governance.policy import (
    API_KEY,
    DEFAULT_LEASE_TTL_S,
    GLOBAL,
    IP,
    MODEL,
    ORGANISATION,
    TEAM,
    Limits,
    PolicyCache,
    ip_denied,
    parse_ip,
    parse_policy,
)
from odock.governance.resp import LuaScript, ScriptRunner
from odock.governance.store import Budget, BudgetEvent, GovernanceStore, NewEvent, Quota
from odock.settings import Settings
from odock.state.redis import REDIS_ERRORS as _REDIS_ERRORS

if TYPE_CHECKING:
    import redis.asyncio

    from odock.state.sql import SqlStore

log = logging.getLogger("odock.governance")
# settled charges are kept at least this long (and at least twice the reservation TTL), then pruned
_CHARGE_RETENTION_S = 86_400.0
_CACHE_SIZE = 4096

DECISIONS = metrics.RATELIMIT_DECISIONS
ERRORS = metrics.GOVERNANCE_ERRORS

# The decisions every admitted call counts, tallied in plain ints on the hot path (a Prometheus `inc` takes a lock
# and ~0.3 µs; a call made six) and added to the counters by the background loop each flush interval and on close.
_TALLIED = (
    metrics.child(DECISIONS, "early", "allow"),
    metrics.child(DECISIONS, "final", "allow"),
    metrics.child(DECISIONS, "budget", "reserved"),
    metrics.child(metrics.BUDGET_DECISIONS, "reserved"),
    metrics.child(DECISIONS, "settle", "settled"),
    metrics.child(metrics.BUDGET_DECISIONS, "settled"),
    metrics.child(DECISIONS, "settle", "released"),
    metrics.child(metrics.BUDGET_DECISIONS, "released"),
)
# indexes into `_TALLIED`; reserved, settled and released are pairs (the gate's counter, then the budget's)
_EARLY_ALLOW = 0
_FINAL_ALLOW = 1
_RESERVED = 2
_SETTLED = 4
_RELEASED = 6

_OWNER_SCOPE = {"ORG": ORGANISATION, "TEAM": TEAM, "USER": "user", "APIKEY": API_KEY}


@dataclass(slots=True)
class Held(Item):
    """One budget/quota window held by a call (the item reserved in it), with how its actual amount is measured."""

    definition: Budget | Quota
    # whether the reservation bounds the charge (not an ERRORS or LATENCY_MS quota: known only afterwards,
    # reserved 0 by design)
    bounded: bool = True

    @property
    def item(self) -> Item:
        """The item reserved (the held window itself: one object per window, not two)."""
        return self


def _token() -> str:
    """A lease/reservation owner token: unique, not secret (no system call per call, unlike os.urandom)."""
    return random.getrandbits(128).to_bytes(16, "big").hex()  # 32 hex digits, cheaper than a format spec


class Rider(Protocol):
    """A Redis script call another stage hands the final gate (`ctx.redis_riders`), sent in the gate's round trip
    when the gate goes to Redis, else on its own. Each script is atomic; `done` gets its reply and `failed` a Redis
    error (either may raise to refuse the call, after the gate's receipts are recorded for the post-flight)."""

    script: str
    keys: list[str]
    args: list[Any]

    def done(self, reply: Any) -> None: ...

    def failed(self, exc: BaseException) -> None: ...


@dataclass(slots=True)
class Receipt:
    """What a call holds: leases, token reservations, the budget/quota reservation. Lives in ctx.governance."""

    request_id: str
    token: str
    leases: list[tuple[Limiter, str]] = field(default_factory=list)
    tokens: list[tuple[Limiter, str, int, int]] = field(
        default_factory=list
    )  # limiter, key, second, reserved
    header: tuple[int, int, int] | None = None  # limit, remaining, reset seconds
    ledger: LocalLedger | RedisLedger | None = None
    reservation_id: str | None = None
    held: list[Held] = field(default_factory=list)
    output_tokens: int | None = None  # output tokens a budget or token/cost quota reservation covers
    done: bool = False
    # the last `_actuals` answer and what it was computed from (compared by identity)
    actual_memo: tuple[tuple[Any, ...], dict[str, int]] | None = None
    scopes: _Scopes | None = None  # the caller's scope plan, found once per call

    @property
    def reserved_tokens(self) -> int:
        return max((t[3] for t in self.tokens), default=0)

    def keep_tightest(self, checks: list[Check], result: GateResult) -> None:
        """Keep the X-RateLimit-* window with the least left of this gate's and the earlier gates'."""
        header = _header(checks, result)
        if header is not None and (self.header is None or header[1] < self.header[1]):
            self.header = header


@dataclass(slots=True)
class _Plan:
    """What one call reserves: its reservation id and the windows (with amounts) it must fit in."""

    reservation_id: str
    held: list[Held]
    now: datetime
    bounds_output: bool  # whether a held window's reservation depends on the output cap


@dataclass(slots=True, eq=False)
class _Scopes:
    """What the caller's scopes (global → organisation → team → key) ask of every call, built once per set of
    catalogue records (records are replaced on change, never mutated) instead of per call."""

    records: tuple[Any, Any, Any]  # organisation, team, key: held, so their ids stay theirs while cached
    scopes: list[tuple[str, str, Limits]]
    ip: list[tuple[str, Limits]]  # the non-global scopes with IP rules
    static: list[tuple[str, Limits]]  # the scopes with a payload or max_tokens cap
    tightest: tuple[int, int]  # their smallest payload and max_tokens caps (0: none): below both, all pass
    checks: list[Check]  # the early gate's
    lease_keys: list[str]  # the keys of its concurrency leases
    owners: list[tuple[str, str, str]]  # budget/quota owners, enforcement order: (type, id, time zone)
    # the owners' active budgets and quotas as (definition, key prefix, limit, time zone, metric), for the
    # definition tables they were read from
    entries: list[tuple[Budget | Quota, str, int, str, str]] = field(default_factory=list)
    entries_of: tuple[Any, Any] | None = None


@dataclass(slots=True, eq=False)
class _ModelScopes:
    """The final gate's share of the work that only changes with the caller's scopes and the model."""

    records: tuple[_Scopes, Any]
    model_limits: Limits
    static: list[tuple[str, Limits]]  # every scope with a payload or max_tokens cap, the model's included
    tightest: tuple[int, int]
    caps: list[int]  # the scopes' max_tokens
    checks: list[Check]  # the model's request checks
    tpm: list[tuple[str, str, int]]  # (scope, counter key, limit) of every scope with a TPM limit
    lease_keys: list[str]  # the keys of the model's concurrency leases


class _Definitions:
    """Active budgets and quotas by owner, held in memory and refreshed when the tables change."""

    def __init__(self) -> None:
        self.version: tuple[Any, ...] | None = None
        self.budgets: dict[tuple[str, str], list[Budget]] = {}
        self.quotas: dict[tuple[str, str], list[Quota]] = {}
        self.budget_by_id: dict[str, Budget] = {}

    async def load(self, store: GovernanceStore) -> None:
        version = await store.definitions_version()
        if version == self.version:
            return
        budgets: dict[tuple[str, str], list[Budget]] = {}
        quotas: dict[tuple[str, str], list[Quota]] = {}
        all_budgets = [b for b in await store.list_budgets() if b.active]
        for b in all_budgets:
            budgets.setdefault((b.owner_type, b.owner_id), []).append(b)
        for q in await store.list_quotas():
            if q.active:
                quotas.setdefault((q.owner_type, q.owner_id), []).append(q)
        self.budgets, self.quotas = budgets, quotas
        self.budget_by_id = {b.id: b for b in all_budgets}
        self.version = version


class Governance:
    """Rate limits, quotas and budgets for the gateway pipeline, embedded or cluster."""

    def __init__(
        self,
        settings: Settings,
        store: GovernanceStore,
        redis: redis.asyncio.Redis | None,
        *,
        owns_redis: bool,
        key_prefix: str,
        reservation_ttl_s: float,
        reconcile_interval_s: float,
    ) -> None:
        self.settings = settings
        self.store = store
        self.redis = redis
        self._owns_redis = owns_redis
        self._policies = PolicyCache()
        # per-call work that only changes with the policy or the period: built once, reused (bounded caches)
        self._checks: dict[tuple[str, str, int, bool], tuple[Limits, list[Check]]] = {}
        self._scope_plans: dict[tuple[int, int, int], _Scopes] = {}
        # a budget's thresholds, sorted, with the amount each marks: computed once
        self._marks: dict[int, tuple[Budget, list[tuple[int, float]]]] = {}
        self._model_plans: dict[tuple[int, int], _ModelScopes] = {}
        self._windows: dict[tuple[int, str], tuple[Budget | Quota, WindowRef, datetime, datetime]] = {}
        self.global_limits = parse_policy(settings.ratelimit_global_policy)
        self._global_empty = self.global_limits.empty
        self.local_limiter = LocalLimiter()
        self.local_ledger = LocalLedger(store, reservation_ttl_s=reservation_ttl_s)
        self.redis_limiter: RedisLimiter | None = None
        self.redis_ledger: RedisLedger | None = None
        self.redis_runner: ScriptRunner | None = None
        self._rider_scripts: dict[str, LuaScript] = {}
        if redis is not None:
            # one pipelined connection for limiter and ledger, so the final gate and the reservation share a write
            self.redis_runner = ScriptRunner.like(redis)
            self.redis_limiter = RedisLimiter(redis, key_prefix, self.redis_runner)
            self.redis_ledger = RedisLedger(
                redis, store, key_prefix, reservation_ttl_s=reservation_ttl_s, runner=self.redis_runner
            )
        self.definitions = _Definitions()
        self._reconcile_interval = reconcile_interval_s
        self._events: list[NewEvent] = []
        self._tally = [0] * len(_TALLIED)  # decisions not yet added to their counters (see `_TALLIED`)
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    @classmethod
    async def open(
        cls,
        settings: Settings,
        *,
        store: SqlStore,
        redis: redis.asyncio.Redis | None,
        key_prefix: str = "odock:gov",
        reservation_ttl_s: float | None = None,
        reconcile_interval_s: float | None = None,
    ) -> Governance:
        """Load budget/quota definitions from the catalogue's store, start the reconciliation task."""
        owns = False
        if redis is None and settings.cluster:
            import redis.asyncio as aioredis

            redis = aioredis.from_url(settings.redis_url)
            owns = True
        self = cls(
            settings,
            GovernanceStore(store),
            redis,
            owns_redis=owns,
            key_prefix=key_prefix,
            # explicit arguments win over the settings (ODOCK_RESERVATION_TTL, ODOCK_RECONCILE_INTERVAL)
            reservation_ttl_s=settings.reservation_ttl_s if reservation_ttl_s is None else reservation_ttl_s,
            reconcile_interval_s=(
                settings.reconcile_interval_s if reconcile_interval_s is None else reconcile_interval_s
            ),
        )
        try:
            await self.definitions.load(self.store)
        except BaseException:
            await self.close()  # the Redis connections opened above
            raise
        self._task = asyncio.create_task(self._background(), name="odock-governance")
        return self

    async def close(self) -> None:
        """Stop the background task, flush settled charges and events, close connections."""
        if self._task is not None:
            # let the loop finish its current step: cancelling a driver call mid-query can wedge its connection
            self._stop.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=5.0)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self._flush()
        if self.redis_limiter is not None:
            await self.redis_limiter.close()
        if self.redis_ledger is not None:
            await self.redis_ledger.close()  # after the task: a later script call would reconnect
        if self.redis_runner is not None:
            await self.redis_runner.close()
        if self._owns_redis and self.redis is not None:
            await self.redis.aclose()

    # --- stages --------------------------------------------------------------------------------------------------

    async def pre_auth(self, client_ip: str) -> None:
        """Refuse blocked IPs (429 ip_not_allowed) and enforce the global request rate before auth."""
        limits = self.global_limits
        if self._global_empty:
            return
        reason = ip_denied(limits, parse_ip(client_ip))
        if reason is not None:
            metrics.child(DECISIONS, "pre_auth", "deny").inc()
            raise TooManyRequests(
                "client IP is not allowed", "ip_not_allowed", extra={"scope": IP, "limit": reason}
            )
        checks = self._request_checks(GLOBAL, "-", limits, leases=False)
        if checks:
            result, _ = await self._gate(checks, _token())
            self._raise_if_denied("pre_auth", checks, result)

    async def early(self, ctx: CallContext) -> None:
        """Run the early gate: IP rules, payload, max_tokens, concurrency, burst, RPS, RPM."""
        receipt = Receipt(ctx.request_id, _token())
        plan = receipt.scopes = self._scopes_of(ctx)
        if plan.ip:
            address = parse_ip(ctx.client_ip)
            for scope, limits in plan.ip:
                reason = ip_denied(limits, address)
                if reason is not None:
                    metrics.child(DECISIONS, "early", "deny").inc()
                    raise TooManyRequests(
                        "client IP is not allowed", "ip_not_allowed", extra={"scope": scope, "limit": reason}
                    )
        if plan.static and _over(plan.tightest, ctx):
            for scope, limits in plan.static:
                self._static_checks(scope, limits, ctx)
        checks, lease_keys = plan.checks, plan.lease_keys
        # an MCP server's policy joins the caller's scopes (reference §2.3 step 10)
        if ctx.extra_scope is not None:
            scope, ident, raw = ctx.extra_scope
            limits = self._policies.get(raw)
            if limits.max_request_bytes:
                self._static_checks(scope, limits, ctx)
            extra = self._request_checks(scope, ident, limits, leases=True)
            if extra:
                checks = [*checks, *extra]
                lease_keys = [*lease_keys, *(c.key for c in extra if c.kind == "L")]
        if checks:
            result, limiter = await self._gate(checks, receipt.token)
            self._raise_if_denied("early", checks, result)
            receipt.leases = [(limiter, key) for key in lease_keys]
            receipt.header = _header(checks, result)
        ctx.governance = receipt
        self._tally[_EARLY_ALLOW] += 1

    async def final(self, ctx: CallContext) -> None:  # noqa: C901 - older than the complexity rule; to split
        """Run the final gate (model limits, caps, TPM) and reserve budgets and quotas."""
        receipt = ctx.governance
        if not isinstance(receipt, Receipt):
            receipt = Receipt(ctx.request_id, _token())
            ctx.governance = receipt
        plan_m = self._model_scopes_of(ctx)
        static, caps, tpm = plan_m.static, plan_m.caps, plan_m.tpm
        extra = None
        if ctx.extra_scope is not None:
            extra = (ctx.extra_scope[0], ctx.extra_scope[1], self._policies.get(ctx.extra_scope[2]))
            if extra[2].max_request_bytes or extra[2].max_tokens:
                static = [*static, (extra[0], extra[2])]
            if extra[2].max_tokens:
                caps = [*caps, extra[2].max_tokens]
            if extra[2].tpm:
                tpm = [*tpm, (extra[0], f"{extra[0]}:{extra[1]}:tpm2", extra[2].tpm)]
        defs = self.definitions
        if not (static or tpm or plan_m.checks or ctx.redis_riders) and (
            receipt.ledger is not None or not (defs.budgets or defs.quotas)
        ):
            self._tally[_FINAL_ALLOW] += 1  # nothing to check, cap or reserve: no more to do
            return
        if static and (extra is not None or _over(plan_m.tightest, ctx)):
            for scope, limits in static:
                self._static_checks(scope, limits, ctx)
        cap, cap_chosen = bounds.output_cap(ctx.max_tokens, caps, ctx.model)
        if ctx.output == "none" or not (tpm or (receipt.ledger is None and (defs.budgets or defs.quotas))):
            out_tokens = 0  # nothing reserves output tokens: the prompt need not be measured
        elif ctx.output == "images":
            out_tokens = (ctx.prompt.choices if ctx.prompt else 1) * bounds.image_output_tokens(ctx.model)
        else:  # reasoning/thinking tokens are output inside the cap
            out_tokens = (ctx.prompt.choices if ctx.prompt else 1) * cap
        estimated = ctx.estimated_input_tokens
        reserve_tokens = (estimated if estimated > 0 else 0) + out_tokens
        checks = list(plan_m.checks)  # (an extra scope's request rates were counted by the early gate)
        for scope, key, limit in tpm:
            checks.append(Check("T", key, limit, reserve_tokens, "tpm_exceeded", scope, "tokens_per_minute"))
        plan = self._reservation_plan(ctx, receipt, out_tokens)
        reply = None  # the reserve script's reply, when it went to Redis together with the gate
        riders, ctx.redis_riders = ctx.redis_riders or [], None
        rides = [self._ride(r) for r in riders] if self.redis_runner is not None else []
        ridden: list[Any] | None = None  # the riders' replies, when they went with the gate
        if checks:
            if plan is not None and self.redis_runner is not None:
                result, limiter, reply, ridden = await self._gate_and_reserve(
                    checks, receipt.token, plan, rides
                )
            elif rides:
                result, limiter, ridden = await self._gate_riding(checks, receipt.token, rides)
            else:
                result, limiter = await self._gate(checks, receipt.token)
            self._raise_if_denied("final", checks, result)
            second = result.now_ms // 1000
            receipt.leases += [(limiter, key) for key in plan_m.lease_keys]
            receipt.tokens += [(limiter, key, second, reserve_tokens) for _, key, _ in tpm]
            receipt.keep_tightest(checks, result)
        self._tally[_FINAL_ALLOW] += 1
        if plan is not None:
            await self._reserve(receipt, plan, reply)
            if plan.bounds_output:
                receipt.output_tokens = out_tokens
                if cap_chosen and ctx.output == "text":
                    # the reservation holds only if the upstream cannot generate more: the endpoint sends this cap
                    ctx.max_tokens, ctx.output_cap_added = cap, True
        if riders:
            await self._deliver(riders, rides, ridden)

    def _ride(self, rider: Rider) -> tuple[LuaScript, list[str], list[Any]]:
        script = self._rider_scripts.get(rider.script)
        if script is None:
            script = self._rider_scripts[rider.script] = LuaScript(rider.script)
        return script, rider.keys, rider.args

    async def _gate_riding(
        self, checks: list[Check], token: str, rides: list[tuple[LuaScript, list[str], list[Any]]]
    ) -> tuple[GateResult, Limiter, list[Any] | None]:
        """The final gate with the riders' scripts in one round trip (None: they did not go)."""
        limiter, runner = self.redis_limiter, self.redis_runner
        assert limiter is not None and runner is not None
        try:
            gate_reply, *replies = await runner.run_many([limiter.gate_call(checks, token), *rides])
        except _REDIS_ERRORS:
            result, fallback = await self._gate(checks, token)
            return result, fallback, None
        return limiter.gate_result(gate_reply), limiter, replies

    async def _deliver(
        self,
        riders: list[Rider],
        rides: list[tuple[LuaScript, list[str], list[Any]]],
        replies: list[Any] | None,
    ) -> None:
        """Hand each rider its reply; those that did not go with the gate run now, on their own."""
        for index, rider in enumerate(riders):
            if replies is not None:
                rider.done(replies[index])
                continue
            if self.redis_runner is None:
                rider.failed(RuntimeError("no Redis in embedded mode"))
                continue
            try:
                reply = await self.redis_runner.run(*rides[index])
            except _REDIS_ERRORS as exc:
                rider.failed(exc)
                continue
            rider.done(reply)

    async def complete(self, ctx: CallContext, cost_nanos: int | None) -> None:
        """Post-flight: release leases, refund tokens, settle or release budgets/quotas. Never raises."""
        receipt = ctx.governance
        if not isinstance(receipt, Receipt) or receipt.done:
            return
        receipt.done = True
        usage = ctx.usage
        if receipt.leases or receipt.tokens:  # (most calls hold none: no coroutine for nothing)
            await self._release_limits(receipt, usage.total if usage is not None else 0)
        if receipt.ledger is None or receipt.reservation_id is None:
            return
        try:
            actual = self._actuals(ctx, receipt, cost_nanos)
            exceeded = self._exceeded(ctx, receipt, actual)
            used = await receipt.ledger.settle(receipt.reservation_id, actual)
            pair = _SETTLED if usage is not None or ctx.cache_hit else _RELEASED
            self._tally[pair] += 1
            self._tally[pair + 1] += 1
            if used:
                self._threshold_events(receipt, actual, used)
            for held, charged in exceeded:
                if isinstance(held.definition, Budget):
                    self._overspend_event(ctx, held, charged, (used or {}).get(held.ref.key, 0))
        except Exception:
            metrics.child(ERRORS, "settle").inc()
            log.warning("budget settle failed (reconciliation will release it)", exc_info=True)

    @staticmethod
    async def _release_limits(receipt: Receipt, actual_tokens: int) -> None:
        """Drop the call's leases and refund its unused tokens. Never raises."""
        try:
            groups: list[tuple[Limiter, list[str], list[tuple[str, int, int]]]]
            first = (
                receipt.leases[0][0] if receipt.leases else receipt.tokens[0][0] if receipt.tokens else None
            )
            mixed = False
            for held in receipt.leases:
                mixed = mixed or held[0] is not first
            for held_tokens in receipt.tokens:
                mixed = mixed or held_tokens[0] is not first
            if first is not None and not mixed:
                # one limiter held everything (the rule: the other only serves while Redis is failing open)
                groups = [
                    (
                        first,
                        [key for _, key in receipt.leases],
                        # refund what was not used; an under-estimate is charged, so the window stays exact
                        [
                            (key, second, reserved - actual_tokens)
                            for _, key, second, reserved in receipt.tokens
                        ],
                    )
                ]
            else:
                by_limiter: dict[int, tuple[Limiter, list[str], list[tuple[str, int, int]]]] = {}
                for limiter, key in receipt.leases:
                    by_limiter.setdefault(id(limiter), (limiter, [], []))[1].append(key)
                for limiter, key, second, reserved in receipt.tokens:
                    by_limiter.setdefault(id(limiter), (limiter, [], []))[2].append(
                        (key, second, reserved - actual_tokens)
                    )
                groups = list(by_limiter.values())
            # at once, not with the (batched) settle below: a sequential client's next call must find its lease
            # and unused tokens back
            for limiter, leases, refunds in groups:
                try:
                    await limiter.release(leases, refunds, receipt.token)
                except Exception:
                    metrics.child(ERRORS, "post_flight").inc()
                    log.warning("rate-limit post-flight failed (leases expire by TTL)", exc_info=True)
        except Exception:
            metrics.child(ERRORS, "post_flight").inc()
            log.warning("rate-limit post-flight failed", exc_info=True)

    def response_headers(self, ctx: CallContext) -> dict[str, str]:
        """Return X-RateLimit-Limit/-Remaining/-Reset for the tightest request window the call passed, and
        X-Odock-Reserved-Output-Tokens when a budget or token/cost quota reservation covers the call's output."""
        receipt = ctx.governance
        if not isinstance(receipt, Receipt):
            return {}
        headers: dict[str, str] = {}
        if receipt.header is not None:
            limit, remaining, reset = receipt.header
            headers["X-RateLimit-Limit"] = str(limit)
            headers["X-RateLimit-Remaining"] = str(remaining if remaining > 0 else 0)
            headers["X-RateLimit-Reset"] = str(reset)
        if receipt.output_tokens is not None:
            headers["X-Odock-Reserved-Output-Tokens"] = str(receipt.output_tokens)
        return headers

    # --- queries -------------------------------------------------------------------------------------------------

    async def budget_events(
        self, *, budget_id: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[BudgetEvent]:
        """Return recorded budget events (threshold crossings and overspends), newest first."""
        await self._flush_events()
        return await self.store.list_events(budget_id=budget_id, since=since, limit=limit)

    async def hit(self, ctx: CallContext, cost_nanos: int | None) -> None:
        """Admit a call answered by the response cache: the model scope's request limits (the early gate counted
        the others), then one reservation of what the hit is billed — `cost_nanos` in budgets and COST quotas, one
        request in REQUESTS quotas, no tokens anywhere (no TPM, no token quota: it used none) — settled by the
        post-flight like any call's. A spent window refuses it as the final gate would (402/429)."""
        receipt = ctx.governance
        if not isinstance(receipt, Receipt):
            receipt = Receipt(ctx.request_id, _token())
            ctx.governance = receipt
        if ctx.model is not None and ctx.model.policies:
            limits = self._policies.get(ctx.model.policies)
            checks = self._request_checks(MODEL, ctx.model.id, limits, leases=True)
            if checks:
                result, limiter = await self._gate(checks, receipt.token)
                self._raise_if_denied("final", checks, result)
                receipt.leases += [(limiter, c.key) for c in checks if c.kind == "L"]
                receipt.keep_tightest(checks, result)
                self._tally[_FINAL_ALLOW] += 1
        if receipt.ledger is not None or (not self.definitions.budgets and not self.definitions.quotas):
            return
        now = datetime.now(UTC)
        entries = self._entries(self._scopes_of(ctx))
        held = [
            Held(ref, _hit_amount(d, cost_nanos), d, metric not in _UNBOUNDED)
            for d, prefix, limit, tz, metric in entries
            if (ref := self._window(d, prefix, limit, now, tz)) is not None
        ]
        if held:
            await self._reserve(receipt, _Plan(f"{ctx.request_id[:64]}/{receipt.token}", held, now, False))

    async def window_state(self, window_key: str) -> tuple[int, int] | None:
        """Return (used, reserved) of a window as the enforcing backend sees it."""
        if self.redis_ledger is not None:
            return await self.redis_ledger.snapshot(window_key)
        return self.local_ledger.snapshot(window_key)

    async def refresh_definitions(self) -> None:
        """Reload budgets and quotas now (admin changes made in this process)."""
        await self.definitions.load(self.store)

    async def reconcile(self) -> int:
        """Release stale reservations (and settle those already charged in the ledger); return how many."""
        count = await self.local_ledger.reconcile()
        if self.redis_ledger is not None:
            count += await self.redis_ledger.reconcile()
        self.local_limiter.prune()
        # a charge is only read back to reconcile a reservation, which lives at most the reservation TTL
        keep_s = max(_CHARGE_RETENTION_S, 2 * self.settings.reservation_ttl_s)
        await self.store.prune_charges(datetime.now(UTC) - timedelta(seconds=keep_s))
        return count

    # --- internals -----------------------------------------------------------------------------------------------

    def _scopes(self, ctx: CallContext) -> list[tuple[str, str, Limits]]:
        scopes = [(GLOBAL, "-", self.global_limits)]
        if ctx.organisation is not None:
            scopes.append((ORGANISATION, ctx.organisation.id, self._policies.get(ctx.organisation.policies)))
        if ctx.team is not None:
            scopes.append((TEAM, ctx.team.id, self._policies.get(ctx.team.policies)))
        if ctx.key is not None:
            scopes.append((API_KEY, ctx.key.id, self._policies.get(ctx.key.policies)))
        return scopes

    def _scopes_of(self, ctx: CallContext) -> _Scopes:
        """The caller's scope plan, from the cache while its organisation, team and key records are the same."""
        org, team, key = ctx.organisation, ctx.team, ctx.key
        receipt = ctx.governance
        if isinstance(receipt, Receipt) and receipt.scopes is not None:
            records = receipt.scopes.records
            if records[0] is org and records[1] is team and records[2] is key:
                return receipt.scopes
        hit = self._scope_plans.get((id(org), id(team), id(key)))
        if hit is not None:
            records = hit.records
            if records[0] is org and records[1] is team and records[2] is key:
                return hit
        scopes = self._scopes(ctx)
        checks: list[Check] = []
        for scope, ident, limits in scopes:
            if scope == GLOBAL:  # the global request rate was counted in pre_auth
                if limits.concurrency:
                    checks.append(self._lease(scope, ident, limits))
            else:
                checks += self._build_request_checks(scope, ident, limits, leases=True)
        static = [
            (scope, limits) for scope, _, limits in scopes if limits.max_request_bytes or limits.max_tokens
        ]
        plan = _Scopes(
            (org, team, key),
            scopes,
            [
                (scope, limits)
                for scope, _, limits in scopes
                if scope != GLOBAL and (limits.allow or limits.block)
            ],
            static,
            _tightest(static),
            checks,
            [c.key for c in checks if c.kind == "L"],
            self._owners(ctx),
        )
        if len(self._scope_plans) >= _CACHE_SIZE:
            self._scope_plans.clear()
        self._scope_plans[(id(org), id(team), id(key))] = plan
        return plan

    def _model_scopes_of(self, ctx: CallContext) -> _ModelScopes:
        """The caller's scope plan joined with the model's, cached like `_scopes_of`."""
        base, model = self._scopes_of(ctx), ctx.model
        hit = self._model_plans.get((id(base), id(model)))
        if hit is not None and hit.records[0] is base and hit.records[1] is model:
            return hit
        scopes = list(base.scopes)
        model_limits = self._policies.get(model.policies) if model is not None else Limits()
        checks: list[Check] = []
        if model is not None:
            scopes.append((MODEL, model.id, model_limits))
            checks = self._build_request_checks(MODEL, model.id, model_limits, leases=True)
        static = [
            (scope, limits) for scope, _, limits in scopes if limits.max_request_bytes or limits.max_tokens
        ]
        plan = _ModelScopes(
            (base, model),
            model_limits,
            static,
            _tightest(static),
            [limits.max_tokens for _, _, limits in scopes if limits.max_tokens],
            checks,
            # "2": the Redis hash also holds a running total
            [(scope, f"{scope}:{ident}:tpm2", limits.tpm) for scope, ident, limits in scopes if limits.tpm],
            [c.key for c in checks if c.kind == "L"],
        )
        if len(self._model_plans) >= _CACHE_SIZE:
            self._model_plans.clear()
        self._model_plans[(id(base), id(model))] = plan
        return plan

    def _entries(self, plan: _Scopes) -> list[tuple[Budget | Quota, str, int, str, str]]:
        """The active budgets and quotas of the plan's owners, read again only when the definitions change."""
        defs = self.definitions
        tables = (defs.budgets, defs.quotas)
        of = plan.entries_of
        if of is not None and of[0] is tables[0] and of[1] is tables[1]:
            return plan.entries
        entries: list[tuple[Budget | Quota, str, int, str, str]] = []
        for owner_type, owner_id, tz in plan.owners:
            for budget in defs.budgets.get((owner_type, owner_id), ()):
                entries.append((budget, "b", budget.amount_nanos, tz, "COST"))
            for quota in defs.quotas.get((owner_type, owner_id), ()):
                entries.append((quota, "q", quota.limit, tz, quota.metric))
        plan.entries, plan.entries_of = entries, tables
        return entries

    @staticmethod
    def _static_checks(scope: str, limits: Limits, ctx: CallContext) -> None:
        if limits.max_request_bytes and ctx.body_bytes > limits.max_request_bytes:
            metrics.child(DECISIONS, "payload", "deny").inc()
            raise TooManyRequests(
                f"request body of {ctx.body_bytes} bytes exceeds the limit of {limits.max_request_bytes}",
                "payload_too_large",
                extra={"scope": scope, "limit": "max_request_bytes"},
            )
        if limits.max_tokens and ctx.max_tokens is not None and ctx.max_tokens > limits.max_tokens:
            metrics.child(DECISIONS, "payload", "deny").inc()
            raise TooManyRequests(
                f"max_tokens {ctx.max_tokens} exceeds the limit of {limits.max_tokens}",
                "max_tokens_exceeded",
                extra={"scope": scope, "limit": "max_tokens"},
            )

    @staticmethod
    def _lease(scope: str, ident: str, limits: Limits) -> Check:
        ttl = limits.lease_ttl_s or DEFAULT_LEASE_TTL_S
        return Check(
            "L",
            f"{scope}:{ident}:conc",
            limits.concurrency,
            ttl * 1000,
            "concurrency_exceeded",
            scope,
            "concurrency",
        )

    def _request_checks(self, scope: str, ident: str, limits: Limits, *, leases: bool) -> list[Check]:
        # Limits objects are stable per policy (PolicyCache); held in the entry, so their id() stays theirs
        key = (scope, ident, id(limits), leases)
        hit = self._checks.get(key)
        if hit is not None and hit[0] is limits:
            return hit[1]
        checks = self._build_request_checks(scope, ident, limits, leases=leases)
        if len(self._checks) >= _CACHE_SIZE:
            self._checks.clear()
        self._checks[key] = (limits, checks)
        return checks

    def _build_request_checks(self, scope: str, ident: str, limits: Limits, *, leases: bool) -> list[Check]:
        checks: list[Check] = []
        if leases and limits.concurrency:
            checks.append(self._lease(scope, ident, limits))
        if limits.burst:
            rate = float(limits.rps or (limits.rpm / 60 if limits.rpm else limits.burst))
            checks.append(
                Check("B", f"{scope}:{ident}:burst", limits.burst, rate, "burst_exceeded", scope, "burst")
            )
        if limits.rps:
            checks.append(
                Check(
                    "W",
                    f"{scope}:{ident}:rps",
                    limits.rps,
                    1000,
                    "rps_exceeded",
                    scope,
                    "requests_per_second",
                )
            )
        if limits.rpm:
            checks.append(
                Check(
                    "W",
                    f"{scope}:{ident}:rpm",
                    limits.rpm,
                    60000,
                    "rpm_exceeded",
                    scope,
                    "requests_per_minute",
                )
            )
        return checks

    async def _gate(self, checks: list[Check], token: str) -> tuple[GateResult, Limiter]:
        if self.redis_limiter is None:  # in process: no await needed
            local = self.local_limiter
            return local.gate_now(checks, token, int(time.time() * 1000)), local
        try:
            return await self.redis_limiter.gate(checks, token), self.redis_limiter
        except _REDIS_ERRORS as exc:
            metrics.child(ERRORS, "redis").inc()
            if self.settings.redis_fail_open:
                log.warning("Redis unavailable, using in-process limits (fail-open): %s", type(exc).__name__)
                return await self.local_limiter.gate(checks, token), self.local_limiter
            raise DependencyUnavailable("rate limiter unavailable", "rate_limit_unavailable") from exc

    @staticmethod
    def _raise_if_denied(stage: str, checks: list[Check], result: GateResult) -> None:
        if result.ok:
            return
        metrics.child(DECISIONS, stage, "deny").inc()
        check = checks[result.denied]
        retry = max(1, math.ceil(result.retry_ms / 1000))
        raise TooManyRequests(
            f"rate limit exceeded: {check.limit_name} ({check.limit}) for {check.scope}",
            check.code,
            extra={"scope": check.scope, "limit": check.limit_name, "retry_after": retry},
            headers={"Retry-After": str(retry)},
        )

    def _owners(self, ctx: CallContext) -> list[tuple[str, str, str]]:
        """(owner type, owner id, time zone) in enforcement order: org → team → user → key."""
        org_tz = ctx.organisation.timezone if ctx.organisation is not None else "UTC"
        owners: list[tuple[str, str, str]] = []
        key = ctx.key
        org_id = (
            ctx.organisation.id if ctx.organisation is not None else (key.organisation_id if key else None)
        )
        if org_id:
            owners.append(("ORG", org_id, org_tz))
        if key is not None:
            if key.team_id:
                owners.append(("TEAM", key.team_id, org_tz))
            if key.user_id:
                owners.append(("USER", key.user_id, org_tz))
            owners.append(("APIKEY", key.id, key.timezone or org_tz))
        return owners

    def _reservation_plan(self, ctx: CallContext, receipt: Receipt, out_tokens: int) -> _Plan | None:
        """The budget and quota windows this call must reserve in (None: nothing to reserve)."""
        if receipt.ledger is not None:
            return None  # final() already reserved for this call
        defs = self.definitions
        if not defs.budgets and not defs.quotas:
            return None
        entries = self._entries(self._scopes_of(ctx))
        if not entries:
            return None
        now = datetime.now(UTC)
        model_pricing = ctx.model.pricing if ctx.model is not None else {}
        if ctx.prompt is not None:
            provider_type = ctx.provider.type if ctx.provider is not None else None
            est_in = bounds.input_bound(ctx.prompt, ctx.model, provider_type)
        else:  # a context built without a measured body (internal callers): its estimate is all there is
            est_in = ctx.estimated_input_tokens if ctx.estimated_input_tokens > 0 else 0
        # image routes generate one image per choice (`n`), billed at `per_image` beside any token price
        images = ctx.prompt.choices if ctx.output == "images" and ctx.prompt is not None else 0
        if ctx.reserve_nanos is not None:
            worst = ctx.reserve_nanos
        else:
            worst = pricing.worst_case_nanos(model_pricing, est_in, out_tokens, images=images)
        held: list[Held] = []
        bounds_output = False
        # what a window reserves, by metric (`_ESTIMATE`): ERRORS and LATENCY_MS are known only afterwards (0:
        # blocked once used reaches the limit)
        estimates = (0, 1, est_in + out_tokens, est_in, out_tokens, worst)
        for d, prefix, limit, tz, metric in entries:
            ref = self._window(d, prefix, limit, now, tz)
            if ref is not None:
                held.append(Held(ref, estimates[_ESTIMATE.get(metric, 0)], d, metric not in _UNBOUNDED))
                # budgets, token and cost quotas reserve an amount that depends on the output cap
                bounds_output = bounds_output or metric in _OUTPUT_BOUND
        if not held:
            return None
        # id bounded: fits the ledger column
        return _Plan(f"{ctx.request_id[:64]}/{receipt.token}", held, now, bounds_output)

    async def _gate_and_reserve(
        self,
        checks: list[Check],
        token: str,
        plan: _Plan,
        rides: list[tuple[LuaScript, list[str], list[Any]]],
    ) -> tuple[GateResult, Limiter, Any, list[Any] | None]:
        """The final gate and the reservation (and the riders' scripts) in one round trip to Redis (one write)."""
        limiter, ledger, runner = self.redis_limiter, self.redis_ledger, self.redis_runner
        assert limiter is not None and ledger is not None and runner is not None
        try:
            gate_reply, reserve_reply, *ridden = await runner.run_many(
                [
                    limiter.gate_call(checks, token),
                    ledger.reserve_call(plan.reservation_id, plan.held),
                    *rides,
                ]
            )
        except _REDIS_ERRORS:
            # one at a time instead: that path applies the fail-open/fail-closed policy
            result, fallback = await self._gate(checks, token)
            return result, fallback, None, None
        result = limiter.gate_result(gate_reply)
        if not result.ok and ledger.reserve_outcome(reserve_reply) == -1:
            # refused by a limit: the reservation made alongside must not stay held
            try:
                await ledger.release(plan.reservation_id)
            except _REDIS_ERRORS:
                log.warning("could not release a refused call's reservation (reconciliation will)")
        return result, limiter, reserve_reply, ridden

    async def _reserve(self, receipt: Receipt, plan: _Plan, reply: Any = None) -> None:
        reservation_id, held, now = plan.reservation_id, plan.held, plan.now
        items = held  # a held window is the item reserved in it
        ledger: LocalLedger | RedisLedger = self.redis_ledger or self.local_ledger
        try:
            if isinstance(ledger, RedisLedger):
                denied = await ledger.reserve(reservation_id, items, reply)
            else:
                denied = await ledger.reserve(reservation_id, items)
        except _REDIS_ERRORS as exc:
            if ledger is self.local_ledger:
                raise
            metrics.child(ERRORS, "redis").inc()
            if not self.settings.redis_fail_open:
                raise DependencyUnavailable("budget ledger unavailable", "rate_limit_unavailable") from exc
            log.warning("Redis unavailable, using in-process budget windows (fail-open)")
            ledger = self.local_ledger
            denied = await ledger.reserve(reservation_id, items)
        if denied >= 0:
            metrics.child(DECISIONS, "budget", "deny").inc()
            metrics.child(metrics.BUDGET_DECISIONS, "denied").inc()
            _deny(held[denied], now)
        receipt.ledger, receipt.reservation_id, receipt.held = ledger, reservation_id, held
        self._tally[_RESERVED] += 1
        self._tally[_RESERVED + 1] += 1

    def _window(self, d: Budget | Quota, prefix: str, limit: int, now: datetime, tz: str) -> WindowRef | None:
        """The definition's current window, computed once per period (definitions are replaced, not mutated)."""
        key = (id(d), tz)
        hit = self._windows.get(key)
        # (aware datetimes of one tzinfo compare field by field: cheaper than converting to epoch seconds)
        if hit is not None and hit[0] is d and hit[2] <= now < hit[3]:
            return hit[1]
        ref = _window(d, prefix, limit, now, tz)
        if ref is not None:  # "not running now" is never cached: a schedule may start any moment
            if len(self._windows) >= _CACHE_SIZE:
                self._windows.clear()
            # valid from the window's start until its end or the definition's, whichever comes first
            until = ref.end if d.end_at is None else min(ref.end, as_aware(d.end_at))
            self._windows[key] = (d, ref, ref.start, until)
        return ref

    def _actuals(self, ctx: CallContext, receipt: Receipt, cost_nanos: int | None) -> dict[str, int]:
        upstream = ctx.upstream_started is not None
        # the usage record asks first, the post-flight next: the same call's answer, unless something changed
        memo_key = (cost_nanos, ctx.usage, upstream, ctx.outcome, ctx.status)
        memo = receipt.actual_memo
        if memo is not None and memo[0] == memo_key:
            return memo[1]
        actual, timed = self._measure(ctx, receipt, cost_nanos, upstream)
        # a latency is measured when asked: never reused
        receipt.actual_memo = None if timed else (memo_key, actual)
        return actual

    @staticmethod
    def _measure(
        ctx: CallContext, receipt: Receipt, cost_nanos: int | None, upstream: bool
    ) -> tuple[dict[str, int], bool]:
        """Each held window's charge, and whether one of them is a latency (measured now)."""
        usage = ctx.usage
        if usage is not None and cost_nanos is None and ctx.model is not None:
            cost_nanos = pricing.cost_nanos(ctx.model.pricing, usage)
        failed = ctx.outcome == "failed" or ctx.status >= 400
        actual: dict[str, int] = {}
        timed = False
        for h in receipt.held:
            d = h.definition
            metric = d.metric if isinstance(d, Quota) else "COST"
            if ctx.cache_hit:
                amount = _hit_amount(d, cost_nanos)
            elif metric == "ERRORS":
                amount = 1 if upstream and failed else 0
            elif metric == "LATENCY_MS":
                amount = ctx.elapsed_ms() if upstream else 0
                timed = True
            elif usage is None and cost_nanos is None:
                amount = 0  # failed before upstream, or no usage returned: release (reference §6.4 [INF])
            elif metric == "COST":
                amount = cost_nanos or 0
            elif metric == "REQUESTS":
                amount = 1
            elif usage is None:
                amount = 0
            elif metric == "TOKENS":
                amount = usage.total
            elif metric == "TOKENS_IN":
                amount = usage.total_input
            else:  # TOKENS_OUT
                amount = usage.output_tokens
            # a charge never credits a window (usage is clamped before this; a negative cost is not a refund)
            key = h.ref.key
            actual[key] = actual.get(key, 0) + amount if amount > 0 else actual.get(key, 0)
        return actual, timed

    def above_reservation(self, ctx: CallContext, cost_nanos: int | None) -> bool:
        """Whether the call's charge exceeds what it reserved in some window. Pure: the usage record reads it
        before the post-flight, which counts the excess and raises its events."""
        receipt = ctx.governance
        if not isinstance(receipt, Receipt) or receipt.ledger is None or receipt.reservation_id is None:
            return False
        actual = self._actuals(ctx, receipt, cost_nanos)
        for h in receipt.held:  # noqa: SIM110 - a loop: no generator object per call
            if h.bounded and actual.get(h.ref.key, 0) > h.amount:
                return True
        return False

    @staticmethod
    def _exceeded(ctx: CallContext, receipt: Receipt, actual: dict[str, int]) -> list[tuple[Held, int]]:
        """The windows charged above what the call reserved (a broken or dishonest upstream, or a failover to a
        dearer model): counted and logged here; the charge itself stands."""
        exceeded: list[tuple[Held, int]] = []
        for h in receipt.held:
            if not h.bounded:
                continue  # known only afterwards: reserved 0 by design
            charged = actual.get(h.ref.key, 0)
            if charged <= h.amount:
                continue
            d = h.definition
            kind = "budget" if isinstance(d, Budget) else "quota"
            metrics.child(metrics.RESERVATION_EXCEEDED, kind).inc()
            log.warning(
                "%s %s charged %d above the %d reserved",
                kind,
                d.id,
                charged,
                h.amount,
                extra={"request_id": ctx.request_id},
            )
            exceeded.append((h, charged))
        if exceeded and "above_reservation" not in ctx.usage_flags:
            ctx.usage_flags.append("above_reservation")  # kept on the call's usage record
        return exceeded

    def _overspend_event(self, ctx: CallContext, held: Held, charged: int, used: int) -> None:
        d = held.definition
        assert isinstance(d, Budget)
        percent = used * 100 // d.amount_nanos if d.amount_nanos > 0 else 0
        self._events.append(
            NewEvent(
                d.id,
                held.ref.key,
                percent,
                used,
                d.amount_nanos,
                kind="overspend",
                request_id=ctx.request_id[:128],
                reserved=held.amount,
                charged=charged,
            )
        )

    def _threshold_events(self, receipt: Receipt, actual: dict[str, int], used: dict[str, int]) -> None:
        for h in receipt.held:
            d = h.definition
            key = h.ref.key
            if not isinstance(d, Budget) or key not in used or d.amount_nanos <= 0:
                continue
            after = used[key]
            before = after - actual.get(key, 0)
            if before == after:
                continue  # nothing charged: nothing crossed
            marks = self._marks.get(id(d))
            if marks is None or marks[0] is not d:
                if len(self._marks) >= _CACHE_SIZE:
                    self._marks.clear()
                marks = self._marks[id(d)] = (
                    d,
                    [(t, d.amount_nanos * t / 100) for t in sorted(set(d.thresholds))],
                )
            for threshold, mark in marks[1]:
                if before < mark <= after:
                    self._events.append(NewEvent(d.id, key, threshold, after, d.amount_nanos))

    async def _flush_events(self) -> None:
        if self._events:
            batch, self._events = self._events, []
            try:
                await self.store.record_events(batch)
            except Exception:
                self._events = batch + self._events
                raise

    def flush_tally(self) -> None:
        """Add the tallied decisions to their Prometheus counters."""
        tally = self._tally
        for i, n in enumerate(tally):
            if n:
                tally[i] = 0
                _TALLIED[i].inc(n)

    async def _flush(self) -> None:
        self.flush_tally()
        await self.local_ledger.flush()
        await self._flush_events()

    async def _background(self) -> None:
        flush_every = max(0.05, self.settings.usage_flush_interval_s)
        poll_every = max(0.1, self.settings.catalogue_poll_interval_s)
        next_poll = next_reconcile = time.monotonic()
        failed: dict[str, type[BaseException]] = {}
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=flush_every)
            if self._stop.is_set():
                return
            now = time.monotonic()
            for name, work, due in (
                ("flush", self._flush, True),
                ("definitions", self.refresh_definitions, now >= next_poll),
                ("reconcile", self.reconcile, now >= next_reconcile),
            ):
                if not due:
                    continue
                try:
                    await work()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    metrics.child(ERRORS, name).inc()
                    # a traceback once per kind of failure, then one line per cycle (an outage repeats it)
                    if type(exc) is not failed.get(name):
                        log.warning("governance %s failed", name, exc_info=True)
                    else:
                        log.warning("governance %s still failing: %s", name, type(exc).__name__)
                    failed[name] = type(exc)
                else:
                    failed.pop(name, None)
            if now >= next_poll:
                next_poll = now + poll_every
            if now >= next_reconcile:
                next_reconcile = now + self._reconcile_interval


def _tightest(static: list[tuple[str, Limits]]) -> tuple[int, int]:
    payload = [limits.max_request_bytes for _, limits in static if limits.max_request_bytes]
    tokens = [limits.max_tokens for _, limits in static if limits.max_tokens]
    return min(payload, default=0), min(tokens, default=0)


def _over(tightest: tuple[int, int], ctx: CallContext) -> bool:
    """Whether the call exceeds one of the tightest caps (then each scope is checked, in order, for its error)."""
    payload, tokens = tightest
    return bool(
        (payload and ctx.body_bytes > payload)
        or (tokens and ctx.max_tokens is not None and ctx.max_tokens > tokens)
    )


def _header(checks: list[Check], result: GateResult) -> tuple[int, int, int] | None:
    """(limit, remaining, reset seconds) of the request window with the least left."""
    best = -1
    remaining = result.remaining
    n = len(remaining)
    for i, c in enumerate(checks):
        if c.kind == "W" and i < n and (best < 0 or remaining[i] < remaining[best]):
            best = i
    if best < 0:
        return None
    reset = -(-result.reset_ms[best] // 1000)  # whole seconds, rounded up
    return checks[best].limit, remaining[best], reset if reset > 0 else 0


def _window(d: Budget | Quota, prefix: str, limit: int, now: datetime, owner_tz: str) -> WindowRef | None:
    tz = d.timezone or owner_tz or "UTC"
    try:
        span = window_at(d.period, now, tz, d.start_at, d.end_at)
    except ValueError:
        log.warning("budget/quota %s has an invalid schedule; not enforced", d.id)
        return None
    if span is None:
        return None
    start, end = span
    return WindowRef(
        f"{prefix}:{d.id}:{int(start.timestamp())}",
        "budget" if prefix == "b" else "quota",
        d.id,
        start,
        end,
        limit,
    )


_OUTPUT_BOUND = frozenset({"TOKENS", "TOKENS_OUT", "COST"})
_UNBOUNDED = frozenset({"ERRORS", "LATENCY_MS"})  # quota metrics measured only after the call


# a window's metric (a budget's is "COST") → its reservation among (0, 1, input + output, input, output, cost)
_ESTIMATE = {"REQUESTS": 1, "TOKENS": 2, "TOKENS_IN": 3, "TOKENS_OUT": 4, "COST": 5}


def _hit_amount(d: Budget | Quota, cost_nanos: int | None) -> int:
    """What a response-cache hit is charged in a window: its billed cost, one request, never tokens."""
    metric = d.metric if isinstance(d, Quota) else "COST"
    if metric == "COST":
        return cost_nanos or 0
    return 1 if metric == "REQUESTS" else 0


def _deny(held: Held, now: datetime) -> None:
    d = held.definition
    owner = _OWNER_SCOPE.get(d.owner_type, d.owner_type.lower())
    retry = max(1, math.ceil((held.ref.end - now).total_seconds()))
    if isinstance(d, Budget):
        error: GatewayError = PaymentRequired(
            f"budget '{d.name}' exceeded for this {d.period.lower()} window",
            "budget_exceeded",
            extra={"scope": owner, "budget_id": d.id, "retry_after": retry},
            headers={"Retry-After": str(retry)},
        )
    else:
        error = TooManyRequests(
            f"quota '{d.name}' ({d.metric}) exceeded for this {d.period.lower()} window",
            "quota_exceeded",
            extra={"scope": owner, "limit": d.metric.lower(), "quota_id": d.id, "retry_after": retry},
            headers={"Retry-After": str(retry)},
        )
    raise error
