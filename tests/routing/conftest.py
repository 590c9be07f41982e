"""A live gateway (embedded SQLite) in front of the mock provider, seeded for smart-routing tests.

Every model's upstream slug starts with its own name, so the mock journal (which records the bare model, before
`;directives`) shows exactly which deployment was called.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from odock.mock.testing import MockServer, mock_server
from odock.state.service import CatalogueService
from tests.harness import (
    GatewayProcess,
    wait_usage,  # noqa: F401  (re-exported for the tests of this folder)
)

FIRST_BYTE_TIMEOUT_MS = 150
SLOW_MS = 700

# name -> (provider, directives, type); the slug is "<name>;<directives>"
MODELS: dict[str, tuple[str, str, str]] = {
    "good-a": ("oa", "", "chat"),
    "good-b": ("oa", "", "chat"),
    "good-c": ("oa", "", "chat"),
    "e5-a": ("oa", "status=503", "chat"),
    "e5-b": ("oa", "status=503", "chat"),
    "rl-a": ("oa", "status=429", "chat"),
    "rl-b": ("oa", "status=429", "chat"),
    "bad-a": ("oa", "status=400", "chat"),
    "bad-b": ("oa", "status=400", "chat"),
    "slow-a": ("oa-slow", f"latency_ms={SLOW_MS}", "chat"),
    "slow-b": ("oa-slow", f"latency_ms={SLOW_MS}", "chat"),
    "fo-bad": ("oa", "status=500", "chat"),
    "retry-bad": ("oa", "status=502", "chat"),
    "cool-1": ("oa", "status=503", "chat"),
    "cool-2": ("oa", "status=503", "chat"),
    "cool-3": ("oa", "status=503", "chat"),
    "flip": ("oa", "status=503", "chat"),
    "lat-slow": ("oa", "latency_ms=60", "chat"),
    "lat-fast": ("oa", "", "chat"),
    "rr-a": ("oa", "", "chat"),
    "rr-b": ("oa", "", "chat"),
    "rr-c": ("oa", "", "chat"),
    "w-a": ("oa", "", "chat"),
    "w-b": ("oa", "", "chat"),
    "slow-t": ("oa-slow", f"latency_ms={SLOW_MS}", "chat"),
    "nat-bad": ("oa", "status=503", "chat"),
    "claude-x": ("an", "", "chat"),
    "hidden": ("oa", "", "chat"),
    "embed-x": ("oa", "", "embeddings"),
    "off-x": ("oa-off", "", "chat"),
    "e5-u": ("oa", "status=503", "chat"),
    "e5-s": ("oa", "status=503", "chat"),
}
UNGRANTED = {"hidden"}


def slug(name: str) -> str:
    directives = MODELS[name][1]
    return f"{name};{directives}" if directives else name


@pytest.fixture(scope="session")
def mock() -> Iterator[MockServer]:
    """The mock provider, on its own thread."""
    with mock_server() as server:
        yield server


@pytest.fixture(scope="session")
def gateway_proc(tmp_path_factory: pytest.TempPathFactory) -> GatewayProcess:
    return GatewayProcess(tmp_path_factory.mktemp("routing-gateway"))


@pytest.fixture(scope="session")
async def service(gateway_proc: GatewayProcess) -> AsyncIterator[CatalogueService]:
    """The catalogue service over the live gateway's database."""
    svc = await gateway_proc.open_service()
    yield svc
    await svc.store.close()


