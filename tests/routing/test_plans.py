"""Routing plans as units: made from a call context, a catalogue view and a turn counter — no process, no
pipeline, no Redis (reference §9: switches, candidates, eligibility, strategies, cooldowns)."""

from __future__ import annotations

from typing import Any

import pytest

from odock.context import CallContext
from odock.errors import UpstreamError
from odock.routing.counters import LocalTurns
from odock.routing.policy import Routing
from odock.routing.router import Candidate
from odock.state.records import ApiKeyRecord, ModelRecord, Organisation, ProviderRecord

PROVIDERS = {
    "p-openai": ProviderRecord(
        id="p-openai", organisation_id="o", name="openai", type="openai", base_url="x", api_key="k"
    ),
    "p-claude": ProviderRecord(
        id="p-claude", organisation_id="o", name="claude", type="anthropic", base_url="x", api_key="k"
    ),
    "p-off": ProviderRecord(
        id="p-off", organisation_id="o", name="off", type="openai", base_url="x", api_key="k", enabled=False
    ),
}


def model(name: str, provider: str = "p-openai", type_: str = "chat") -> ModelRecord:
    return ModelRecord(
        id=f"m-{name}", organisation_id="o", name=name, slug=name, provider_id=provider, type=type_
    )  # type: ignore[arg-type]


class Catalogue:
    """The catalogue view routing reads (models by name, grants, providers)."""

    def __init__(self, models: list[ModelRecord], granted: set[str]) -> None:
        self.models = {m.name: m for m in models}
        self.granted = frozenset(f"m-{name}" for name in granted)

    async def model(self, organisation_id: str, name: str) -> ModelRecord | None:
        return self.models.get(name)

    async def grants(self, api_key_id: str) -> frozenset[str]:
        return self.granted

    async def provider(self, provider_id: str) -> ProviderRecord | None:
        return PROVIDERS.get(provider_id)


MODELS = [
    model("primary"),
    model("backup"),
    model("claude", "p-claude"),
    model("disabled", "p-off"),
    model("ungranted"),
    model("painter", type_="image"),
]


def context(
    policy: dict[str, Any] | None, *, enabled: bool = True, required: str | None = None
) -> CallContext:
    ctx = CallContext(request_id="r", route="test", client_ip="", required_provider=required)
    ctx.organisation = Organisation(id="o", name="o", policies={"routing": {"enabled": enabled}})
    ctx.key = ApiKeyRecord(
        id="k",
        name="k",
        key_hash="h",
        key_preview="p",
        type="ORGANISATION",
        organisation_id="o",
        policies={"routing": {"chat": policy}} if policy else {},
    )
    return ctx


def routing(granted: set[str] | None = None) -> Routing:
    everything = {m.name for m in MODELS} - {"ungranted"}
    return Routing(Catalogue(MODELS, everything if granted is None else granted), counter=LocalTurns())


PRIMARY = Candidate(MODELS[0], PROVIDERS["p-openai"])


def names(plan: Any) -> list[str]:
    return [c.model.name for c in plan.candidates]


async def test_both_switches_are_needed() -> None:
    """Without the organisation switch, or without a key policy, the call goes straight to the requested model."""
    policy = {"strategy": "failover", "candidates": [{"modelName": "backup"}]}
    assert names(await routing().plan(context(policy, enabled=False), PRIMARY)) == ["primary"]
    assert names(await routing().plan(context(None), PRIMARY)) == ["primary"]
    plan = await routing().plan(context(policy), PRIMARY)
    assert names(plan) == ["primary", "backup"] and plan.routed


async def test_ineligible_candidates_are_never_planned() -> None:
    """Candidates of another type, ungranted, on a disabled provider, or unknown are skipped."""
    policy = {
        "strategy": "failover",
        "candidates": [
            {"modelName": "painter"},
            {"modelName": "ungranted"},
            {"modelName": "disabled"},
            {"modelName": "nope"},
            {"modelName": "backup"},
        ],
    }
    assert names(await routing().plan(context(policy), PRIMARY)) == ["primary", "backup"]


async def test_a_native_route_stays_in_its_family() -> None:
    """On an OpenAI route, an Anthropic fallback is not planned; `nativeFallback` replaces the candidates."""
    policy = {
        "strategy": "failover",
        "candidates": [{"modelName": "claude"}, {"modelName": "backup"}],
        "nativeFallback": {"openai": ["backup"]},
    }
    assert names(await routing().plan(context(policy, required="openai"), PRIMARY)) == ["primary", "backup"]
    unified = await routing().plan(context(policy), PRIMARY)
    assert names(unified) == ["primary", "claude", "backup"]


async def test_round_robin_rotates_per_key_and_type() -> None:
    """`round_robin` starts each call of a key one candidate later (the turn counter is the only state)."""
    policy = {"strategy": "round_robin", "candidates": [{"modelName": "primary"}, {"modelName": "backup"}]}
    router = routing()
    starts = [names(await router.plan(context(policy), PRIMARY))[0] for _ in range(4)]
    assert starts == ["primary", "backup", "primary", "backup"]


async def test_priority_and_retries() -> None:
    """`priority` orders by ascending priority; `maxRetries` bounds the attempts."""
    policy = {
        "strategy": "priority",
        "maxRetries": 0,
        "retryDelayMs": 50,
        "failoverOn": ["rate_limit"],
        "candidates": [{"modelName": "backup", "priority": 1}, {"modelName": "primary", "priority": 2}],
    }
    plan = await routing().plan(context(policy), PRIMARY)
    assert names(plan) == ["backup", "primary"]
    assert (plan.max_retries, plan.retry_delay_s, plan.triggers) == (0, 0.05, frozenset({"rate_limit"}))


async def test_a_cooling_deployment_is_skipped_unless_all_are() -> None:
    """After `cooldown.failures` straight failures a deployment is left out for `cooldown.seconds`, unless every
    candidate is cooling; a client's 4xx never counts."""
    policy = {
        "strategy": "failover",
        "cooldown": {"failures": 2, "seconds": 60},
        "candidates": [{"modelName": "primary"}, {"modelName": "backup"}],
    }
    router = routing()
    backup = Candidate(MODELS[1], PROVIDERS["p-openai"])
    for _ in range(3):
        router.observe(PRIMARY, False, 0.01, UpstreamError("bad request", kind="4xx"))
    assert names(await router.plan(context(policy), PRIMARY)) == ["primary", "backup"]
    for _ in range(2):
        router.observe(PRIMARY, False, 0.01, UpstreamError("down", kind="5xx"))
    assert names(await router.plan(context(policy), PRIMARY)) == ["backup"]
    for _ in range(2):
        router.observe(backup, False, 0.01, UpstreamError("down", kind="5xx"))
    assert names(await router.plan(context(policy), PRIMARY)) == ["primary", "backup"]


@pytest.mark.parametrize("broken", [{"strategy": "fastest"}, {"candidates": "primary"}])
async def test_a_broken_policy_routes_directly(broken: dict[str, Any]) -> None:
    """A policy that does not parse (written before validation existed) never breaks calls: direct route."""
    assert names(await routing().plan(context(broken), PRIMARY)) == ["primary"]
