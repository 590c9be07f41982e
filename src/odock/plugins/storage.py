"""The read API a plugin gets (reference §8.2 `storage_access`): each method needs its scope, and every read stays
inside the calling key's own organisation. No store or Redis handle is offered, so a plugin cannot write.

This is an API boundary for plugins the operator chose to run, not a sandbox against hostile code in-process."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from odock.context import CallContext
    from odock.state.catalogue import Catalogue
    from odock.state.sql import SqlStore

# budgets of one owner: (owner type "ORG" | "TEAM" | "USER" | "APIKEY", owner id) -> budget objects
BudgetReader = Callable[[str, str], list[dict[str, Any]]]


class StorageAccessDenied(PermissionError):
    """The plugin read something its `storage_access` does not grant."""


class StorageBackends:
    """What the gateway lends the read API (shared by every call)."""

    __slots__ = ("budgets", "catalogue", "store")

    def __init__(
        self,
        catalogue: Catalogue | None = None,
        store: SqlStore | None = None,
        budgets: BudgetReader | None = None,
    ) -> None:
        self.catalogue = catalogue
        self.store = store
        self.budgets = budgets


def _public(record: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(record)
    for name in drop:
        data.pop(name, None)
    return data


class PluginStorage:
    """Scoped reads for one plugin on one call."""

    __slots__ = ("_backends", "_ctx", "_name", "_scopes")

    def __init__(
        self, name: str, scopes: frozenset[str], ctx: CallContext, backends: StorageBackends
    ) -> None:
        self._name = name
        self._scopes = scopes
        self._ctx = ctx
        self._backends = backends

    @property
    def scopes(self) -> frozenset[str]:
        return self._scopes

    def _need(self, scope: str) -> None:
        if scope not in self._scopes:
            raise StorageAccessDenied(f"plugin {self._name!r} has no {scope!r} storage access")

    def _catalogue(self) -> Catalogue:
        if self._backends.catalogue is None:
            raise StorageAccessDenied("no catalogue in this deployment")
        return self._backends.catalogue

    async def organisation(self) -> dict[str, Any] | None:
        """The calling key's organisation."""
        self._need("organisations")
        key = self._ctx.key
        org = await self._catalogue().organisation(key.organisation_id) if key else None
        return _public(org, ("policies",)) if org else None

    async def team(self) -> dict[str, Any] | None:
        """The calling key's team (None for a key without one)."""
        self._need("teams")
        key = self._ctx.key
        team = await self._catalogue().team(key.team_id) if key and key.team_id else None
        return _public(team, ("policies",)) if team else None

    async def user(self) -> dict[str, Any] | None:
        """The calling key's user (None for a key without one)."""
        self._need("users")
        key, store = self._ctx.key, self._backends.store
        if key is None or key.user_id is None or store is None:
            return None
        user = await store.get_user(key.user_id)
        return _public(user) if user and user.organisation_id == key.organisation_id else None

    async def api_key(self) -> dict[str, Any] | None:
        """The calling key's record, without its hash."""
        self._need("api_keys")
        key = self._ctx.key
        return _public(key, ("key_hash", "policies")) if key else None

    async def model(self, name: str) -> dict[str, Any] | None:
        """A model of the calling key's organisation, by name."""
        self._need("models")
        key = self._ctx.key
        model = await self._catalogue().model(key.organisation_id, name) if key else None
        return _public(model, ("policies",)) if model else None

    async def granted_model_ids(self) -> frozenset[str]:
        """The ids of the models the calling key may use."""
        self._need("model_access")
        key = self._ctx.key
        return await self._catalogue().grants(key.id) if key else frozenset()

    async def policies(self) -> dict[str, dict[str, Any]]:
        """The policies of the calling key's organisation, team, key and resolved model."""
        self._need("policies")
        ctx = self._ctx
        return {
            "organisation": dict(ctx.organisation.policies) if ctx.organisation else {},
            "team": dict(ctx.team.policies) if ctx.team else {},
            "key": dict(ctx.key.policies) if ctx.key else {},
            "model": dict(ctx.model.policies) if ctx.model else {},
        }

    async def budgets(self) -> list[dict[str, Any]]:
        """The active budgets of the calling key's organisation, team, user and key."""
        self._need("budgets")
        key, reader = self._ctx.key, self._backends.budgets
        if key is None or reader is None:
            return []
        owners = [("ORG", key.organisation_id), ("APIKEY", key.id)]
        owners += [("TEAM", key.team_id)] if key.team_id else []
        owners += [("USER", key.user_id)] if key.user_id else []
        return [budget for owner in owners for budget in reader(*owner)]

    async def usage_summary(
        self, group_by: str = "model", *, since: Any = None, until: Any = None
    ) -> list[Any]:
        """Usage totals of the calling key's organisation (`odock.state.reports.usage_summary`)."""
        self._need("usage")
        key, store = self._ctx.key, self._backends.store
        if key is None or store is None:
            return []
        from odock.state.reports import usage_summary

        rows = await usage_summary(
            store, group_by, since=since, until=until, organisation_id=key.organisation_id
        )
        return [_public(row) for row in rows]
