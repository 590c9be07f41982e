"""An upstream 4xx reaches the client as that 4xx (native routes: the provider's own body, byte for byte), so each
official SDK raises its matching class and can honour the provider's Retry-After; a bad provider credential, 5xx
and the strict setting stay 502 (`ODOCK_UPSTREAM_ERRORS`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors, types

from odock.mock.testing import MockServer
from odock.settings import load_settings
from odock.state.service import CatalogueService
from tests.harness import GatewayProcess, seed_basic
from tests.native.conftest import wait_usage

# google-genai subclasses aiohttp.ClientSession for its async transport; aiohttp warns about that (not ours)
pytestmark = pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")

TOO_LONG = "[[mock error=context_length]]"
UNKNOWN_SLUG = "[[mock error=model_not_found]]"
RATE_LIMITED = "[[mock status=429 retry_after=7]]"
OPENAI_TOO_LONG = {
    "message": "This model's maximum context length is 128000 tokens. However, your messages resulted in 131072 "
    "tokens. Please reduce the length of the messages.",
    "type": "invalid_request_error",
    "param": "messages",
    "code": "context_length_exceeded",
}


def openai_client(gateway: GatewayProcess, key: str, path: str = "/v1") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.base_url + path, api_key=key, max_retries=0)


def anthropic_client(gateway: GatewayProcess, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gateway.base_url, api_key=key, max_retries=0)


def gemini_client(gateway: GatewayProcess, key: str) -> genai.Client:
    return genai.Client(
        api_key=key,
        http_options=types.HttpOptions(
            base_url=gateway.base_url, api_version="v1beta", retry_options=types.HttpRetryOptions(attempts=1)
        ),
    )


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


async def test_openai_chat_relays_upstream_4xx(
    gateway: GatewayProcess, key: str, service: CatalogueService
) -> None:
    """/v1/chat/completions: a context-length 400 is BadRequestError with OpenAI's own error object, an unknown
    slug NotFoundError, a 429 RateLimitError with the provider's Retry-After; the record keeps the status."""
    async with openai_client(gateway, key) as c:
        with pytest.raises(openai.BadRequestError) as too_long:
            await c.chat.completions.create(model="gpt-test", messages=user(f"long {TOO_LONG}"))
        with pytest.raises(openai.BadRequestError) as streamed:
            await c.chat.completions.create(model="gpt-test", messages=user(f"long {TOO_LONG}"), stream=True)
        with pytest.raises(openai.NotFoundError) as missing:
            await c.chat.completions.create(model="gpt-test", messages=user(f"x {UNKNOWN_SLUG}"))
        with pytest.raises(openai.RateLimitError) as limited:
            await c.chat.completions.create(model="gpt-test", messages=user(f"x {RATE_LIMITED}"))
    assert too_long.value.body == OPENAI_TOO_LONG and streamed.value.body == OPENAI_TOO_LONG
    assert too_long.value.code == "context_length_exceeded"
    assert too_long.value.response.headers["x-odock-upstream-status"] == "400"
    assert missing.value.code == "model_not_found" and "`gpt-4o-mini` does not exist" in str(
        missing.value.body
    )
    assert limited.value.response.headers.get_list("retry-after") == ["7"]
    assert limited.value.response.headers["x-odock-upstream-status"] == "429"
    request_id = too_long.value.response.headers["x-request-id"]
    assert request_id == too_long.value.request_id  # the gateway's id, never the upstream's
    record = await wait_usage(service, request_id)
    assert (record["status"], record["outcome"], record["error_code"]) == (400, "failed", "upstream_error")


async def test_openai_native_media_routes_relay_upstream_4xx(gateway: GatewayProcess, key: str) -> None:
    """/v1/responses and /v1/embeddings relay an upstream 400 as BadRequestError with the provider's body."""
    async with openai_client(gateway, key) as c:
        with pytest.raises(openai.BadRequestError) as responses:
            await c.responses.create(model="gpt-test", input=f"long {TOO_LONG}")
        with pytest.raises(openai.BadRequestError) as embeddings:
            await c.embeddings.create(model="embed-test", input=f"long {TOO_LONG}")
    assert responses.value.body == OPENAI_TOO_LONG and embeddings.value.body == OPENAI_TOO_LONG


