"""Pure pieces of routing: policy parsing, strategy ordering, attempt sequences, triggers and cooldown bookkeeping."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from odock.errors import BadRequest, UpstreamError
from odock.routing.health import HealthBook
from odock.routing.router import Candidate, RoutePlan, attempt_sequence, triggered
from odock.routing.strategies import (
    DEFAULT_TRIGGERS,
    CandidateSpec,
    PolicyError,
    order,
    org_routing_enabled,
    parse_policy,
    validate_routing,
)
from odock.state.records import ModelRecord, ProviderRecord


def spec(name: str, priority: float = math.inf, weight: float = 1.0) -> CandidateSpec:
    return CandidateSpec(name, priority, weight)


def names(items: list[CandidateSpec]) -> list[str]:
    return [s.name for s in items]


def test_org_switch_accepts_envelope_and_inner() -> None:
    """`routing.enabled` is read from the §5.1 envelope or the inner dict; only a literal true switches it on."""
    assert org_routing_enabled({"policies": {"routing": {"enabled": True}}})
    assert org_routing_enabled({"routing": {"enabled": True}})
    assert not org_routing_enabled({"routing": {"enabled": "yes"}})
    assert not org_routing_enabled({})
    assert not org_routing_enabled(None)


def test_parse_documented_shape() -> None:
    """The §9.2 example parses with its strategy, candidates, triggers, retries, delay and native fallback."""
    policy = parse_policy(
        {
            "strategy": "priority",
            "candidates": [
                {"modelName": "primary-chat", "priority": 1},
                {"modelName": "backup-chat", "priority": 2, "weight": 3},
            ],
            "failoverOn": ["5xx", "timeout", "rate_limit"],
            "maxRetries": 2,
            "retryDelayMs": 100,
            "nativeFallback": {
                "openai": ["openai-backup-chat"],
                "vllm": [{"modelName": "local-backup-chat"}],
            },
            "cooldown": {"failures": 5, "seconds": 2.5},
        }
    )
    assert policy.strategy == "priority"
    assert policy.candidates == (spec("primary-chat", 1), spec("backup-chat", 2, 3))
    assert policy.triggers == {"5xx", "timeout", "rate_limit"}
    assert (policy.max_retries, policy.retry_delay_s) == (2, 0.1)
    assert names(list(policy.native_fallback["vllm"])) == ["local-backup-chat"]
    assert (policy.cooldown_failures, policy.cooldown_s) == (5, 2.5)


def test_parse_defaults_and_snake_case() -> None:
    """Omitted fields default (failover, 5xx+timeout, retries per candidate); snake_case spellings are accepted."""
    policy = parse_policy({"candidates": ["a"]})
    assert policy.strategy == "failover" and policy.triggers == DEFAULT_TRIGGERS
    assert policy.max_retries is None and policy.retry_delay_s == 0
    snake = parse_policy(
        {"failover_on": ["any"], "max_retries": 1, "retry_delay_ms": 5, "candidates": [{"model_name": "b"}]}
    )
    assert snake.triggers == {"any"} and snake.max_retries == 1 and names(list(snake.candidates)) == ["b"]


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({"strategy": "fastest"}, "unknown strategy"),
        ({"failoverOn": ["4xx"]}, "unknown failoverOn"),
        ({"maxRetries": -1}, "maxRetries"),
        ({"retryDelayMs": "100"}, "retryDelayMs"),
        ({"candidates": [{"priority": 1}]}, "modelName"),
        ({"candidates": [{"modelName": "a", "weight": -1}]}, "weight"),
        ({"cooldown": {"failures": 1.5}}, "cooldown.failures"),
        ([], "object"),
    ],
)
def test_parse_rejects_bad_policies(raw: object, fragment: str) -> None:
    """A malformed policy raises PolicyError naming the offending field."""
    with pytest.raises(PolicyError, match=fragment):
        parse_policy(raw)


def test_validate_routing_reports_each_problem() -> None:
    """validate_routing lists every broken model-type policy and a non-boolean switch; a good one is clean."""
    assert validate_routing({"policies": {"routing": {"chat": {"strategy": "failover"}}}}) == []
    problems = validate_routing(
        {"routing": {"enabled": 1, "chat": {"strategy": "x"}, "image": {"maxRetries": -2}}}
    )
    assert len(problems) == 3 and any("chat" in p for p in problems) and any("image" in p for p in problems)


def test_failover_and_priority_order() -> None:
    """failover keeps list order; priority sorts ascending, unspecified last, ties in list order."""
    items = [spec("a", 3), spec("b"), spec("c", 1), spec("d", 1), spec("req", -math.inf)]
    assert names(order("failover", items, lambda s: s)) == ["a", "b", "c", "d", "req"]
    assert names(order("priority", items, lambda s: s)) == ["req", "c", "d", "a", "b"]


def test_round_robin_rotates_the_first_candidate() -> None:
    """round_robin starts at turn % n and keeps the rest in order."""
    items = [spec("a"), spec("b"), spec("c")]
    firsts = [order("round_robin", items, lambda s: s, rotation=turn)[0].name for turn in range(6)]
    assert firsts == ["a", "b", "c", "a", "b", "c"]
    assert names(order("round_robin", items, lambda s: s, rotation=4)) == ["b", "c", "a"]


def test_weighted_follows_weights() -> None:
    """weighted picks the first candidate in proportion to weight; weight 0 is never first."""
    rng = random.Random(7)
    items = [spec("a", weight=3), spec("b", weight=1), spec("never", weight=0)]
    firsts = Counter(order("weighted", items, lambda s: s, rng=rng)[0].name for _ in range(4000))
    assert firsts["never"] == 0
    assert 0.71 < firsts["a"] / 4000 < 0.79


def test_least_latency_prefers_unmeasured_then_fastest() -> None:
    """least_latency tries an unmeasured deployment first, then ascending moving-average latency."""
    latency = {"slow": 0.3, "fast": 0.01, "new": None}
    items = [spec("slow"), spec("fast"), spec("new")]
    assert names(order("least_latency", items, lambda s: s, latency_of=lambda s: latency[s.name])) == [
        "new",
        "fast",
        "slow",
    ]


def candidate(name: str) -> Candidate:
    model = ModelRecord(id=f"id-{name}", organisation_id="o", name=name, slug=name, provider_id="p")
    return Candidate(
        model, ProviderRecord(id="p", organisation_id="o", name="p", type="openai", base_url="x")
    )


def test_attempt_sequence_cycles_for_extra_retries() -> None:
    """maxRetries extra attempts walk the candidates and start again from the first."""
    a, b = candidate("a"), candidate("b")
    assert attempt_sequence(RoutePlan([a, b], max_retries=0)) == [a]
    assert attempt_sequence(RoutePlan([a, b], max_retries=1)) == [a, b]
    assert attempt_sequence(RoutePlan([a, b], max_retries=3)) == [a, b, a, b]


@pytest.mark.parametrize(
    "kind, triggers, expected",
    [
        ("5xx", {"5xx"}, True),
        ("connect", {"5xx"}, True),
        ("protocol", {"5xx"}, True),
        ("timeout", {"5xx"}, False),
        ("timeout", {"timeout"}, True),
        ("rate_limit", DEFAULT_TRIGGERS, False),
        ("rate_limit", {"rate_limit"}, True),
        ("4xx", {"5xx", "timeout", "rate_limit"}, False),
        ("4xx", {"any"}, True),
    ],
)
def test_triggers(kind: str, triggers: set[str], expected: bool) -> None:
    """Each failure kind fails over exactly under its failoverOn trigger (connect/protocol count as 5xx)."""
    assert triggered(UpstreamError("x", kind=kind), frozenset(triggers)) is expected


def test_gateway_errors_never_fail_over() -> None:
    """A gateway-side error (not the upstream's) is returned at once, even under `any`."""
    assert not triggered(BadRequest("bad", "invalid_request"), frozenset({"any"}))


def test_cooldown_after_consecutive_failures_then_probe() -> None:
    """N failures in a row cool a deployment; after the period it is probed; a failed probe re-cools it at once,
    a success clears it."""
    book = HealthBook()
    clock = [100.0]
    book._now = lambda: clock[0]  # type: ignore[method-assign]
    book.failure("m")
    book.failure("m")
    assert not book.cooling("m", 3, 30)
    book.success("m", 0.01)
    book.failure("m")
    book.failure("m")
    assert not book.cooling("m", 3, 30)  # the success broke the streak
    book.failure("m")
    assert book.cooling("m", 3, 30)
    clock[0] += 31
    assert not book.cooling("m", 3, 30)  # probe time
    book.failure("m")
    assert book.cooling("m", 3, 30)
    book.success("m", 0.02)
    assert not book.cooling("m", 3, 30) and book.failures("m") == 0
    assert not book.cooling("m", 0, 30)  # threshold 0 disables cooldowns


def test_latency_window_is_a_moving_average() -> None:
    """The latency of a deployment is the mean of its last 20 observations."""
    book = HealthBook()
    assert book.latency("m") is None
    for _ in range(20):
        book.success("m", 1.0)
    for _ in range(20):
        book.success("m", 0.1)
    assert book.latency("m") == pytest.approx(0.1)
