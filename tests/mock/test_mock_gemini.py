"""The mock's Gemini format, driven by the official `google-genai` SDK."""

from __future__ import annotations

import json

import httpx
import pytest
from google import genai
from google.genai import errors, types

from odock.mock.testing import MockServer

# google-genai subclasses aiohttp's ClientSession, which aiohttp discourages; not our code to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")


def _client(mock: MockServer) -> genai.Client:
    return genai.Client(
        api_key="g-test", http_options=types.HttpOptions(base_url=mock.base_url, api_version="v1beta")
    )


async def test_generate_content_unary(mock: MockServer) -> None:
    """generateContent returns text and usageMetadata with every token count."""
    result = await _client(mock).aio.models.generate_content(
        model="gemini-2.5-flash", contents="Describe Lisbon"
    )
    assert (result.text or "").startswith("Mock reply to: Describe Lisbon")
    usage = result.usage_metadata
    assert usage is not None
    assert usage.prompt_token_count == 4 and usage.candidates_token_count == 12
    assert usage.cached_content_token_count == 0 and usage.thoughts_token_count == 0
    assert usage.total_token_count == 16
    assert result.model_version == "gemini-2.5-flash"


async def test_stream_generate_content_sse(mock: MockServer, journal: MockServer) -> None:
    """streamGenerateContent (SSE) yields chunks whose text adds up, usage and finishReason at the end."""
    stream = await _client(mock).aio.models.generate_content_stream(
        model="gemini-2.5-flash;chunks=3", contents="Hello"
    )
    chunks = [c async for c in stream]
    assert len(chunks) == 3
    assert "".join(c.text or "" for c in chunks).startswith("Mock reply to: Hello")
    assert chunks[-1].usage_metadata is not None and chunks[-1].usage_metadata.candidates_token_count == 12
    assert chunks[-1].candidates and chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    entry = journal.requests[-1]
    assert (
        entry["stream"] is True
        and entry["query"] == {"alt": "sse"}
        and entry["model"] == "gemini-2.5-flash;chunks=3"
    )


async def test_function_call_thoughts_and_json(mock: MockServer) -> None:
    """Tools give a functionCall part; includeThoughts gives thought parts; JSON mime gives schema-shaped JSON."""
    client = _client(mock)
    tool = types.Tool(
        function_declarations=[
            types.FunctionDeclaration(
                name="get_weather",
                parameters_json_schema={"type": "object", "properties": {"city": {"type": "string"}}},
            )
        ]
    )
    called = await client.aio.models.generate_content(
        model="gemini-2.5-flash",
        contents="Weather in Paris?",
        config=types.GenerateContentConfig(
            tools=[tool],
            thinking_config=types.ThinkingConfig(include_thoughts=True),
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        ),
    )
    assert called.function_calls and called.function_calls[0].name == "get_weather"
    assert called.function_calls[0].args == {"city": "Paris"}
    parts = called.candidates[0].content.parts if called.candidates and called.candidates[0].content else []
    assert parts and parts[0].thought is True
    assert called.usage_metadata is not None and (called.usage_metadata.thoughts_token_count or 0) > 0
    structured = await client.aio.models.generate_content(
        model="gemini-2.5-flash",
        contents="Give me a city",
        config=types.GenerateContentConfig(
            response_mime_type="application/json",
            response_json_schema={"type": "object", "properties": {"city": {"type": "string"}}},
        ),
    )
    assert json.loads(structured.text or "") == {"city": "Paris"}


async def test_errors_raise_sdk_exceptions(mock: MockServer) -> None:
    """status=503 raises ServerError and status=429 ClientError, with Google's error status names."""
    client = _client(mock)
    with pytest.raises(errors.ServerError) as server_error:
        await client.aio.models.generate_content(model="gemini-2.5-flash;status=503", contents="x")
    assert server_error.value.code == 503 and server_error.value.status == "UNAVAILABLE"
    with pytest.raises(errors.ClientError) as client_error:
        await client.aio.models.generate_content(model="gemini-2.5-flash", contents="x [[mock status=429]]")
    assert client_error.value.status == "RESOURCE_EXHAUSTED"


async def test_named_errors(mock: MockServer) -> None:
    """error=context_length is Google's 400 INVALID_ARGUMENT, error=model_not_found its 404 NOT_FOUND."""
    client = _client(mock)
    with pytest.raises(errors.ClientError) as too_long:
        await client.aio.models.generate_content(
            model="gemini-2.5-flash", contents="x [[mock error=context_length]]"
        )
    assert too_long.value.code == 400 and too_long.value.status == "INVALID_ARGUMENT"
    assert "input token count" in (too_long.value.message or "")
    with pytest.raises(errors.ClientError) as missing:
        await client.aio.models.generate_content(model="gemini-nope;error=model_not_found", contents="x")
    assert missing.value.code == 404 and "models/gemini-nope is not found" in (missing.value.message or "")


async def test_error_after_in_stream_raises(mock: MockServer) -> None:
    """error_after=1 sends one chunk then Google's error object, which the SDK raises."""
    stream = await _client(mock).aio.models.generate_content_stream(
        model="gemini-x;error_after=1", contents="x"
    )
    seen = 0
    with pytest.raises(errors.ServerError):
        async for _ in stream:
            seen += 1
    assert seen == 1


async def test_key_query_param_json_array_stream_and_missing_key(mock: MockServer) -> None:
    """?key= authenticates; without alt=sse the stream is one JSON array; no key at all is a 401."""
    body = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}
    async with httpx.AsyncClient(base_url=mock.base_url) as raw:
        streamed = await raw.post("/v1beta/models/gemini-x:streamGenerateContent?key=abc", json=body)
        missing = await raw.post("/v1beta/models/gemini-x:generateContent", json=body)
        with pytest.raises(httpx.RemoteProtocolError):  # the array never closes: the cut is visible
            await raw.post("/v1beta/models/gemini-x;cut_after=9:streamGenerateContent?key=abc", json=body)
    items = json.loads(streamed.text)
    assert isinstance(items, list) and len(items) == 4 and "usageMetadata" in items[-1]
    assert missing.status_code == 401
    assert missing.json()["error"]["status"] == "UNAUTHENTICATED" and missing.json()["error"]["code"] == 401


async def test_cut_after_in_sse_is_noticed(mock: MockServer) -> None:
    """cut_after=1 on an SSE stream breaks the connection; the SDK raises instead of ending cleanly."""
    stream = await _client(mock).aio.models.generate_content_stream(
        model="gemini-x;cut_after=1", contents="x"
    )
    with pytest.raises(Exception) as info:
        async for _ in stream:
            pass
    assert (
        "Protocol" in type(info.value).__name__
        or "Payload" in type(info.value).__name__
        or isinstance(info.value, (httpx.HTTPError, errors.APIError))
    )