async def test_anthropic_messages_relay_upstream_4xx(
    gateway: GatewayProcess, key: str, service: CatalogueService
) -> None:
    """/v1/messages: Anthropic's own 400/404/429 bodies reach the anthropic SDK with their classes, the provider's
    request-id and Retry-After; the usage record keeps the provider request id."""
    async with anthropic_client(gateway, key) as c:
        with pytest.raises(anthropic.BadRequestError) as too_long:
            await c.messages.create(model="claude-test", max_tokens=8, messages=user(f"long {TOO_LONG}"))
        with pytest.raises(anthropic.NotFoundError) as missing:
            await c.messages.create(model="claude-test", max_tokens=8, messages=user(f"x {UNKNOWN_SLUG}"))
        with pytest.raises(anthropic.RateLimitError) as limited:
            await c.messages.create(
                model="claude-test", max_tokens=8, messages=user(f"x {RATE_LIMITED}"), stream=True
            )
    assert too_long.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "prompt is too long: 213000 tokens > 200000 maximum",
        },
    }
    assert missing.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "model: claude-sonnet-4-5"},
    }
    assert limited.value.response.headers["retry-after"] == "7"
    upstream_id = too_long.value.request_id
    assert upstream_id and upstream_id.startswith("req_")
    record = await wait_usage(service, too_long.value.response.headers["x-request-id"])
    assert record["status"] == 400 and record["provider_request_id"] == upstream_id


async def test_gemini_relays_upstream_4xx(gateway: GatewayProcess, key: str) -> None:
    """generateContent: Google's 400 INVALID_ARGUMENT and 404 NOT_FOUND reach google-genai as ClientError."""
    c = gemini_client(gateway, key)
    with pytest.raises(errors.ClientError) as too_long:
        await c.aio.models.generate_content(model="gemini-test", contents=f"long {TOO_LONG}")
    assert too_long.value.code == 400 and too_long.value.status == "INVALID_ARGUMENT"
    assert (too_long.value.message or "").startswith("The input token count (1200000) exceeds")
    with pytest.raises(errors.ClientError) as missing:
        await c.aio.models.generate_content(model="gemini-test", contents=f"x {UNKNOWN_SLUG}")
    assert missing.value.code == 404 and "models/gemini-2.5-flash is not found" in (
        missing.value.message or ""
    )


async def test_vllm_routes_relay_upstream_4xx(gateway: GatewayProcess, key: str) -> None:
    """/v1/vllm/chat/completions relays the upstream 400 (openai SDK BadRequestError) and a 429 with Retry-After."""
    async with openai_client(gateway, key, "/v1/vllm") as c:
        with pytest.raises(openai.BadRequestError) as too_long:
            await c.chat.completions.create(model="vllm-test", messages=user(f"long {TOO_LONG}"))
        with pytest.raises(openai.RateLimitError) as limited:
            await c.chat.completions.create(model="vllm-test", messages=user(f"x {RATE_LIMITED}"))
    assert too_long.value.body == OPENAI_TOO_LONG
    assert limited.value.response.headers["retry-after"] == "7"


