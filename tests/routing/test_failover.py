"""Smart routing through a live gateway and the mock provider: switches, triggers per strategy, retries, cooldowns,
candidate eligibility (grants, type, family) and timeouts."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from odock.mock.testing import MockServer
from odock.state.service import CatalogueService
from tests.harness import GatewayProcess
from tests.routing.conftest import (
    FIRST_BYTE_TIMEOUT_MS,
    SLOW_MS,
    attempts_of,
    called_since,
    chat,
    last_seq,
    make_key,
    models_since,
    wait_usage,
)

STRATEGIES = ["failover", "priority", "round_robin", "weighted", "least_latency"]
TRIGGER_SETS: list[list[str] | None] = [["5xx"], ["timeout"], ["rate_limit"], ["any"], None]
# failure kind -> the two deployments failing that way
FAILING = {
    "5xx": ("e5-a", "e5-b"),
    "timeout": ("slow-a", "slow-b"),
    "rate_limit": ("rl-a", "rl-b"),
    "4xx": ("bad-a", "bad-b"),
}


def fails_over(kind: str, triggers: list[str] | None) -> bool:
    active = set(triggers) if triggers is not None else {"5xx", "timeout"}
    return "any" in active or kind in active


async def test_trigger_table_every_strategy(
    gateway: GatewayProcess, service: CatalogueService, mock: MockServer
) -> None:
    """For every strategy and failoverOn set, each failure kind (5xx, timeout, 429, 4xx) tries the second
    deployment exactly when the trigger covers it, and never otherwise (journal + usage record)."""
    cases: list[tuple[str, list[str] | None, str, str]] = []
    for strategy in STRATEGIES:
        for triggers in TRIGGER_SETS:
            for kind, (first, second) in FAILING.items():
                policy: dict[str, Any] = {
                    "strategy": strategy,
                    "candidates": [
                        {"modelName": first, "priority": 1, "weight": 1},
                        {"modelName": second, "priority": 2, "weight": 1},
                    ],
                    "cooldown": {"failures": 0},  # this table is about triggers, not cooldowns
                }
                if triggers is not None:
                    policy["failoverOn"] = triggers
                cases.append(
                    (strategy, triggers, kind, await make_key(service, policy, models=[first, second]))
                )
    seq = last_seq(mock)
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        responses = await asyncio.gather(
            *(chat(gateway, secret, FAILING[kind][0], http=http) for _s, _t, kind, secret in cases)
        )
    records = await asyncio.gather(*(wait_usage(service, r.headers["x-request-id"]) for r in responses))
    expected_calls: Counter[str] = Counter()
    for (strategy, triggers, kind, _secret), resp, record in zip(cases, responses, records, strict=True):
        assert resp.status_code >= 400, (strategy, triggers, kind)
        attempts = attempts_of(record)
        want = 2 if fails_over(kind, triggers) else 1
        assert len(attempts) == want, (strategy, triggers, kind, attempts)
        assert {a[0] for a in attempts} <= set(FAILING[kind]) and all(a[1] == "failed" for a in attempts)
        assert {a[2] for a in attempts} == {kind}
        assert record["outcome"] == "failed"
        expected_calls[kind] += want
    journal = Counter(model.split("-")[0] for model in models_since(mock, seq))
    prefix = {"5xx": "e5", "timeout": "slow", "rate_limit": "rl", "4xx": "bad"}
    assert {prefix[k]: n for k, n in expected_calls.items()} == dict(journal)


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_failover_answers_from_backup(
    gateway: GatewayProcess, service: CatalogueService, mock: MockServer, strategy: str
) -> None:
    """Whatever the strategy, a failing deployment never reaches the client: every call is answered by the
    healthy candidate, named in x-odock-model; failover/priority always try the requested model first."""
    secret = await make_key(
        service,
        {
            "strategy": strategy,
            "cooldown": {"failures": 0},
            "candidates": [{"modelName": "fo-bad", "priority": 1}, {"modelName": "good-a", "priority": 2}],
        },
    )
    for _ in range(4):
        resp = await chat(gateway, secret, "fo-bad")
        assert resp.status_code == 200 and resp.headers["x-odock-model"] == "good-a"
        record = await wait_usage(service, resp.headers["x-request-id"])
        attempts = attempts_of(record)
        assert attempts[-1] == ("good-a", "success", None)
        if strategy in ("failover", "priority"):
            assert attempts == [("fo-bad", "failed", "5xx"), ("good-a", "success", None)]
            assert record["routing"]["decision"] == "rerouted"
        assert record["model"] == "fo-bad" and record["model_slug"] == "good-a"


async def test_priority_orders_ascending(
    gateway: GatewayProcess, service: CatalogueService, mock: MockServer
) -> None:
    """priority tries the lowest number first among the candidates; the requested model, when listed, takes its
    place by priority."""
    secret = await make_key(
        service,
        {
            "strategy": "priority",
            "failoverOn": ["any"],
            "cooldown": {"failures": 0},
            "candidates": [
                {"modelName": "e5-a", "priority": 3},
                {"modelName": "rl-a", "priority": 1},
                {"modelName": "good-b", "priority": 2},
            ],
        },
    )
    seq = last_seq(mock)
    resp = await chat(gateway, secret, "e5-a")
    assert resp.status_code == 200 and resp.headers["x-odock-model"] == "good-b"
    assert models_since(mock, seq) == ["rl-a", "good-b"]


async def test_routing_off_without_org_switch(
    gateway: GatewayProcess, service: CatalogueService, mock: MockServer
) -> None:
    """With the organisation switch off, a key's routing policy is ignored: a direct call, no fallback."""
    secret = await make_key(service, {"candidates": ["adm-good"]}, org="adm", models=["adm-bad", "adm-good"])
    seq = last_seq(mock)
    resp = await chat(gateway, secret, "adm-bad")
    assert resp.status_code == 502
    assert models_since(mock, seq) == ["adm-bad"]
    record = await wait_usage(service, resp.headers["x-request-id"])
    assert record["routing"]["decision"] == "direct" and len(record["routing"]["attempts"]) == 1


