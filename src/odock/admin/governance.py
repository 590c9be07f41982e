"""Budget and quota management: a service, its admin HTTP routes, and the declarative (YAML) hook.

Owners are given either as `owner_type` + `owner_id`, or by catalogue NAME with `organisation` (+ optional `team`,
`user` (email) or `key`): the most specific one given is the owner. Amounts are integer nanos USD
(`amount_nanos`) or a decimal `amount_usd` converted exactly. Routes (JSON; the admin app checks the token):

    GET|POST          /admin/budgets                 list (filters: owner_type, owner_id, organisation_id) | create
    GET|PATCH|DELETE  /admin/budgets/{id}
    GET               /admin/budgets/{id}/windows    settled `used` per window (the durable ledger)
    GET|POST          /admin/quotas, GET|PATCH|DELETE /admin/quotas/{id}, GET /admin/quotas/{id}/windows
    GET               /admin/budget-events           threshold crossings, overspends (filters: budget_id, since, limit)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from odock.admin.app import error_response, json_response, read_body
from odock.errors import BadRequest, GatewayError, NotFound
from odock.governance.periods import PERIODS, Period, zone
from odock.governance.store import (
    DEFAULT_THRESHOLDS,
    METRICS,
    OWNER_TYPES,
    Budget,
    BudgetEvent,
    GovernanceStore,
    Metric,
    OwnerType,
    Quota,
)
from odock.state.validation import decode

if TYPE_CHECKING:
    from odock.state.service import CatalogueService
    from odock.state.sql import SqlStore

ChangeHook = Callable[[], Awaitable[None]]
_COMMON = {
    "name", "owner_type", "owner_id", "organisation_id", "organisation", "team", "user", "key", "period",
    "start_at", "end_at", "timezone", "rollover", "active",
}  # fmt: skip
BUDGET_FIELDS = _COMMON | {"amount_nanos", "amount_usd", "currency", "thresholds"}
QUOTA_FIELDS = _COMMON | {"metric", "limit"}


INT64 = Annotated[
    int, msgspec.Meta(ge=0, le=2**63 - 1)
]  # the BIGINT columns amounts and limits are stored in
Percent = Annotated[int, msgspec.Meta(gt=0, le=1000)]
Text = Annotated[str, msgspec.Meta(max_length=200)]
Id = Annotated[str, msgspec.Meta(max_length=64)]


class DefinitionFields(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The body of a budget or quota change: the types the admin API checks first (the OpenAPI document is
    generated from these); the rules between fields (owner, window, amounts) are checked by `GovernanceAdmin`."""

    name: Text | None = None
    owner_type: OwnerType | None = None
    owner_id: Id | None = None
    organisation_id: Id | None = None
    # the owner by catalogue name instead: the organisation, and optionally a team, user (e-mail) or key in it
    organisation: Text | None = None
    team: Text | None = None
    user: Annotated[str, msgspec.Meta(max_length=320)] | None = None
    key: Text | None = None
    period: Period | None = None
    start_at: Annotated[Any, msgspec.Meta(description="ISO 8601 date-time (naive: UTC)")] = None
    end_at: Annotated[Any, msgspec.Meta(description="ISO 8601 date-time (naive: UTC), after start_at")] = None
    timezone: Annotated[str, msgspec.Meta(max_length=64)] | None = None  # "": the owner's time zone
    rollover: bool | None = None
    active: bool | None = None


class BudgetChanges(DefinitionFields, kw_only=True):
    amount_nanos: INT64 | None = None
    amount_usd: int | float | str | None = None  # a decimal amount, converted exactly to nanos
    currency: Annotated[str, msgspec.Meta(max_length=8)] | None = None
    thresholds: list[Percent] | None = None


class NewBudget(BudgetChanges, kw_only=True):
    name: Text


class QuotaChanges(DefinitionFields, kw_only=True):
    metric: Metric | None = None
    limit: INT64 | None = None


class NewQuota(QuotaChanges, kw_only=True):
    name: Text
    metric: Metric


def _parse_datetime(value: Any, field: str) -> Any:
    from odock.state.service import parse_datetime

    return parse_datetime(value, field)


INT64_MAX = 2**63 - 1  # the BIGINT columns amounts and limits are stored in