async def test_unified_keeps_status_with_odock_body(gateway: GatewayProcess, key: str) -> None:
    """/v1/llm/chat keeps an upstream 4xx status and Retry-After; the body stays Odock's (code upstream_error),
    carrying the provider's error, whatever the provider's dialect."""
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        limited = await http.post(
            "/v1/llm/chat",
            headers=headers,
            json={"model": "claude-test", "messages": user(f"x {RATE_LIMITED}")},
        )
        too_long = await http.post(
            "/v1/llm/chat",
            headers=headers,
            json={"model": "gemini-test", "messages": user(f"x {TOO_LONG}"), "stream": True},
        )
    assert limited.status_code == 429 and limited.headers["retry-after"] == "7"
    assert limited.headers["x-odock-upstream-status"] == "429"
    error = limited.json()["error"]
    assert error["code"] == "upstream_error" and error["upstream_status"] == 429
    assert error["upstream_error"]["error"]["type"] == "rate_limit_error"
    assert too_long.status_code == 400 and too_long.json()["error"]["upstream_status"] == 400
    assert too_long.json()["error"]["upstream_error"]["error"]["status"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize("status", [401, 402, 403])
async def test_provider_account_failures_stay_502(gateway: GatewayProcess, key: str, status: int) -> None:
    """An upstream 401/402/403 (the gateway's provider credential or account) is 502 upstream_error, never the
    client's own 401/402/403; the upstream status is in the body and in X-Odock-Upstream-Status."""
    async with openai_client(gateway, key) as oa, anthropic_client(gateway, key) as an:
        with pytest.raises(openai.InternalServerError) as via_openai:
            await oa.chat.completions.create(model="gpt-test", messages=user(f"x [[mock status={status}]]"))
        with pytest.raises(anthropic.InternalServerError) as via_anthropic:
            await an.messages.create(
                model="claude-test", max_tokens=8, messages=user(f"x [[mock status={status}]]")
            )
    for err in (via_openai.value, via_anthropic.value):
        assert err.status_code == 502 and err.response.headers["x-odock-upstream-status"] == str(status)
    assert via_openai.value.code == "upstream_error" and via_openai.value.body["upstream_status"] == status  # type: ignore[index]
    assert via_anthropic.value.body["error"]["upstream_status"] == status  # type: ignore[index]
    # the provider's body is about the operator's credential (masked key, project): it never reaches the client
    assert "upstream_error" not in via_openai.value.body  # type: ignore[operator]
    assert "upstream_error" not in via_anthropic.value.body["error"]  # type: ignore[index]


async def test_upstream_5xx_stays_502(gateway: GatewayProcess, key: str) -> None:
    """An upstream 503 with a Retry-After is still 502 upstream_error (its status named in the header)."""
    async with openai_client(gateway, key) as c:
        with pytest.raises(openai.InternalServerError) as failed:
            await c.chat.completions.create(
                model="gpt-test", messages=user("x [[mock status=503 retry_after=3]]")
            )
    assert failed.value.status_code == 502 and failed.value.code == "upstream_error"
    assert failed.value.response.headers["x-odock-upstream-status"] == "503"


@pytest.fixture(scope="module")
def strict_gateway(
    tmp_path_factory: pytest.TempPathFactory, mock: MockServer
) -> Iterator[tuple[GatewayProcess, str]]:
    """A second live gateway with ODOCK_UPSTREAM_ERRORS=strict, seeded like the shared one."""
    import asyncio

    proc = GatewayProcess(tmp_path_factory.mktemp("strict-gateway"), env={"ODOCK_UPSTREAM_ERRORS": "strict"})

    async def seed() -> str:
        service = await proc.open_service()
        try:
            return str((await seed_basic(service, mock.base_url))["secret"])
        finally:
            await service.store.close()

    secret = asyncio.run(seed())
    proc.start()
    yield proc, secret
    proc.stop()


async def test_strict_setting_keeps_every_upstream_failure_502(
    strict_gateway: tuple[GatewayProcess, str],
) -> None:
    """With ODOCK_UPSTREAM_ERRORS=strict an upstream 400 or 429 is 502 upstream_error, as the reference says."""
    gateway, key = strict_gateway
    async with openai_client(gateway, key) as c:
        with pytest.raises(openai.InternalServerError) as too_long:
            await c.chat.completions.create(model="gpt-test", messages=user(f"long {TOO_LONG}"))
        with pytest.raises(openai.InternalServerError) as limited:
            await c.chat.completions.create(model="gpt-test", messages=user(f"x {RATE_LIMITED}"))
    assert too_long.value.status_code == 502 and too_long.value.code == "upstream_error"
    assert too_long.value.body["upstream_error"] == {"error": OPENAI_TOO_LONG}  # type: ignore[index]
    assert limited.value.status_code == 502 and "retry-after" not in limited.value.response.headers
    assert limited.value.response.headers["x-odock-upstream-status"] == "429"  # diagnostics only


def test_setting_refuses_unknown_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """ODOCK_UPSTREAM_ERRORS accepts passthrough (default) and strict; anything else stops the start."""
    monkeypatch.delenv("ODOCK_UPSTREAM_ERRORS", raising=False)
    assert load_settings().upstream_errors == "passthrough"
    monkeypatch.setenv("ODOCK_UPSTREAM_ERRORS", "strict")
    assert load_settings().upstream_errors == "strict"
    monkeypatch.setenv("ODOCK_UPSTREAM_ERRORS", "relaxed")
    with pytest.raises(SystemExit, match="ODOCK_UPSTREAM_ERRORS"):
        load_settings()