async def test_routing_off_without_policy_for_the_type(
    gateway: GatewayProcess, service: CatalogueService, mock: MockServer
) -> None:
    """A key with a routing policy only for another model type calls a chat model directly."""
    created = await service.create_key(
        {
            "organisation": "route",
            "name": "k-embeddings-only",
            "type": "ORGANISATION",
            "policies": {"routing": {"embeddings": {"candidates": ["good-a"]}}},
            "models": ["e5-a", "good-a"],
        }
    )
    seq = last_seq(mock)
    resp = await chat(gateway, created.secret, "e5-a")
    assert resp.status_code == 502 and models_since(mock, seq) == ["e5-a"]


async def test_switches_managed_through_admin_api(
    gateway: GatewayProcess, service: CatalogueService, mock: MockServer
) -> None:
    """Turning the organisation switch on (inner policies form) and setting a key policy through the admin API
    takes effect on the next call of the live gateway."""
    created = await service.create_key(
        {"organisation": "adm", "name": "k-admin", "type": "ORGANISATION", "models": ["adm-bad", "adm-good"]}
    )
    assert (await chat(gateway, created.secret, "adm-bad")).status_code == 502
    async with httpx.AsyncClient(base_url=gateway.base_url, headers=gateway.admin_headers()) as admin:
        org = await admin.patch("/admin/organisations/adm", json={"policies": {"routing": {"enabled": True}}})
        assert org.status_code == 200, org.text
        key = await admin.patch(
            f"/admin/keys/{created.key.id}",
            json={
                "policies": {
                    "policies": {
                        "routing": {
                            "chat": {"strategy": "failover", "candidates": [{"modelName": "adm-good"}]}
                        }
                    }
                }
            },
        )
        assert key.status_code == 200, key.text
    try:
        seq = last_seq(mock)
        resp = await chat(gateway, created.secret, "adm-bad")
        assert resp.status_code == 200 and resp.headers["x-odock-model"] == "adm-good"
        assert models_since(mock, seq) == ["adm-bad", "adm-good"]
    finally:
        async with httpx.AsyncClient(base_url=gateway.base_url, headers=gateway.admin_headers()) as admin:
            await admin.patch("/admin/organisations/adm", json={"policies": {}})