def _int(value: Any, field: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= INT64_MAX:
        raise BadRequest(f"{field} must be an integer from {minimum} to {INT64_MAX}")
    return value


def _text(value: Any, field: str, max_len: int = 200) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > max_len or "\x00" in value:
        raise BadRequest(f"{field} must be a non-empty string of at most {max_len} characters, without NUL")
    return value.strip()


def _amount(data: Mapping[str, Any]) -> int | None:
    if data.get("amount_nanos") is not None:
        return _int(data["amount_nanos"], "amount_nanos")
    if data.get("amount_usd") is not None:
        raw = data["amount_usd"]
        try:
            usd = Decimal(str(raw)) if not isinstance(raw, bool) else Decimal(-1)
        except InvalidOperation:
            usd = Decimal(-1)
        if not usd.is_finite() or not 0 <= usd * 1_000_000_000 <= INT64_MAX:
            raise BadRequest(f"amount_usd must be a non-negative number of at most {INT64_MAX / 1e9:.0f}")
        return int((usd * 1_000_000_000).to_integral_value())
    return None


def _currency(value: Any) -> str:
    return "USD" if value is None or value == "" else _text(value, "currency", 8)


def _thresholds(value: Any) -> list[int]:
    if value is None:
        return list(DEFAULT_THRESHOLDS)
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1000 for v in value
    ):
        raise BadRequest("thresholds must be a list of percentages (1..1000)")
    return sorted(set(value))


