"""`/v1/llm/chat` never drops what it cannot translate (400 naming the field), and a stream the upstream cuts ends
with an explicit error event, no `[DONE]`, and a failed usage record."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from odock.state.service import CatalogueService
from tests.harness import GatewayProcess, wait_usage
from tests.unified.helpers import headers, stream_events

HELLO = [{"role": "user", "content": "Hello there"}]


@pytest.fixture()
async def http(gateway: GatewayProcess) -> AsyncIterator[httpx.AsyncClient]:
    """A plain HTTP client on the live gateway."""
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as client:
        yield client


@pytest.mark.parametrize(
    ("model", "field", "value"),
    [
        ("claude-test", "presence_penalty", 0.5),
        ("claude-test", "frequency_penalty", 0.5),
        ("claude-test", "seed", 7),
        ("gpt-test", "top_k", 40),
        ("gpt-test", "logit_bias", {"50256": -100}),
        ("claude-test", "logit_bias", {"50256": -100}),
        ("gemini-test", "logprobs", True),
        ("vllm-test", "n", 2),
    ],
)
@pytest.mark.parametrize("stream", (False, True))
async def test_untranslatable_field_is_refused(
    http: httpx.AsyncClient, key: str, mock: Any, model: str, field: str, value: Any, stream: bool
) -> None:
    """A field the target cannot express (or no unified field at all) is a 400 invalid_request naming it."""
    before = len(mock.requests)
    body = {"model": model, "messages": HELLO, field: value, "stream": stream}
    resp = await http.post("/v1/llm/chat", headers=headers(key), json=body)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "invalid_request"
    assert field in error["message"]
    assert len(mock.requests) == before, "a refused request must not reach the upstream"


IMAGE = {"type": "image_url", "image_url": {"url": "https://img.test/cat.png", "detail": "high"}}
STRICT_TOOL = {
    "type": "function",
    "function": {"name": "f", "strict": True, "parameters": {"type": "object", "properties": {}}},
}


@pytest.mark.parametrize(
    ("model", "extra", "needle"),
    [
        ("claude-test", {"messages": [{"role": "user", "name": "ann", "content": "hi"}]}, "messages[0].name"),
        ("gemini-test", {"messages": [{"role": "user", "name": "ann", "content": "hi"}]}, "messages[0].name"),
        ("claude-test", {"messages": [{"role": "user", "content": [IMAGE]}]}, "detail"),
        ("gemini-test", {"messages": [{"role": "user", "content": [IMAGE]}]}, "detail"),
        ("gemini-test", {"messages": HELLO, "tools": [STRICT_TOOL]}, "strict"),
    ],
)
async def test_openai_only_hints_are_refused_not_dropped(
    http: httpx.AsyncClient, key: str, mock: Any, model: str, extra: dict[str, Any], needle: str
) -> None:
    """A message name, an image detail or a strict tool that the target cannot carry is refused by name."""
    before = len(mock.requests)
    resp = await http.post("/v1/llm/chat", headers=headers(key), json={"model": model, **extra})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "invalid_request" and needle in resp.json()["error"]["message"]
    assert len(mock.requests) == before


async def test_top_k_reaches_vllm(http: httpx.AsyncClient, key: str) -> None:
    """top_k is refused for OpenAI but carried to vLLM (which has it), so the refusal is per target, not global."""
    resp = await http.post(
        "/v1/llm/chat", headers=headers(key), json={"model": "vllm-test", "messages": HELLO, "top_k": 40}
    )
    assert resp.status_code == 200, resp.text


# (model, cut_after, text deltas the client gets before the cut): the Anthropic stream opens with message_start and
# ping, so a cut after two events comes before any text; after five events two text deltas are through. Gemini
# sends one text part per event; the OpenAI family opens with a role chunk, then one text piece per chunk.
CUTS = [
    ("claude-test", 2, 0),
    ("claude-test", 5, 2),
    ("gemini-test", 2, 2),
    ("gpt-test", 2, 1),
    ("vllm-test", 2, 1),
]
FULL_TEXT = "Mock reply to: Tell me more alpha bravo charlie delta echo foxtrot"


def cut_body(model: str, cut_after: int) -> dict[str, Any]:
    """A request whose upstream stream the mock cuts after `cut_after` events (six text pieces in all)."""
    return {
        "model": model,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": f"Tell me more [[mock cut_after={cut_after} chunks=6]]"}],
    }


@pytest.mark.parametrize(("model", "cut_after", "deltas"), CUTS)
async def test_cut_stream_ends_with_error_event(
    http: httpx.AsyncClient, key: str, service: CatalogueService, model: str, cut_after: int, deltas: int
) -> None:
    """An upstream stream cut mid-answer ends the client stream with an error data event, no [DONE], failed usage."""
    resp, events = await stream_events(http, key, cut_body(model, cut_after))
    assert "[DONE]" not in events
    assert events, "the client saw nothing at all"
    # what came before the error are valid chunks with the start of the answer, and no finish_reason
    chunks = [ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]
    assert all(c.choices and c.choices[0].finish_reason is None and c.usage is None for c in chunks)
    text = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(text) == deltas and FULL_TEXT.startswith("".join(text))
    last = httpx.Response(200, content=events[-1]).json()
    assert set(last) == {"error"} and last["error"]["code"] and last["error"]["message"]
    record = await wait_usage(service, resp.headers["x-request-id"])
    assert record["outcome"] == "failed" and record["stream"] is True
    assert record["error_code"] == last["error"]["code"]


@pytest.mark.parametrize("model", ("claude-test", "gemini-test"))
async def test_upstream_error_event_becomes_client_error_event(
    http: httpx.AsyncClient, key: str, service: CatalogueService, model: str
) -> None:
    """An error event the upstream sends mid-stream (its own dialect) reaches the client as an OpenAI error event."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me more [[mock error_after=4 chunks=6]]"}],
    }
    resp, events = await stream_events(http, key, body)
    assert "[DONE]" not in events
    last = httpx.Response(200, content=events[-1]).json()
    assert set(last) == {"error"} and last["error"]["code"] == "upstream_error"
    assert all(ChatCompletionChunk.model_validate_json(e).choices for e in events[:-1])
    record = await wait_usage(service, resp.headers["x-request-id"])
    assert record["outcome"] == "failed" and record["error_code"] == "upstream_error"


@pytest.mark.parametrize(("model", "cut_after", "deltas"), CUTS)
async def test_cut_stream_raises_in_openai_sdk(
    gateway: GatewayProcess, key: str, model: str, cut_after: int, deltas: int
) -> None:
    """The openai SDK's stream parser raises on the gateway's error event instead of ending cleanly."""
    async with openai.AsyncOpenAI(
        base_url=gateway.base_url + "/v1/llm", api_key=key, max_retries=0
    ) as client:
        stream = await client.post(
            "/chat",
            cast_to=ChatCompletionChunk,
            stream=True,
            stream_cls=openai.AsyncStream[ChatCompletionChunk],
            body={**cut_body(model, cut_after), "stream": True},
        )
        seen: list[ChatCompletionChunk] = []
        with pytest.raises(openai.APIError):
            async for chunk in stream:
                seen.append(chunk)
    assert len([c for c in seen if c.choices and c.choices[0].delta.content]) == deltas