async def test_max_retries_and_retry_delay(
    gateway: GatewayProcess, service: CatalogueService, mock: MockServer
) -> None:
    """maxRetries extra attempts are made (retrying the only candidate), each after retryDelayMs; maxRetries 0
    stops after the first attempt even with a backup listed."""
    secret = await make_key(service, {"maxRetries": 2, "retryDelayMs": 120, "cooldown": {"failures": 0}})
    seq = last_seq(mock)
    resp = await chat(gateway, secret, "retry-bad")
    assert resp.status_code == 502
    calls = called_since(mock, seq)
    assert [c["model"] for c in calls] == ["retry-bad"] * 3
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(calls)]
    assert all(0.11 <= gap < 1.0 for gap in gaps), gaps
    record = await wait_usage(service, resp.headers["x-request-id"])
    assert [a[1] for a in attempts_of(record)] == ["failed"] * 3

    capped = await make_key(service, {"maxRetries": 0, "candidates": ["good-a"], "cooldown": {"failures": 0}})
    seq = last_seq(mock)
    assert (await chat(gateway, capped, "retry-bad")).status_code == 502
    assert models_since(mock, seq) == ["retry-bad"]


async def test_cooldown_skips_then_probes_and_recovers(
    gateway: GatewayProcess, service: CatalogueService, mock: MockServer
) -> None:
    """A deployment failing `cooldown.failures` times in a row is skipped until `cooldown.seconds` passed, then
    probed; once it answers again it is back in front."""
    secret = await make_key(
        service, {"candidates": ["flip", "good-b"], "cooldown": {"failures": 2, "seconds": 2.0}}
    )
    seq = last_seq(mock)
    for _ in range(2):
        assert (await chat(gateway, secret, "flip")).headers["x-odock-model"] == "good-b"
    assert models_since(mock, seq) == ["flip", "good-b", "flip", "good-b"]
    seq = last_seq(mock)
    for _ in range(3):
        resp = await chat(gateway, secret, "flip")
        assert resp.status_code == 200 and resp.headers["x-odock-model"] == "good-b"
    assert models_since(mock, seq) == ["good-b"] * 3  # cooling: never called
    record = await wait_usage(service, resp.headers["x-request-id"])
    assert attempts_of(record) == [("good-b", "success", None)]

    await asyncio.sleep(
        2.05
    )  # long enough that a loaded machine's three calls above stay inside the cooldown
    seq = last_seq(mock)
    assert (await chat(gateway, secret, "flip")).headers["x-odock-model"] == "good-b"
    assert models_since(mock, seq) == ["flip", "good-b"]  # probed once, failed again
    assert (await chat(gateway, secret, "flip")).headers["x-odock-model"] == "good-b"
    assert models_since(mock, seq) == ["flip", "good-b", "good-b"]  # the failed probe re-cooled it at once

    # the upstream recovers (same deployment, healed slug); after the cooldown the probe succeeds and sticks
    async with httpx.AsyncClient(base_url=gateway.base_url, headers=gateway.admin_headers()) as admin:
        patched = await admin.patch("/admin/models/flip?organisation=route", json={"slug": "flip"})
        assert patched.status_code == 200, patched.text
    await asyncio.sleep(2.05)  # past the cooldown
    seq = last_seq(mock)
    for _ in range(3):
        assert (await chat(gateway, secret, "flip")).headers["x-odock-model"] == "flip"
    assert models_since(mock, seq) == ["flip"] * 3


async def test_every_candidate_cooling_is_tried_anyway(
    gateway: GatewayProcess, service: CatalogueService, mock: MockServer
) -> None:
    """When every candidate is cooling the call still tries them all, rather than failing without asking."""
    secret = await make_key(
        service, {"candidates": ["cool-1", "cool-2"], "cooldown": {"failures": 1, "seconds": 30}}
    )
    seq = last_seq(mock)
    assert (await chat(gateway, secret, "cool-1")).status_code == 502
    assert (await chat(gateway, secret, "cool-1")).status_code == 502
    assert models_since(mock, seq) == ["cool-1", "cool-2", "cool-1", "cool-2"]


async def test_default_cooldown_is_three_failures(
    gateway: GatewayProcess, service: CatalogueService, mock: MockServer
) -> None:
    """Without a cooldown in the policy, three consecutive failures cool a deployment (30 s default)."""
    secret = await make_key(service, {"candidates": ["cool-3", "good-c"]})
    seq = last_seq(mock)
    for _ in range(5):
        assert (await chat(gateway, secret, "cool-3")).headers["x-odock-model"] == "good-c"
    assert models_since(mock, seq) == ["cool-3", "good-c"] * 3 + ["good-c"] * 2


