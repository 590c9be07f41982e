"""The google-genai SDK through a live gateway on `/v1beta/models/{model}:…`: unary, streams, tools, errors."""

from __future__ import annotations

import json

import httpx
import pytest
from google import genai
from google.genai import errors, types

from odock.mock.testing import MockServer
from odock.state.service import CatalogueService
from tests.harness import GatewayProcess
from tests.native.conftest import wait_usage

# google-genai subclasses aiohttp.ClientSession for its async transport; aiohttp warns about that (not ours)
pytestmark = pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")

WEATHER = types.Tool(
    function_declarations=[
        types.FunctionDeclaration(
            name="get_weather",
            description="weather",
            parameters=types.Schema(
                type=types.Type.OBJECT, properties={"city": types.Schema(type=types.Type.STRING)}
            ),
        )
    ]
)


def client(gateway: GatewayProcess, key: str) -> genai.Client:
    return genai.Client(
        api_key=key,
        http_options=types.HttpOptions(
            base_url=gateway.base_url, api_version="v1beta", retry_options=types.HttpRetryOptions(attempts=1)
        ),
    )


def gemini_paths(mock: MockServer) -> list[str]:
    return [r["path"] for r in mock.requests if r["provider"] == "gemini"]


async def test_generate_content_unary(
    gateway: GatewayProcess, key: str, service: CatalogueService, mock: MockServer
) -> None:
    """generate_content answers via the slug in the upstream URL; usage comes from usageMetadata."""
    reply = await client(gateway, key).aio.models.generate_content(
        model="gemini-test", contents="hello there"
    )
    assert reply.text
    assert gemini_paths(mock)[-1] == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert reply.usage_metadata is not None and reply.usage_metadata.candidates_token_count
    assert reply.sdk_http_response is not None and reply.sdk_http_response.headers is not None
    headers = {k.lower(): v for k, v in reply.sdk_http_response.headers.items()}
    record = await wait_usage(service, headers["x-request-id"])
    assert record["route"] == "gemini.generate" and record["provider"] == "gemini"
    assert record["output_tokens"] == reply.usage_metadata.candidates_token_count


async def test_generate_content_stream_sse(gateway: GatewayProcess, key: str, mock: MockServer) -> None:
    """generate_content_stream gets the upstream SSE chunks; the upstream is always called with alt=sse."""
    chunks = [
        c
        async for c in await client(gateway, key).aio.models.generate_content_stream(
            model="gemini-test", contents="stream please"
        )
    ]
    assert len(chunks) > 1
    assert "".join(c.text or "" for c in chunks)
    assert chunks[-1].candidates and chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    entry = [r for r in mock.requests if r["provider"] == "gemini"][-1]
    assert entry["path"].endswith(":streamGenerateContent") and entry["query"].get("alt") == "sse"


async def test_function_call_unary_and_stream(gateway: GatewayProcess, key: str) -> None:
    """A functionCall comes back whole, unary and streamed."""
    c = client(gateway, key)
    config = types.GenerateContentConfig(tools=[WEATHER])
    reply = await c.aio.models.generate_content(
        model="gemini-test", contents="weather in Paris? [[mock tool=get_weather]]", config=config
    )
    assert reply.function_calls and reply.function_calls[0].name == "get_weather"
    calls = [
        fc
        async for chunk in await c.aio.models.generate_content_stream(
            model="gemini-test", contents="weather in Paris? [[mock tool=get_weather]]", config=config
        )
        for fc in chunk.function_calls or []
    ]
    assert calls and calls[0].name == "get_weather" and isinstance(calls[0].args, dict)


async def test_json_array_stream_without_alt_sse(
    gateway: GatewayProcess, key: str, service: CatalogueService
) -> None:
    """Without alt=sse the stream is one JSON array of the same chunks; `?key=` carries the Odock key."""
    body = {"contents": [{"role": "user", "parts": [{"text": "stream please"}]}]}
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        resp = await http.post(f"/v1beta/models/gemini-test:streamGenerateContent?key={key}", json=body)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    chunks = json.loads(resp.content)
    assert isinstance(chunks, list) and len(chunks) > 1
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    record = await wait_usage(service, resp.headers["x-request-id"])
    assert record["stream"] and record["output_tokens"] == chunks[-1]["usageMetadata"]["candidatesTokenCount"]


async def test_cut_stream_ends_with_error(gateway: GatewayProcess, key: str) -> None:
    """A cut upstream stream ends with an explicit error chunk: the SDK raises, and the JSON array stays valid."""
    with pytest.raises(errors.APIError):
        async for _ in await client(gateway, key).aio.models.generate_content_stream(
            model="gemini-test", contents="long answer [[mock cut_after=2]]"
        ):
            pass
    body = {"contents": [{"role": "user", "parts": [{"text": "long answer [[mock cut_after=2]]"}]}]}
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        resp = await http.post(
            "/v1beta/models/gemini-test:streamGenerateContent", json=body, headers={"x-goog-api-key": key}
        )
    chunks = json.loads(resp.content)
    assert "error" in chunks[-1] and chunks[-1]["error"]["code"] == 502
    assert not any("finishReason" in (c.get("candidates") or [{}])[0] for c in chunks[:-1])


async def test_errors(gateway: GatewayProcess, key: str) -> None:
    """401, 403, 400 provider_not_allowed and upstream 500 (as 502) come back as Google API errors."""
    with pytest.raises(errors.ClientError) as unauthorized:
        await client(gateway, "odk-wrong").aio.models.generate_content(model="gemini-test", contents="hi")
    assert unauthorized.value.code == 401 and unauthorized.value.status == "UNAUTHENTICATED"
    c = client(gateway, key)
    with pytest.raises(errors.ClientError) as denied:
        await c.aio.models.generate_content(model="gpt-ungranted", contents="hi")
    assert denied.value.code == 403
    with pytest.raises(errors.ClientError) as pinned:
        await c.aio.models.generate_content(model="claude-test", contents="hi")
    assert pinned.value.code == 400 and "gemini" in (pinned.value.message or "")
    with pytest.raises(errors.ServerError) as upstream:
        await c.aio.models.generate_content(model="gemini-test", contents="x [[mock status=500]]")
    assert upstream.value.code == 502


async def test_bad_paths_are_gemini_400s(gateway: GatewayProcess, key: str) -> None:
    """A path without model, without method, or with an unknown method is a 400 in Google's error shape."""
    headers = {"x-goog-api-key": key}
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        for path in (
            "/v1beta/models/:generateContent",
            "/v1beta/models/gemini-test",
            "/v1beta/models/gemini-test:countTokens",
        ):
            resp = await http.post(path, json=body, headers=headers)
            assert resp.status_code == 400, path
            error = resp.json()["error"]
            assert (
                error["status"] == "INVALID_ARGUMENT" and error["details"][0]["reason"] == "invalid_request"
            )
        wrong_method = await http.get("/v1beta/models/gemini-test:generateContent", headers=headers)
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