class GovernanceAdmin:
    """Create, list, update and delete budgets and quotas; read threshold events."""

    def __init__(
        self,
        store: GovernanceStore,
        *,
        catalogue: CatalogueService | None = None,
        on_change: ChangeHook | None = None,
    ) -> None:
        self.store = store
        self.catalogue = catalogue
        self.on_change = on_change

    async def _changed(self) -> None:
        if self.on_change is not None:
            await self.on_change()

    async def _owner(self, data: Mapping[str, Any], current: Budget | Quota | None) -> dict[str, Any]:
        named = {k: data[k] for k in ("organisation", "team", "user", "key") if data.get(k)}
        if named:
            if self.catalogue is None:
                raise BadRequest("owners by name need the catalogue; give owner_type and owner_id")
            if "organisation" not in named:
                raise BadRequest("give the owner's organisation (name or id) with team, user or key")
            org = await self.catalogue.get_organisation(str(named["organisation"]))
            owner: dict[str, Any] = {"organisation_id": org.id, "owner_type": "ORG", "owner_id": org.id}
            if "key" in named:
                key = await self.catalogue.get_key(str(named["key"]), org.id)
                owner.update(owner_type="APIKEY", owner_id=key.id)
            elif "user" in named:
                user = await self.catalogue.get_user(str(named["user"]), org.id)
                owner.update(owner_type="USER", owner_id=user.id)
            elif "team" in named:
                team = await self.catalogue.get_team(str(named["team"]), org.id)
                owner.update(owner_type="TEAM", owner_id=team.id)
            return owner
        owner_type = data.get("owner_type", current.owner_type if current else None)
        if owner_type not in OWNER_TYPES:
            raise BadRequest(f"owner_type must be one of {', '.join(OWNER_TYPES)}")
        owner_id = _text(data.get("owner_id", current.owner_id if current else None), "owner_id", 64)
        org_id = data.get("organisation_id", current.organisation_id if current else None)
        if org_id is not None:
            org_id = _text(org_id, "organisation_id", 64)
        if owner_type == "ORG" and org_id is None:
            org_id = owner_id
        return {"owner_type": owner_type, "owner_id": owner_id, "organisation_id": org_id}

    async def _common(  # noqa: C901
        self, data: Mapping[str, Any], allowed: set[str], current: Budget | Quota | None
    ) -> dict[str, Any]:
        if not isinstance(data, Mapping):
            raise BadRequest("expected a JSON object")
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        values = await self._owner(data, current) if (current is None or set(data) & {
            "owner_type", "owner_id", "organisation_id", "organisation", "team", "user", "key"}) else {}  # fmt: skip
        if "name" in data or current is None:
            values["name"] = _text(data.get("name"), "name")
        if "period" in data or current is None:
            period = data.get("period", "MONTHLY")
            if period not in PERIODS:
                raise BadRequest(f"period must be one of {', '.join(PERIODS)}")
            values["period"] = period
        if "timezone" in data:
            tz = data["timezone"] or ""
            if tz:
                try:
                    zone(str(tz))
                except ValueError:
                    raise BadRequest(f"unknown time zone {tz!r}") from None
            values["timezone"] = str(tz)
        for field in ("start_at", "end_at"):
            if field in data:
                values[field] = _parse_datetime(data[field], field)
        start = values.get("start_at", current.start_at if current else None)
        end = values.get("end_at", current.end_at if current else None)
        if start is not None and end is not None and end <= start:
            raise BadRequest("end_at must be after start_at")
        for field in ("rollover", "active"):
            if field in data:
                if not isinstance(data[field], bool):
                    raise BadRequest(f"{field} must be true or false")
                values[field] = data[field]
        return values

    # --- budgets -------------------------------------------------------------------------------------------------

    async def create_budget(self, data: Mapping[str, Any]) -> Budget:
        """Create a budget from an API/CLI/YAML object."""
        decode(NewBudget, data, "budget")
        values = await self._common(data, BUDGET_FIELDS, None)
        amount = _amount(data)
        if amount is None:
            raise BadRequest("amount_nanos or amount_usd is required")
        budget = Budget(
            id="", amount_nanos=amount, thresholds=_thresholds(data.get("thresholds")),
            currency=_currency(data.get("currency")), **values,
        )  # fmt: skip
        created = await self.store.insert_budget(budget)
        await self._changed()
        return created

    async def list_budgets(self, **filters: Any) -> list[Budget]:
        """List budgets, filtered by owner_type / owner_id / organisation_id / active."""
        return await self.store.list_budgets(**filters)

    async def get_budget(self, budget_id: str) -> Budget:
        """Return one budget (404 when missing)."""
        found = await self.store.list_budgets(id=budget_id)
        if not found:
            raise NotFound(f"budget {budget_id!r} not found")
        return found[0]

    async def update_budget(self, budget_id: str, changes: Mapping[str, Any]) -> Budget:
        """Change some fields of a budget."""
        decode(BudgetChanges, changes, "budget")
        current = await self.get_budget(budget_id)
        values = await self._common(changes, BUDGET_FIELDS, current)
        amount = _amount(changes)
        if amount is not None:
            values["amount_nanos"] = amount
        if "thresholds" in changes:
            values["thresholds"] = _thresholds(changes["thresholds"])
        if "currency" in changes:
            values["currency"] = _currency(changes["currency"])
        updated = await self.store.update_budget(msgspec.structs.replace(current, **values))
        await self._changed()
        return updated

    async def delete_budget(self, budget_id: str) -> None:
        """Delete a budget (its window history stays in the ledger)."""
        if not await self.store.delete("budget", budget_id):
            raise NotFound(f"budget {budget_id!r} not found")
        await self._changed()

    # --- quotas --------------------------------------------------------------------------------------------------

    async def create_quota(self, data: Mapping[str, Any]) -> Quota:
        """Create a quota from an API/CLI/YAML object."""
        decode(NewQuota, data, "quota")
        values = await self._common(data, QUOTA_FIELDS, None)
        metric = data.get("metric")
        if metric not in METRICS:
            raise BadRequest(f"metric must be one of {', '.join(METRICS)}")
        limit = _int(data.get("limit"), "limit")
        created = await self.store.insert_quota(Quota(id="", metric=metric, limit=limit, **values))
        await self._changed()
        return created

    async def list_quotas(self, **filters: Any) -> list[Quota]:
        """List quotas, filtered by owner_type / owner_id / organisation_id / active."""
        return await self.store.list_quotas(**filters)

    async def get_quota(self, quota_id: str) -> Quota:
        """Return one quota (404 when missing)."""
        found = await self.store.list_quotas(id=quota_id)
        if not found:
            raise NotFound(f"quota {quota_id!r} not found")
        return found[0]

    async def update_quota(self, quota_id: str, changes: Mapping[str, Any]) -> Quota:
        """Change some fields of a quota."""
        decode(QuotaChanges, changes, "quota")
        current = await self.get_quota(quota_id)
        values = await self._common(changes, QUOTA_FIELDS, current)
        if "metric" in changes:
            if changes["metric"] not in METRICS:
                raise BadRequest(f"metric must be one of {', '.join(METRICS)}")
            values["metric"] = changes["metric"]
        if "limit" in changes:
            values["limit"] = _int(changes["limit"], "limit")
        updated = await self.store.update_quota(msgspec.structs.replace(current, **values))
        await self._changed()
        return updated

    async def delete_quota(self, quota_id: str) -> None:
        """Delete a quota."""
        if not await self.store.delete("quota", quota_id):
            raise NotFound(f"quota {quota_id!r} not found")
        await self._changed()

    # --- ledger views ---------------------------------------------------------------------------------------------

    async def windows(self, definition_id: str) -> list[dict[str, Any]]:
        """Return a budget's or quota's settled windows, newest first."""
        return await self.store.windows(definition_id)

    async def events(
        self, *, budget_id: str | None = None, since: Any = None, limit: int = 100
    ) -> list[BudgetEvent]:
        """Return budget events (threshold crossings and overspends), newest first."""
        return await self.store.list_events(
            budget_id=budget_id, since=_parse_datetime(since, "since"), limit=limit
        )


# --- declarative configuration -----------------------------------------------------------------------------------


