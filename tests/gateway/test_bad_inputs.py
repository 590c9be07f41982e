"""Inputs that once gave a 500 (found by tests/fuzz): bodies that are not UTF-8 or nest too deep, fields of a type
the code assumed, and admin values past what the store holds. Each is a 400 in the route's own error shape, raised
by the route's official SDK as its BadRequestError with our message."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from odock.dialects.body import MAX_JSON_DEPTH
from odock.state.service import CatalogueService
from tests.harness import GatewayProcess, wait_usage

# google-genai subclasses aiohttp.ClientSession for its async transport; aiohttp warns about that (not ours)
pytestmark = pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")

MESSAGES = [{"role": "user", "content": "hi"}]
NOT_UTF8 = b'{"model": "gpt-test", "messages": [{"role": "user", "content": "\xff\xfe"}]}'
VERY_DEEP = b'{"model": "gpt-test", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
# deeper than the limit, yet shallow enough for the SDKs' own JSON encoders
TOO_DEEP: Any = 0
for _ in range(MAX_JSON_DEPTH + 5):
    TOO_DEEP = [TOO_DEEP]


def openai_error(body: Any) -> tuple[str, str]:
    return body["error"]["code"], body["error"]["message"]


def anthropic_error(body: Any) -> tuple[str, str]:
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    return body["error"]["code"], body["error"]["message"]


def gemini_error(body: Any) -> tuple[str, str]:
    assert body["error"]["status"] == "INVALID_ARGUMENT" and body["error"]["code"] == 400
    return body["error"]["details"][0]["reason"], body["error"]["message"]


ROUTES = [
    ("/v1/llm/chat", openai_error),
    ("/v1/chat/completions", openai_error),
    ("/v1/responses", openai_error),
    ("/v1/embeddings", openai_error),
    ("/v1/images/generations", openai_error),
    ("/v1/messages", anthropic_error),
    ("/v1beta/models/gemini-test:generateContent", gemini_error),
    ("/v1beta/models/gemini-test:streamGenerateContent?alt=sse", gemini_error),
    ("/v1/vllm/chat/completions", openai_error),
    ("/v1/vllm/completions", openai_error),
    ("/v1/vllm/tokenize", openai_error),
]


@pytest.mark.parametrize(("path", "shape"), ROUTES, ids=[path for path, _ in ROUTES])
@pytest.mark.parametrize(
    ("body", "needle"), [(NOT_UTF8, "UTF-8"), (VERY_DEEP, "nested deeper")], ids=["not-utf8", "nested-100000"]
)
async def test_undecodable_body_is_400_on_every_route(
    gateway: GatewayProcess, key: str, path: str, shape: Any, body: bytes, needle: str
) -> None:
    """A body that is not UTF-8 or nests 100,000 deep is 400 invalid_request_body in the route's error shape."""
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http:
        resp = await http.post(path, content=body, headers={"Authorization": f"Bearer {key}"})
        assert resp.status_code == 400, resp.text
        code, message = shape(resp.json())
        assert code == "invalid_request_body" and needle in message
        assert (await http.get("/v1/health")).status_code == 200


@pytest.mark.parametrize("body", [NOT_UTF8, VERY_DEEP], ids=["not-utf8", "nested-100000"])
async def test_undecodable_admin_body_is_json_400(gateway: GatewayProcess, body: bytes) -> None:
    """The admin API answers such bodies with its JSON 400, not Starlette's plain-text 500."""
    async with httpx.AsyncClient(
        base_url=gateway.base_url, headers=gateway.admin_headers(), timeout=30
    ) as http:
        for method, path in (
            ("POST", "/admin/organisations"),
            ("PATCH", "/admin/organisations/acme"),
            ("POST", "/admin/budgets"),
        ):
            resp = await http.request(method, path, content=body)
            assert resp.status_code == 400, (path, resp.text)
            assert resp.json()["error"]["code"] == "invalid_request_body"


async def test_sdks_get_400_for_a_body_nested_too_deep(gateway: GatewayProcess, key: str) -> None:
    """openai, anthropic and google-genai each raise their BadRequestError carrying our message."""
    async with openai.AsyncOpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0) as oc:
        with pytest.raises(openai.BadRequestError) as oe:
            await oc.chat.completions.create(
                model="gpt-test",
                messages=MESSAGES,  # type: ignore[arg-type]
                extra_body={"deep": TOO_DEEP},
            )
    assert oe.value.code == "invalid_request_body" and "nested deeper" in oe.value.message
    async with anthropic.AsyncAnthropic(base_url=gateway.base_url, api_key=key, max_retries=0) as ac:
        with pytest.raises(anthropic.BadRequestError) as ae:
            await ac.messages.create(
                model="claude-test",
                max_tokens=8,
                messages=MESSAGES,  # type: ignore[arg-type]
                extra_body={"deep": TOO_DEEP},
            )
    assert "nested deeper" in ae.value.message
    gc = genai.Client(
        api_key=key,
        http_options=types.HttpOptions(
            base_url=gateway.base_url,
            api_version="v1beta",
            retry_options=types.HttpRetryOptions(attempts=1),
            extra_body={"deep": TOO_DEEP},
        ),
    )
    with pytest.raises(genai_errors.ClientError) as ge:
        await gc.aio.models.generate_content(model="gemini-test", contents="hi")
    assert ge.value.code == 400 and ge.value.message is not None and "nested deeper" in ge.value.message


