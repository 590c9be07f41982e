"""The live gateway of a fuzz module (one process per module: a module may override `fuzz_proc`), its catalogue,
and HTTP clients for its LLM routes and its admin API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tests.harness import GatewayProcess, seed_basic


@pytest.fixture(scope="module")
def fuzz_proc(tmp_path_factory: pytest.TempPathFactory) -> GatewayProcess:
    """An embedded-mode process (SQLite) for the module; not started yet."""
    return GatewayProcess(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(scope="module")
async def refs(fuzz_proc: GatewayProcess, mock: Any) -> AsyncIterator[dict[str, Any]]:
    """The basic catalogue (org `acme`, every provider type on the mock, a granted key), and an org `zeta` whose
    items the admin fuzz creates under (by name) and patches (by id, which a rename cannot break)."""
    service = await fuzz_proc.open_service()
    try:
        seeded = await seed_basic(service, mock.base_url)
        # generous limits, so that fuzzed bodies go through every governance gate without being stopped by one
        await service.update_organisation(
            "acme",
            {
                "policies": {
                    "ratelimit": {
                        "requests": {"per_second": 100_000, "per_minute": 1_000_000, "burst": 100_000},
                        "tokens": {"per_minute": 10**12},
                        "concurrency": {"max": 1000},
                        "payload": {"max_request_bytes": 10**8, "max_tokens": 10**9},
                    }
                }
            },
        )
        ids: dict[str, Any] = {"secret": seeded["secret"]}
        await service.create_organisation({"name": "zeta"})
        ids["organisations"] = (await service.create_organisation({"name": "zeta-patch"})).id
        for name in ("zeta-provider", "zeta-provider-2"):
            provider = await service.create_provider(
                {
                    "organisation": "zeta",
                    "name": name,
                    "type": "openai",
                    "base_url": f"{mock.base_url}/v1",
                    "api_key": "sk-x",
                }
            )
        ids["providers"] = provider.id
        for name in ("zeta-model", "zeta-model-2"):
            model = await service.create_model(
                {
                    "organisation": "zeta",
                    "name": name,
                    "provider": "zeta-provider",
                    "slug": "gpt-4o-mini",
                    "type": "chat",
                }
            )
        ids["models"] = model.id
        ids["teams"] = (await service.create_team({"organisation": "zeta", "name": "zeta-team"})).id
        ids["users"] = (await service.create_user({"organisation": "zeta", "email": "z@zeta.test"})).id
        ids["keys"] = (
            await service.create_key({"organisation": "zeta", "name": "zeta-key", "models": ["zeta-model"]})
        ).key.id
        yield ids
    finally:
        await service.store.close()


@pytest.fixture(scope="module")
def live(fuzz_proc: GatewayProcess, refs: dict[str, Any]) -> Iterator[GatewayProcess]:
    """One gateway process for the whole module; a budget and a quota on each organisation (never reached)."""
    fuzz_proc.start()
    with httpx.Client(base_url=fuzz_proc.base_url, headers=fuzz_proc.admin_headers(), timeout=15) as client:
        for org in ("acme", "zeta"):
            for kind, body in (
                ("budgets", {"name": "b", "organisation": org, "amount_usd": "1000000"}),
                ("quotas", {"name": "q", "organisation": org, "metric": "TOKENS", "limit": 10**15}),
            ):
                resp = client.post(f"/admin/{kind}", json=body)
                assert resp.status_code == 201, resp.text
                refs[kind] = resp.json()["id"]
    yield fuzz_proc
    fuzz_proc.stop()


@pytest.fixture(scope="module")
def http(live: GatewayProcess, refs: dict[str, Any]) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {refs['secret']}"}
    with httpx.Client(base_url=live.base_url, headers=headers, timeout=15) as client:
        yield client


@pytest.fixture(scope="module")
def admin(live: GatewayProcess, refs: dict[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.base_url, headers=live.admin_headers(), timeout=15) as client:
        yield client