async def apply_governance(
    doc: Mapping[str, Any], *, service: GovernanceAdmin, dry_run: bool = False
) -> dict[str, list[str]]:
    """Apply top-level `budgets:` and `quotas:` sections; match by (name, owner) so re-applying is idempotent."""
    report: dict[str, list[str]] = {"created": [], "updated": [], "unchanged": []}
    for section, kind in (("budgets", "budget"), ("quotas", "quota")):
        items = doc.get(section) or []
        if not isinstance(items, list):
            raise BadRequest(f"{section}: expected a list")
        for index, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise BadRequest(f"{section}[{index}]: expected a mapping")
            try:
                owner = await service._owner(item, None)
                name = _text(item.get("name"), "name")
                filters = {"owner_type": owner["owner_type"], "owner_id": owner["owner_id"]}
                existing: list[Any] = [
                    d for d in await (service.list_budgets if kind == "budget" else service.list_quotas)(**filters)
                    if d.name == name
                ]  # fmt: skip
                label = f"{kind} {name} ({owner['owner_type']} {owner['owner_id']})"
                changes = {k: v for k, v in item.items() if k not in ("organisation", "team", "user", "key")}
                if not existing:
                    if not dry_run:
                        if kind == "budget":
                            await service.create_budget(item)
                        else:
                            await service.create_quota(item)
                    report["created"].append(label)
                    continue
                current = existing[0]
                if kind == "budget":
                    before = msgspec.to_builtins(current)
                    if not dry_run:
                        after = msgspec.to_builtins(await service.update_budget(current.id, changes))
                    else:
                        after = before
                else:
                    before = msgspec.to_builtins(current)
                    after = (
                        msgspec.to_builtins(await service.update_quota(current.id, changes))
                        if not dry_run
                        else before
                    )
                before.pop("updated_at", None)
                after.pop("updated_at", None)
                report["updated" if before != after else "unchanged"].append(label)
            except GatewayError as exc:
                raise BadRequest(f"{section}[{index}]: {exc.message}") from exc
    return report


# --- HTTP routes ----------------------------------------------------------------------------------------------------


def _guarded(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except GatewayError as exc:
            return error_response(exc.status, exc.code, exc.message)

    return endpoint


def _filters(request: Request) -> dict[str, Any]:
    q = request.query_params
    filters: dict[str, Any] = {k: q[k] for k in ("owner_type", "owner_id", "organisation_id") if q.get(k)}
    if q.get("active") in ("true", "false"):
        filters["active"] = q["active"] == "true"
    return filters


def admin_routes(service: GovernanceAdmin) -> list[Route]:
    """Return the /admin/budgets, /admin/quotas and /admin/budget-events routes over `service`."""

    def crud(kind: str) -> list[Route]:
        create = service.create_budget if kind == "budgets" else service.create_quota
        listing = service.list_budgets if kind == "budgets" else service.list_quotas
        get = service.get_budget if kind == "budgets" else service.get_quota
        update = service.update_budget if kind == "budgets" else service.update_quota
        delete = service.delete_budget if kind == "budgets" else service.delete_quota

        async def collection(request: Request) -> Response:
            if request.method == "POST":
                return json_response(await create(await read_body(request)), 201)
            return json_response(await listing(**_filters(request)))

        async def item(request: Request) -> Response:
            ident = request.path_params["id"]
            if request.method == "PATCH":
                return json_response(await update(ident, await read_body(request)))
            if request.method == "DELETE":
                await delete(ident)
                return Response(status_code=204)
            return json_response(await get(ident))

        async def windows(request: Request) -> Response:
            ident = request.path_params["id"]
            await get(ident)
            return json_response(await service.windows(ident))

        return [
            Route(f"/admin/{kind}", _guarded(collection), methods=["GET", "POST"]),
            Route(f"/admin/{kind}/{{id}}", _guarded(item), methods=["GET", "PATCH", "DELETE"]),
            Route(f"/admin/{kind}/{{id}}/windows", _guarded(windows), methods=["GET"]),
        ]

    async def events(request: Request) -> Response:
        q = request.query_params
        try:
            limit = int(q.get("limit", "100"))
        except ValueError:
            raise BadRequest("limit must be an integer") from None
        return json_response(
            await service.events(budget_id=q.get("budget_id"), since=q.get("since"), limit=limit)
        )

    return (
        crud("budgets") + crud("quotas") + [Route("/admin/budget-events", _guarded(events), methods=["GET"])]
    )


def admin_for(store: SqlStore, *, on_change: ChangeHook | None = None) -> GovernanceAdmin:
    """Budgets and quotas management over the catalogue's database (owners resolved by name through it)."""
    from odock.state.service import CatalogueService

    return GovernanceAdmin(GovernanceStore(store), catalogue=CatalogueService(store), on_change=on_change)