async def test_round_robin_rotates_per_key(
    gateway: GatewayProcess, service: CatalogueService, mock: MockServer
) -> None:
    """round_robin rotates the first candidate on each call of the same key; another key has its own turn."""
    policy = {"strategy": "round_robin", "candidates": ["rr-a", "rr-b", "rr-c"]}
    first, second = await make_key(service, policy), await make_key(service, policy, envelope=True)
    seq = last_seq(mock)
    for _ in range(6):
        assert (await chat(gateway, first, "rr-a")).status_code == 200
    assert models_since(mock, seq) == ["rr-a", "rr-b", "rr-c"] * 2
    seq = last_seq(mock)
    assert (await chat(gateway, second, "rr-a")).status_code == 200
    assert models_since(mock, seq) == ["rr-a"]


async def test_weighted_spreads_by_weight(
    gateway: GatewayProcess, service: CatalogueService, mock: MockServer
) -> None:
    """weighted sends about weight-share of first attempts to each candidate (3:1 over 120 calls)."""
    secret = await make_key(
        service,
        {
            "strategy": "weighted",
            "candidates": [{"modelName": "w-a", "weight": 3}, {"modelName": "w-b", "weight": 1}],
        },
    )
    seq = last_seq(mock)
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        replies = await asyncio.gather(*(chat(gateway, secret, "w-a", http=http) for _ in range(120)))
    assert all(r.status_code == 200 for r in replies)
    counts = Counter(models_since(mock, seq))
    assert counts["w-a"] + counts["w-b"] == 120
    assert 70 <= counts["w-a"] <= 108, counts  # expectation 90, sd ~4.7


async def test_least_latency_prefers_the_fastest(
    gateway: GatewayProcess, service: CatalogueService, mock: MockServer
) -> None:
    """least_latency measures each deployment once, then sends calls to the fastest moving average."""
    secret = await make_key(service, {"strategy": "least_latency", "candidates": ["lat-slow", "lat-fast"]})
    seq = last_seq(mock)
    for _ in range(5):
        assert (await chat(gateway, secret, "lat-slow")).status_code == 200
    assert models_since(mock, seq) == ["lat-slow", "lat-fast", "lat-fast", "lat-fast", "lat-fast"]


async def test_first_byte_timeout_fails_over(
    gateway: GatewayProcess, service: CatalogueService, mock: MockServer
) -> None:
    """An upstream slower than its provider's first_byte_timeout_ms is a `timeout` failure that fails over
    promptly, without waiting for the slow answer."""
    secret = await make_key(service, {"candidates": ["slow-t", "good-a"]})
    started = time.perf_counter()
    resp = await chat(gateway, secret, "slow-t")
    elapsed = time.perf_counter() - started
    assert resp.status_code == 200 and resp.headers["x-odock-model"] == "good-a"
    assert elapsed < SLOW_MS / 1000
    record = await wait_usage(service, resp.headers["x-request-id"])
    assert attempts_of(record) == [("slow-t", "failed", "timeout"), ("good-a", "success", None)]
    first = record["routing"]["attempts"][0]
    assert FIRST_BYTE_TIMEOUT_MS - 10 <= first["latency_ms"] < SLOW_MS


async def test_ungranted_or_other_type_fallback_never_called(
    gateway: GatewayProcess, service: CatalogueService, mock: MockServer
) -> None:
    """Candidates that are not granted to the key, of another model type, unknown, or on a disabled provider
    are skipped: the mock never sees them."""
    secret = await make_key(
        service,
        {
            "candidates": ["hidden", "embed-x", "no-such-model", "off-x", "good-c"],
            "cooldown": {"failures": 0},
        },
    )
    seq = last_seq(mock)
    resp = await chat(gateway, secret, "e5-u")
    assert resp.status_code == 200 and resp.headers["x-odock-model"] == "good-c"
    assert models_since(mock, seq) == ["e5-u", "good-c"]
    record = await wait_usage(service, resp.headers["x-request-id"])
    assert [a[0] for a in attempts_of(record)] == ["e5-u", "good-c"]