@pytest.mark.parametrize("base", ["/v1", "/v1/vllm"])
async def test_a_role_of_the_wrong_type_is_400(gateway: GatewayProcess, key: str, base: str) -> None:
    """`{"role": []}` in a message is 400 invalid_request naming the field (it was a TypeError)."""
    model = "gpt-test" if base == "/v1" else "vllm-test"
    async with openai.AsyncOpenAI(base_url=gateway.base_url + base, api_key=key, max_retries=0) as oc:
        with pytest.raises(openai.BadRequestError) as info:
            await oc.chat.completions.create(model=model, messages=[{"role": [], "content": "x"}])  # type: ignore
    assert info.value.code == "invalid_request" and "messages[0].role" in info.value.message


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"messages": [{"role": [], "content": "x"}]}, "messages[0].role"),
        ({"tool_choice": {"type": "function", "function": "get_time"}}, "tool_choice"),
        ({"reasoning_effort": {"effort": "high"}}, "reasoning_effort"),
        ({"messages": [{"role": "tool", "tool_call_id": ["c"], "content": "x"}]}, "tool_call_id"),
    ],
)
@pytest.mark.parametrize("model", ["gpt-test", "claude-test", "gemini-test"])
async def test_unified_fields_of_the_wrong_type_are_400(
    gateway: GatewayProcess, key: str, model: str, changes: dict[str, Any], needle: str
) -> None:
    """/v1/llm/chat refuses a field of the wrong type with 400 naming it, whichever provider serves the model."""
    body = {"model": model, "messages": MESSAGES, **changes}
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        resp = await http.post("/v1/llm/chat", json=body, headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "invalid_request" and needle in resp.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        (
            "/admin/providers",
            {
                "organisation": "acme",
                "name": "huge-timeout",
                "type": "openai",
                "base_url": "http://127.0.0.1:9/v1",
                "timeout_ms": 2**70,
            },
            "timeout_ms",
        ),
        (
            "/admin/providers",
            {
                "organisation": "acme",
                "name": "bad-config",
                "type": "openai",
                "base_url": "http://127.0.0.1:9/v1",
                "config": {"connect_timeout_ms": "soon"},
            },
            "connect_timeout_ms",
        ),
        ("/admin/budgets", {"name": "huge", "organisation": "acme", "amount_nanos": 2**70}, "amount_nanos"),
        ("/admin/budgets", {"name": "huge", "organisation": "acme", "amount_usd": "1e30"}, "amount_usd"),
        (
            "/admin/budgets",
            {"name": "b", "organisation": "acme", "amount_usd": "1", "currency": {"x": 1}},
            "currency",
        ),
        (
            "/admin/quotas",
            {"name": "huge", "organisation": "acme", "metric": "TOKENS", "limit": 2**70},
            "limit",
        ),
        (
            "/admin/quotas",
            {
                "name": "q",
                "owner_type": "ORG",
                "owner_id": "o",
                "organisation_id": ["o"],
                "metric": "TOKENS",
                "limit": 5,
            },
            "organisation_id",
        ),
    ],
)
async def test_admin_values_the_store_cannot_hold_are_400(
    gateway: GatewayProcess, path: str, body: dict[str, Any], needle: str
) -> None:
    """Numbers past the store's integer columns and values of the wrong type are 400 naming the field (they were
    a 500 from the database driver, or stored and then failed every call)."""
    async with httpx.AsyncClient(base_url=gateway.base_url, headers=gateway.admin_headers()) as http:
        resp = await http.post(path, content=json.dumps(body))
    assert resp.status_code == 400, resp.text
    assert needle in resp.json()["error"]["message"]


async def test_a_negative_count_echoed_into_usage_is_not_recorded(
    gateway: GatewayProcess, key: str, service: CatalogueService
) -> None:
    """An upstream whose usage says -16 output tokens (as one echoing a client's `n: -1` would) is not billed a
    negative count (a refund, which also failed the call's bookkeeping with an exception)."""
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        resp = await http.post(
            "/v1/images/generations",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "image-test", "prompt": "[[mock misreport_output=-16]] a cat"},
        )
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["output_tokens"] == -16  # what the upstream said, relayed as it was
    record = await wait_usage(service, resp.headers["x-request-id"])
    assert record["output_tokens"] == 0 and record["cost_nanos"] >= 0
    assert record["metadata"]["usage_flags"] == ["negative"]
    assert "Counters can only be incremented by non-negative amounts" not in gateway.log()