async def seed_routing(service: CatalogueService, mock_url: str) -> dict[str, Any]:
    """Org `route` (routing on, envelope form) with every test model; org `adm` (routing off) for switch tests."""
    await service.create_organisation(
        {"name": "route", "policies": {"policies": {"routing": {"enabled": True}}}}
    )
    providers = {
        "oa": {"type": "openai", "base_url": f"{mock_url}/v1"},
        "oa-slow": {
            "type": "openai",
            "base_url": f"{mock_url}/v1",
            "config": {"first_byte_timeout_ms": FIRST_BYTE_TIMEOUT_MS},
        },
        "oa-off": {"type": "openai", "base_url": f"{mock_url}/v1", "enabled": False},
        "an": {"type": "anthropic", "base_url": mock_url},
    }
    for name, fields in providers.items():
        await service.create_provider(
            {"organisation": "route", "name": name, "api_key": "sk-upstream-test", **fields}
        )
    for name, (provider, _directives, mtype) in MODELS.items():
        await service.create_model(
            {
                "organisation": "route",
                "name": name,
                "provider": provider,
                "slug": slug(name),
                "type": mtype,
                "pricing": {"input": 1.0, "output": 2.0},
            }
        )
    await service.create_organisation({"name": "adm"})
    await service.create_provider(
        {
            "organisation": "adm",
            "name": "oa",
            "type": "openai",
            "base_url": f"{mock_url}/v1",
            "api_key": "sk-upstream-test",
        }
    )
    for name, directives in (("adm-bad", ";status=503"), ("adm-good", "")):
        await service.create_model(
            {"organisation": "adm", "name": name, "provider": "oa", "slug": name + directives, "type": "chat"}
        )
    return {"granted": [m for m in MODELS if m not in UNGRANTED]}


@pytest.fixture(scope="session")
async def seeded(service: CatalogueService, mock: MockServer) -> dict[str, Any]:
    return await seed_routing(service, mock.base_url)


@pytest.fixture(scope="session")
def gateway(gateway_proc: GatewayProcess, seeded: dict[str, Any]) -> Iterator[GatewayProcess]:
    """The live gateway process, started after the catalogue was seeded."""
    gateway_proc.start()
    yield gateway_proc
    gateway_proc.stop()


async def make_key(
    service: CatalogueService,
    chat_policy: dict[str, Any] | None,
    *,
    org: str = "route",
    models: list[str] | None = None,
    envelope: bool = False,
) -> str:
    """Create a key whose routing policy for `chat` is `chat_policy`; return its secret."""
    policies: dict[str, Any] = {}
    if chat_policy is not None:
        policies = {"routing": {"chat": chat_policy}}
        if envelope:
            policies = {"policies": policies}
    granted = models if models is not None else [m for m in MODELS if m not in UNGRANTED]
    created = await service.create_key(
        {
            "organisation": org,
            "name": f"k-{uuid.uuid4().hex[:10]}",
            "type": "ORGANISATION",
            "policies": policies,
            "models": granted,
        }
    )
    return created.secret


def last_seq(mock: MockServer) -> int:
    journal = mock.requests
    return int(journal[-1]["seq"]) if journal else 0


def called_since(mock: MockServer, seq: int) -> list[dict[str, Any]]:
    """Journal entries newer than `seq` (oldest first), `model` without its `;directives`."""
    return [{**r, "model": str(r["model"]).split(";")[0]} for r in mock.requests if r["seq"] > seq]


def models_since(mock: MockServer, seq: int) -> list[str]:
    return [r["model"] for r in called_since(mock, seq)]


async def chat(
    gateway: GatewayProcess,
    secret: str,
    model: str,
    *,
    path: str = "/v1/chat/completions",
    text: str = "hello",
    http: httpx.AsyncClient | None = None,
    **extra: Any,
) -> httpx.Response:
    """One unary chat call through the live gateway (on `http` when given, else a fresh client)."""
    payload = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    headers = {"Authorization": f"Bearer {secret}"}
    if http is not None:
        return await http.post(path, headers=headers, json=payload)
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10.0) as client:
        return await client.post(path, headers=headers, json=payload)


def attempts_of(record: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(model, outcome, error class) of every attempt in a usage record."""
    routing = record["routing"] or {}
    return [(a["model"], a["outcome"], a["error_class"]) for a in routing.get("attempts", [])]
