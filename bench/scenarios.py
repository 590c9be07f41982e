"""Scenarios: a name, the catalogue the gateway runs with, and the same call through the gateway and direct.

To add one (e.g. the governance run): write a catalogue builder (or reuse one), add a `Scenario` to
`SCENARIOS` with its tags, and select it with `--only NAME` or the tag's option. Scenarios that share a
catalogue run against one gateway instance; each distinct catalogue gets a fresh gateway (and database).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# client-facing model names in the generated catalogue, and the upstream slugs the mock receives
OPENAI_MODEL, OPENAI_SLUG = "chat", "gpt-4o"
ANTHROPIC_MODEL, ANTHROPIC_SLUG = "claude", "claude-sonnet-4-5"
GEMINI_MODEL, GEMINI_SLUG = "gemini", "gemini-2.0-flash"
FLAKY_MODEL, FLAKY_SLUG = "chat-flaky", "gpt-4o;fail_rate=0.01;status=503"
ORG = "bench"
KEY_ENV = "ODOCK_BENCH_KEY"
UPSTREAM_KEY_ENV = "ODOCK_BENCH_UPSTREAM_KEY"
PROMPT = "Say hello in five words."
MAX_TOKENS = 16
# the SafetySec scenarios' prompt: 4 KB of ordinary prose and code with one e-mail address (redacted each call)
_SAFETY_UNIT = (
    "Please review the quarterly report for the logistics team and summarise the main risks. "
    "The warehouse in Lyon processed 12,400 orders in March, up 8% on February, while returns fell to 2.1%. "
    "def total(orders):\n    return sum(o.amount for o in orders if o.status == 'shipped')\n"
    "Questions go to the operations desk; the system prompt of our assistant is configured in settings.py. "
)
SAFETY_PROMPT = ("Contact: ops.lead@example.com. " + _SAFETY_UNIT * 12)[:4096]


@dataclass(frozen=True)
class Call:
    """One HTTP call: POST `body` to `path` with `headers`; a good answer is 200 and contains `expect`."""

    path: str
    body: bytes
    headers: dict[str, str]
    expect: bytes


@dataclass(frozen=True)
class Scenario:
    """A named measurement: the gateway call, the equivalent direct call, and the catalogue it needs."""

    name: str
    tags: frozenset[str]
    catalogue: str
    gateway: Call
    direct: Call
    peers: bool = False  # also measured through LiteLLM and Portkey (OpenAI chat only)
    stream: bool = False
    note: str = ""
    # the same call on a gateway without governance: measured in the same run, for the governance cost ratio
    baseline: str = ""


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _openai(model: str, stream: bool, prompt: str = PROMPT) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": MAX_TOKENS,
    }
    if stream:
        # the gateway asks upstreams for stream usage; ask in the direct call too, so both move the same bytes
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return _json(body)


def _anthropic(model: str) -> bytes:
    return _json(
        {
            "model": model,
            "max_tokens": MAX_TOKENS,
            "stream": True,
            "messages": [{"role": "user", "content": PROMPT}],
        }
    )


def _gemini() -> bytes:
    return _json(
        {
            "contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
            "generationConfig": {"maxOutputTokens": MAX_TOKENS},
        }
    )


JSON = {"Content-Type": "application/json"}
ANTHROPIC_HEADERS = {**JSON, "anthropic-version": "2023-06-01"}
GEMINI_STREAM = "/v1beta/models/{model}:streamGenerateContent?alt=sse"


def openai_call(
    key: str, model: str, stream: bool, path: str = "/v1/chat/completions", prompt: str = PROMPT
) -> Call:
    """Return an OpenAI chat call authenticated with a bearer `key`."""
    return Call(
        path,
        _openai(model, stream, prompt),
        {**JSON, "Authorization": f"Bearer {key}"},
        b"data:" if stream else b"choices",
    )


def _other_prompt(call: Call) -> Call:
    """The same call with another prompt (its own cache entry)."""
    return Call(call.path, call.body.replace(b"five words", b"six words"), call.headers, call.expect)


def anthropic_call(key: str, model: str) -> Call:
    """Return a streamed Anthropic Messages call (the SDK's x-api-key header)."""
    return Call("/v1/messages", _anthropic(model), {**ANTHROPIC_HEADERS, "x-api-key": key}, b"message_stop")


def gemini_call(key: str, model: str) -> Call:
    """Return a streamed Gemini streamGenerateContent call (the SDK's x-goog-api-key header)."""
    return Call(GEMINI_STREAM.format(model=model), _gemini(), {**JSON, "x-goog-api-key": key}, b"data:")


def unified_call(key: str, model: str) -> Call:
    """Return a streamed call to the unified endpoint (OpenAI-shaped, answered as OpenAI chunks)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS,
        "stream": True,
    }
    return Call("/v1/llm/chat", _json(body), {**JSON, "Authorization": f"Bearer {key}"}, b"data:")


def build_scenarios(key: str, upstream_key: str) -> list[Scenario]:
    """Return every scenario, with `key` as the gateway key and `upstream_key` for direct calls."""
    up = upstream_key
    return [
        Scenario(
            "openai-unary",
            frozenset({"core", "unary"}),
            "base",
            openai_call(key, OPENAI_MODEL, False),
            openai_call(up, OPENAI_SLUG, False),
            peers=True,
        ),
        Scenario(
            "openai-stream",
            frozenset({"core", "stream", "dialects"}),
            "base",
            openai_call(key, OPENAI_MODEL, True),
            openai_call(up, OPENAI_SLUG, True),
            peers=True,
            stream=True,
        ),
        Scenario(
            "anthropic-stream",
            frozenset({"dialects", "stream"}),
            "base",
            anthropic_call(key, ANTHROPIC_MODEL),
            anthropic_call(up, ANTHROPIC_SLUG),
            stream=True,
        ),
        Scenario(
            "gemini-stream",
            frozenset({"dialects", "stream"}),
            "base",
            gemini_call(key, GEMINI_MODEL),
            gemini_call(up, GEMINI_SLUG),
            stream=True,
        ),
        Scenario(
            "unified-to-anthropic-stream",
            frozenset({"dialects", "stream"}),
            "base",
            unified_call(key, ANTHROPIC_MODEL),
            anthropic_call(up, ANTHROPIC_SLUG),
            stream=True,
            note="direct = the Anthropic stream the gateway requests upstream",
        ),
        Scenario(
            "unified-to-gemini-stream",
            frozenset({"dialects", "stream"}),
            "base",
            unified_call(key, GEMINI_MODEL),
            gemini_call(up, GEMINI_SLUG),
            stream=True,
            note="direct = the Gemini stream the gateway requests upstream",
        ),
        Scenario(
            "failover-unary",
            frozenset({"failover", "unary"}),
            "failover",
            openai_call(key, FLAKY_MODEL, False),
            openai_call(up, FLAKY_SLUG, False),
            note="primary fails 1% with 503, fallback healthy; direct = the flaky slug without failover",
        ),
        Scenario(
            "failover-stream",
            frozenset({"failover", "stream"}),
            "failover",
            openai_call(key, FLAKY_MODEL, True),
            openai_call(up, FLAKY_SLUG, True),
            stream=True,
            note="primary fails 1% with 503, fallback healthy; direct = the flaky slug without failover",
        ),
        Scenario(
            "failover-healthy-unary",
            frozenset({"failover", "unary"}),
            "failover",
            openai_call(key, OPENAI_MODEL, False),
            openai_call(up, OPENAI_SLUG, False),
            note="same gateway and key as failover-unary, healthy model",
        ),
        Scenario(
            "failover-healthy-stream",
            frozenset({"failover", "stream"}),
            "failover",
            openai_call(key, OPENAI_MODEL, True),
            openai_call(up, OPENAI_SLUG, True),
            stream=True,
            note="same gateway and key as failover-stream, healthy model",
        ),
        Scenario(
            "cache-hit-unary",
            frozenset({"cache", "unary"}),
            "cache",
            openai_call(key, OPENAI_MODEL, False),
            openai_call(up, OPENAI_SLUG, False),
            note="response cache on for the organisation: the probe fills it, every later call is a hit",
        ),
        Scenario(
            "cache-hit-stream",
            frozenset({"cache", "stream"}),
            "cache",
            _other_prompt(openai_call(key, OPENAI_MODEL, True)),
            _other_prompt(openai_call(up, OPENAI_SLUG, True)),
            stream=True,
            note="as cache-hit-unary, another prompt: a cached unary answer would otherwise answer the probe",
        ),
        Scenario(
            "governance-unary",
            frozenset({"governance", "unary"}),
            "governance",
            openai_call(key, OPENAI_MODEL, False),
            openai_call(up, OPENAI_SLUG, False),
            note="rate limits on every scope, budgets and quotas on org and key, none hit",
            baseline="openai-unary",
        ),
        Scenario(
            "governance-stream",
            frozenset({"governance", "stream"}),
            "governance",
            openai_call(key, OPENAI_MODEL, True),
            openai_call(up, OPENAI_SLUG, True),
            stream=True,
            note="rate limits on every scope, budgets and quotas on org and key, none hit",
            baseline="openai-stream",
        ),
        *_safety_scenarios(key, up),
    ]


def _safety_scenarios(key: str, up: str) -> list[Scenario]:
    """The same 4 KB prompt with SafetySec on (every detector, request and response phases) and off."""
    out = []
    for stream in (False, True):
        kind = "stream" if stream else "unary"
        for catalogue, note in (
            ("safety", "SafetySec on: every detector, request and response phases, 4 KB prompt"),
            ("base", "SafetySec off (no stage): the same 4 KB prompt"),
        ):
            name = f"safety-{kind}" if catalogue == "safety" else f"safety-off-{kind}"
            out.append(
                Scenario(
                    name,
                    frozenset({"safety", kind}),
                    catalogue,
                    openai_call(key, OPENAI_MODEL, stream, prompt=SAFETY_PROMPT),
                    openai_call(up, OPENAI_SLUG, stream, prompt=SAFETY_PROMPT),
                    stream=stream,
                    note=note,
                )
            )
    return out


# --- catalogues (the YAML of `odock serve --config`, see notes/yaml-format.md) -------------------------


@dataclass
class CatalogueSpec:
    """Where the catalogue points: the mock's base URL."""

    mock_url: str
    extra: dict[str, Any] = field(default_factory=dict)


def _base(spec: CatalogueSpec) -> dict[str, Any]:
    mock = spec.mock_url
    api_key = "${" + UPSTREAM_KEY_ENV + "}"
    providers = [
        {
            "organisation": ORG,
            "name": "mock-openai",
            "type": "openai",
            "base_url": f"{mock}/v1",
            "api_key": api_key,
        },
        {
            "organisation": ORG,
            "name": "mock-anthropic",
            "type": "anthropic",
            "base_url": mock,
            "api_key": api_key,
        },
        {"organisation": ORG, "name": "mock-gemini", "type": "gemini", "base_url": mock, "api_key": api_key},
    ]
    pricing = {"input": 2.5, "output": 10.0}
    models = [
        {
            "organisation": ORG,
            "name": OPENAI_MODEL,
            "provider": "mock-openai",
            "slug": OPENAI_SLUG,
            "type": "chat",
            "pricing": pricing,
        },
        {
            "organisation": ORG,
            "name": ANTHROPIC_MODEL,
            "provider": "mock-anthropic",
            "slug": ANTHROPIC_SLUG,
            "type": "chat",
            "pricing": pricing,
        },
        {
            "organisation": ORG,
            "name": GEMINI_MODEL,
            "provider": "mock-gemini",
            "slug": GEMINI_SLUG,
            "type": "chat",
            "pricing": pricing,
        },
    ]
    key = {
        "organisation": ORG,
        "name": "bench-key",
        "type": "ORGANISATION",
        "secret": "${" + KEY_ENV + "}",
        "models": [m["name"] for m in models],
    }
    return {
        "organisations": [{"name": ORG, "timezone": "UTC"}],
        "providers": providers,
        "models": models,
        "keys": [key],
    }


def _failover(spec: CatalogueSpec) -> dict[str, Any]:
    cat = _base(spec)
    cat["models"].append(
        {
            "organisation": ORG,
            "name": FLAKY_MODEL,
            "provider": "mock-openai",
            "slug": FLAKY_SLUG,
            "type": "chat",
            "pricing": {"input": 2.5, "output": 10.0},
        }
    )
    cat["organisations"][0]["policies"] = {"routing": {"enabled": True}}
    key = cat["keys"][0]
    key["models"].append(FLAKY_MODEL)
    key["policies"] = {
        "routing": {
            "chat": {
                "strategy": "failover",
                "candidates": [
                    {"modelName": FLAKY_MODEL, "priority": 1},
                    {"modelName": OPENAI_MODEL, "priority": 2},
                ],
                "failoverOn": ["5xx", "timeout"],
                "maxRetries": 1,
                "retryDelayMs": 0,
                "nativeFallback": {"openai": [OPENAI_MODEL]},
            }
        }
    }
    return cat


# limits far above what 2 cores can reach: every gate runs, none refuses
_UNHIT = {
    "ratelimit": {
        "requests": {"per_second": 1_000_000, "per_minute": 60_000_000, "burst": 1_000_000},
        "tokens": {"per_minute": 1_000_000_000},
        "concurrency": {"max": 100_000},
        "payload": {"max_request_bytes": 1_048_576, "max_tokens": 8192},
    }
}


def _governance(spec: CatalogueSpec) -> dict[str, Any]:
    cat = _base(spec)
    cat["organisations"][0]["policies"] = _UNHIT
    cat["keys"][0]["policies"] = _UNHIT
    for model in cat["models"]:
        model["policies"] = _UNHIT
    # a budget and quotas on the organisation and the key, far above a run's spend: every call reserves and settles
    key = cat["keys"][0]["name"]
    cat["budgets"] = [
        {"name": "bench-org-budget", "organisation": ORG, "period": "MONTHLY", "amount_usd": "1000000.00"},
        {
            "name": "bench-key-budget",
            "organisation": ORG,
            "key": key,
            "period": "DAILY",
            "amount_usd": "100000.00",
        },
    ]
    cat["quotas"] = [
        {
            "name": "bench-org-requests",
            "organisation": ORG,
            "period": "DAILY",
            "metric": "REQUESTS",
            "limit": 1_000_000_000,
        },
        {
            "name": "bench-key-tokens",
            "organisation": ORG,
            "key": key,
            "period": "DAILY",
            "metric": "TOKENS",
            "limit": 1_000_000_000_000,
        },
    ]
    return cat


def _cache(spec: CatalogueSpec) -> dict[str, Any]:
    cat = _base(spec)
    cat["organisations"][0]["policies"] = {"cache": {"mode": "exact", "ttl": "1h"}}
    return cat


SAFETY_POLICY = {
    "enabled": True,
    "request": {"pii": "redact", "secrets": "block", "injection": "observe", "jailbreak": "observe"},
    "response": {"pii": "redact", "secrets": "redact"},
}


def _safety(spec: CatalogueSpec) -> dict[str, Any]:
    cat = _base(spec)
    cat["organisations"][0]["policies"] = {"safety": SAFETY_POLICY}
    return cat


CATALOGUES: dict[str, Callable[[CatalogueSpec], dict[str, Any]]] = {
    "base": _base,
    "cache": _cache,
    "safety": _safety,
    "failover": _failover,
    "governance": _governance,
}


def select(scenarios: list[Scenario], only: list[str], tags: set[str]) -> list[Scenario]:
    """Pick scenarios by name or tag (`only`), plus every scenario carrying one of `tags`, plus the baselines of
    the picked ones (governance is measured against the same gateway without it, in the same run)."""
    picked = []
    for sc in scenarios:
        if (
            (only and (sc.name in only or sc.tags & set(only)))
            or (not only and ("core" in sc.tags or sc.tags & tags))
            or (only and sc.tags & tags)
        ):
            picked.append(sc)
    wanted = {sc.baseline for sc in picked} - {sc.name for sc in picked}
    return [sc for sc in scenarios if sc.name in wanted] + picked
