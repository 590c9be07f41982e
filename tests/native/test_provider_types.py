"""Provider types beyond the four originals, through a live gateway: `azure_openai`, `custom` and `google` are
created over the admin API and serve their family's routes; a type outside the registry is refused."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import openai
import pytest
from google import genai
from google.genai import types

from odock.mock.testing import MockServer
from odock.state.service import CatalogueService
from tests.harness import GatewayProcess
from tests.native.conftest import last_request, wait_usage

pytestmark = pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")

AZURE_KEY, CUSTOM_KEY, GOOGLE_KEY = "sk-azure-upstream-1", "sk-custom-upstream-1", "sk-google-upstream-1"


def sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


async def admin(gateway: GatewayProcess, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gateway.base_url, headers=gateway.admin_headers()) as http:
        return await http.request(method, path, **kwargs)


@pytest.fixture(scope="module")
async def new_types(gateway: GatewayProcess, seeded: dict[str, Any], mock: MockServer) -> dict[str, str]:
    """Providers of the types azure_openai, custom and google on the mock, a model on each, granted to the key."""
    org = seeded["org"]
    providers = [
        ("azure", "azure_openai", f"{mock.base_url}/v1", AZURE_KEY, {"api_version": "2024-10-21"}),
        ("selfhosted", "custom", f"{mock.base_url}/v1", CUSTOM_KEY, {}),
        ("google", "google", mock.base_url, GOOGLE_KEY, {}),
    ]
    for name, ptype, base, secret, config in providers:
        created = await admin(
            gateway,
            "POST",
            "/admin/providers",
            json={
                "organisation": org,
                "name": name,
                "type": ptype,
                "base_url": base,
                "api_key": secret,
                "config": config,
            },
        )
        assert created.status_code == 201, created.text
    models = {
        "azure-test": ("azure", "gpt-4o-mini"),
        "custom-test": ("selfhosted", "gpt-4o-mini"),
        "google-test": ("google", "gemini-2.5-flash"),
    }
    for name, (provider, slug) in models.items():
        created = await admin(
            gateway,
            "POST",
            "/admin/models",
            json={"organisation": org, "name": name, "provider": provider, "slug": slug},
        )
        assert created.status_code == 201, created.text
        granted = await admin(gateway, "POST", f"/admin/keys/{seeded['key_id']}/grants", json={"model": name})
        assert granted.status_code in (200, 201), granted.text
    return {name: provider for name, (provider, _) in models.items()}


async def test_azure_and_custom_serve_the_openai_routes(
    gateway: GatewayProcess, key: str, service: CatalogueService, mock: MockServer, new_types: dict[str, str]
) -> None:
    """An azure_openai model answers on /v1/chat/completions with the key sent as `api-key` and the configured
    api-version; a custom model answers with the key as a bearer token; both are the openai family (usage record,
    and the unified route's `provider`)."""
    async with openai.AsyncOpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="azure-test", messages=[{"role": "user", "content": "hello azure"}]
        )
        assert raw.parse().choices[0].message.content
        upstream = last_request(mock, "/v1/chat/completions")
        assert upstream["credential_sha256"] == sha(AZURE_KEY) and upstream["model"] == "gpt-4o-mini"
        assert upstream["query"] == {"api-version": "2024-10-21"}
        record = await wait_usage(service, raw.headers["x-request-id"])
        assert record["provider"] == "openai" and record["model"] == "azure-test"

        reply = await c.chat.completions.create(
            model="custom-test", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in reply if chunk.choices])
        assert text
        upstream = last_request(mock, "/v1/chat/completions")
        assert upstream["credential_sha256"] == sha(CUSTOM_KEY) and upstream["query"] == {}
    async with httpx.AsyncClient(
        base_url=gateway.base_url, headers={"Authorization": f"Bearer {key}"}
    ) as http:
        unified = await http.post(
            "/v1/llm/chat",
            json={
                "model": "custom-test",
                "provider": "openai",
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
    assert unified.status_code == 200, unified.text
    assert unified.json()["provider"] == "openai"


async def test_google_serves_the_gemini_route(
    gateway: GatewayProcess, key: str, service: CatalogueService, mock: MockServer, new_types: dict[str, str]
) -> None:
    """A google-typed model answers google-genai's generate_content on the Gemini route through the slug, with the
    key as `x-goog-api-key`; the usage record names the gemini family."""
    client = genai.Client(
        api_key=key,
        http_options=types.HttpOptions(
            base_url=gateway.base_url, api_version="v1beta", retry_options=types.HttpRetryOptions(attempts=1)
        ),
    )
    reply = await client.aio.models.generate_content(model="google-test", contents="hello google")
    assert reply.text
    upstream = last_request(mock, "/v1beta/models/gemini-2.5-flash:generateContent")
    assert upstream["credential_sha256"] == sha(GOOGLE_KEY)
    assert reply.sdk_http_response is not None and reply.sdk_http_response.headers is not None
    headers = {k.lower(): v for k, v in reply.sdk_http_response.headers.items()}
    record = await wait_usage(service, headers["x-request-id"])
    assert record["provider"] == "gemini" and record["model"] == "google-test"


async def test_unregistered_provider_type_is_refused_by_the_admin_api(
    gateway: GatewayProcess, seeded: dict[str, Any], new_types: dict[str, str]
) -> None:
    """Creating a provider of a type outside the registry, or changing one to it, is 400
    provider_type_unsupported; nothing is stored."""
    created = await admin(
        gateway,
        "POST",
        "/admin/providers",
        json={
            "organisation": seeded["org"],
            "name": "mistral",
            "type": "mistral",
            "base_url": "http://127.0.0.1:9",
        },
    )
    assert created.status_code == 400 and created.json()["error"]["code"] == "provider_type_unsupported"
    changed = await admin(
        gateway,
        "PATCH",
        "/admin/providers/azure",
        params={"organisation": seeded["org"]},
        json={"type": "huggingface"},
    )
    assert changed.status_code == 400 and changed.json()["error"]["code"] == "provider_type_unsupported"
    listed = (await admin(gateway, "GET", "/admin/providers")).json()["data"]
    assert "mistral" not in {p["name"] for p in listed}
    assert {p["name"]: p["type"] for p in listed}["azure"] == "azure_openai"
