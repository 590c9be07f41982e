"""Token classes through `/v1/llm/chat` from every provider type, unary and streamed: cached input and reasoning
tokens reach the client and the usage ledger, each class counted once (input excludes cached)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from odock.state.service import CatalogueService
from tests.harness import GatewayProcess, wait_usage
from tests.unified.helpers import MODELS, PROVIDER_OF, ask, plain, reassemble, stream_events

CACHED = 5
USER_TEXT = "Hello there [[mock cached=5 thinking=1]]"
# the mock thinks "Let me think about <first four words> and answer briefly." and counts one token per word
THINKING = "Let me think about Hello there and answer briefly."
REASONING = len(THINKING.split())
ANSWER_WORDS = 12


@pytest.fixture()
async def http(gateway: GatewayProcess) -> AsyncIterator[httpx.AsyncClient]:
    """A plain HTTP client on the live gateway."""
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as client:
        yield client


@pytest.mark.parametrize("mode", ("unary", "stream"))
@pytest.mark.parametrize("model", MODELS)
async def test_cached_and_reasoning_tokens(
    http: httpx.AsyncClient, key: str, service: CatalogueService, model: str, mode: str
) -> None:
    """Cached and reasoning tokens reach the answer and the usage record, once each; input excludes cached."""
    got = await ask(http, key, {"model": model, "messages": [{"role": "user", "content": USER_TEXT}]}, mode)
    assert got.reasoning == THINKING
    assert got.content.split()[:5] == ["Mock", "reply", "to:", "Hello", "there"]
    assert got.cached_input_tokens == CACHED
    # the client sees the whole prompt (cached part included) and output including the reasoning
    assert got.input_tokens is not None and got.input_tokens > CACHED
    assert got.output_tokens == ANSWER_WORDS + REASONING

    record = await wait_usage(service, got.request_id)
    assert record["outcome"] == "success" and record["status"] == 200
    assert record["provider"] == PROVIDER_OF[model] and record["model"] == model
    assert record["stream"] is (mode == "stream")
    assert record["cached_input_tokens"] == CACHED
    assert record["input_tokens"] == got.input_tokens - CACHED
    assert record["cache_write_tokens"] == 0
    assert record["output_tokens"] == ANSWER_WORDS + REASONING
    assert record["usage_estimated"] is False
    assert record["reasoning_tokens"] == got.reasoning_tokens
    assert got.reasoning_tokens == REASONING


def test_anthropic_thinking_tokens_are_reasoning() -> None:
    """Anthropic's output_tokens_details.thinking_tokens becomes reasoning tokens, inside output (not added)."""
    from odock.dialects.anthropic import usage_from

    got = usage_from(
        {
            "input_tokens": 3,
            "cache_read_input_tokens": 5,
            "cache_creation_input_tokens": 0,
            "output_tokens": 21,
            "output_tokens_details": {"thinking_tokens": 9},
        }
    )
    assert (got.input_tokens, got.cached_input_tokens, got.output_tokens, got.reasoning_tokens) == (
        3,
        5,
        21,
        9,
    )


@pytest.mark.parametrize("model", MODELS)
async def test_stream_without_usage_request_is_still_billed(
    http: httpx.AsyncClient, key: str, service: CatalogueService, model: str
) -> None:
    """A stream without include_usage carries no usage chunk, yet its record has the provider's exact usage."""
    asked = await ask(http, key, plain(model), "stream")
    resp, events = await stream_events(http, key, plain(model))
    silent = reassemble(events)
    assert (silent.input_tokens, silent.output_tokens) == (None, None)
    assert silent.content == asked.content and silent.stop == asked.stop
    record = await wait_usage(service, resp.headers["x-request-id"])
    assert record["usage_estimated"] is False
    assert (record["input_tokens"], record["output_tokens"]) == (asked.input_tokens, asked.output_tokens)