async def test_native_route_fallback_stays_in_family(
    gateway: GatewayProcess, service: CatalogueService, mock: MockServer
) -> None:
    """On the OpenAI route nativeFallback.openai is used and an Anthropic candidate is never called; the unified
    route with the same key may cross to Anthropic."""
    secret = await make_key(
        service,
        {
            "candidates": ["claude-x"],
            "cooldown": {"failures": 0},
            "nativeFallback": {"openai": ["claude-x", "good-b"]},
        },
    )
    seq = last_seq(mock)
    resp = await chat(gateway, secret, "nat-bad")
    assert resp.status_code == 200 and resp.headers["x-odock-model"] == "good-b"
    assert models_since(mock, seq) == ["nat-bad", "good-b"]

    seq = last_seq(mock)
    unified = await chat(gateway, secret, "nat-bad", path="/v1/llm/chat")
    assert unified.status_code == 200, unified.text
    assert unified.headers["x-odock-model"] == "claude-x" and unified.json()["provider"] == "anthropic"
    calls = called_since(mock, seq)
    assert [(c["model"], c["provider"]) for c in calls] == [("nat-bad", "openai"), ("claude-x", "anthropic")]


async def test_native_route_without_native_fallback_filters_candidates(
    gateway: GatewayProcess, service: CatalogueService, mock: MockServer
) -> None:
    """Without nativeFallback for the route's family, the candidate list is used, minus other families."""
    secret = await make_key(service, {"candidates": ["claude-x", "good-a"], "cooldown": {"failures": 0}})
    seq = last_seq(mock)
    resp = await chat(gateway, secret, "nat-bad")
    assert resp.headers["x-odock-model"] == "good-a"
    assert models_since(mock, seq) == ["nat-bad", "good-a"]


async def test_malformed_policy_routes_directly(
    gateway: GatewayProcess, service: CatalogueService, mock: MockServer
) -> None:
    """A routing policy the gateway cannot understand never breaks calls: the requested model is called
    directly (and a warning logged), no candidate is tried."""
    import sqlalchemy as sa

    from odock.state import schema

    secret = await make_key(service, None)
    # the admin paths refuse such a policy now; one stored before that (or by hand) must still not break calls
    key_hash = hashlib.sha256(secret.encode()).hexdigest()
    async with service.store.mutate() as conn:
        await conn.execute(
            sa.update(schema.api_keys)
            .where(schema.api_keys.c.key_hash == key_hash)
            .values(policies={"routing": {"chat": {"strategy": "fastest", "candidates": ["good-a"]}}})
        )
    await asyncio.sleep(1.2)  # the gateway's catalogue version poll picks the change up
    seq = last_seq(mock)
    resp = await chat(gateway, secret, "e5-a")
    assert resp.status_code == 502 and models_since(mock, seq) == ["e5-a"]


async def test_upstream_429_fails_over_or_reaches_the_client(
    gateway: GatewayProcess, service: CatalogueService, mock: MockServer
) -> None:
    """failoverOn rate_limit still fails over on an upstream 429; without the trigger, or when every candidate
    is rate limited, the client gets the provider's 429 and Retry-After (not a 502), every attempt recorded."""
    candidates = [{"modelName": "rl-a"}, {"modelName": "good-a"}]
    fails_over = await make_key(
        service, {"failoverOn": ["rate_limit"], "candidates": candidates, "cooldown": {"failures": 0}}
    )
    stays = await make_key(
        service, {"failoverOn": ["5xx"], "candidates": candidates, "cooldown": {"failures": 0}}
    )
    all_limited = await make_key(
        service,
        {
            "failoverOn": ["rate_limit"],
            "cooldown": {"failures": 0},
            "candidates": [{"modelName": "rl-a"}, {"modelName": "rl-b"}],
        },
    )
    seq = last_seq(mock)
    answered = await chat(gateway, fails_over, "rl-a")
    assert answered.status_code == 200 and answered.headers["x-odock-model"] == "good-a"
    assert models_since(mock, seq) == ["rl-a", "good-a"]
    for secret, tried in ((stays, ["rl-a"]), (all_limited, ["rl-a", "rl-b"])):
        seq = last_seq(mock)
        resp = await chat(gateway, secret, "rl-a")
        assert resp.status_code == 429 and resp.headers["retry-after"] == "1", resp.text
        assert resp.headers["x-odock-upstream-status"] == "429"
        assert resp.json()["error"]["code"] == "rate_limit_exceeded"  # the provider's own OpenAI error object
        assert models_since(mock, seq) == tried
        record = await wait_usage(service, resp.headers["x-request-id"])
        assert record["status"] == 429 and [a[:2] for a in attempts_of(record)] == [
            (m, "failed") for m in tried
        ]
