"""A stream ends for the client at the upstream's terminal event, not when the upstream gets round to closing its
body: the mock lingers 2 s after `[DONE]` / `message_stop`, and the client must have its whole answer long before."""

from __future__ import annotations

import json
import time
from typing import Any

import anthropic
import httpx
import openai

from odock.state.service import CatalogueService
from tests.harness import GatewayProcess, wait_usage

LINGER = "[[mock linger_ms=2000]]"
FAST = 1.0  # seconds: well under the linger, well over a loaded machine's stream time


async def test_openai_stream_ends_at_done(
    gateway: GatewayProcess, seeded: dict[str, Any], service: CatalogueService
) -> None:
    async with openai.AsyncOpenAI(
        base_url=gateway.base_url + "/v1", api_key=seeded["secret"], max_retries=0
    ) as c:
        started = time.monotonic()
        raw = await c.chat.completions.with_raw_response.create(
            model="gpt-test",
            messages=[{"role": "user", "content": f"hi {LINGER}"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in raw.parse()]
        elapsed = time.monotonic() - started
        assert elapsed < FAST, f"stream took {elapsed:.2f}s: it waited for the upstream's end of body"
        usage = chunks[-1].usage
        assert usage is not None and usage.completion_tokens > 0
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        # the call is settled once the upstream body is drained, with the usage of the stream
        record = await wait_usage(service, raw.headers["x-request-id"])
        assert record["status"] == 200 and record["outcome"] == "success"
        assert record["output_tokens"] == usage.completion_tokens
        # and the gateway goes on serving (the lingering upstream connection did not wedge anything)
        again = await c.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "again"}]
        )
        assert again.choices[0].message.content


async def test_anthropic_stream_ends_at_message_stop(
    gateway: GatewayProcess, key: str, service: CatalogueService
) -> None:
    async with anthropic.AsyncAnthropic(base_url=gateway.base_url, api_key=key, max_retries=0) as c:
        started = time.monotonic()
        async with c.messages.stream(
            model="claude-test", max_tokens=64, messages=[{"role": "user", "content": f"hi {LINGER}"}]
        ) as stream:
            message = await stream.get_final_message()
            request_id = stream.response.headers["x-request-id"]
        elapsed = time.monotonic() - started
    assert elapsed < FAST, f"stream took {elapsed:.2f}s: it waited for the upstream's end of body"
    assert message.content and message.usage.output_tokens > 0
    record = await wait_usage(service, request_id)
    assert record["status"] == 200 and record["output_tokens"] == message.usage.output_tokens


async def test_unified_stream_from_anthropic_ends_at_message_stop(
    gateway: GatewayProcess, key: str, service: CatalogueService
) -> None:
    body = {
        "model": "claude-test",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 64,
        "messages": [{"role": "user", "content": f"hi {LINGER}"}],
    }
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        started = time.monotonic()
        async with http.stream(
            "POST", "/v1/llm/chat", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as resp:
            assert resp.status_code == 200
            text = (await resp.aread()).decode()
            request_id = resp.headers["x-request-id"]
        elapsed = time.monotonic() - started
    assert elapsed < FAST, f"stream took {elapsed:.2f}s: it waited for the upstream's end of body"
    assert text.rstrip().endswith("data: [DONE]") and '"usage":{' in text
    record = await wait_usage(service, request_id)
    assert record["status"] == 200 and record["provider"] == "anthropic" and record["output_tokens"] > 0


async def test_gemini_stream_ends_at_its_last_chunk(
    gateway: GatewayProcess, key: str, service: CatalogueService
) -> None:
    """One candidate, finished, with its usage: Gemini's last chunk ends the answer (SSE and JSON array)."""
    body = {"contents": [{"role": "user", "parts": [{"text": f"hi {LINGER}"}]}]}
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        for path, last in ((":streamGenerateContent?alt=sse", "\n\n"), (":streamGenerateContent", "]")):
            started = time.monotonic()
            async with http.stream(
                "POST", f"/v1beta/models/gemini-test{path}", json=body, headers={"x-goog-api-key": key}
            ) as resp:
                assert resp.status_code == 200
                text = (await resp.aread()).decode()
                request_id = resp.headers["x-request-id"]
            elapsed = time.monotonic() - started
            assert elapsed < FAST, f"{path}: took {elapsed:.2f}s, waiting for the upstream's end of body"
            assert text.endswith(last) and '"finishReason"' in text
            if last == "]":
                assert json.loads(text)[-1]["usageMetadata"]["candidatesTokenCount"] > 0
            record = await wait_usage(service, request_id)
            assert record["status"] == 200 and record["output_tokens"] > 0


async def test_unified_stream_from_gemini_ends_at_its_last_chunk(gateway: GatewayProcess, key: str) -> None:
    body = {"model": "gemini-test", "stream": True, "messages": [{"role": "user", "content": f"hi {LINGER}"}]}
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        started = time.monotonic()
        async with http.stream(
            "POST", "/v1/llm/chat", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as resp:
            text = (await resp.aread()).decode()
        elapsed = time.monotonic() - started
    assert elapsed < FAST, f"stream took {elapsed:.2f}s: it waited for the upstream's end of body"
    assert text.rstrip().endswith("data: [DONE]") and '"finish_reason":"stop"' in text


async def test_gemini_stream_with_several_candidates_waits_for_the_upstream_end(
    gateway: GatewayProcess, key: str
) -> None:
    """With more than one candidate a finished chunk is not the last: the relay waits for the upstream to end."""
    body = {
        "contents": [{"role": "user", "parts": [{"text": "hi [[mock linger_ms=300]]"}]}],
        "generationConfig": {"candidateCount": 2},
    }
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        started = time.monotonic()
        resp = await http.post(
            "/v1beta/models/gemini-test:streamGenerateContent?alt=sse",
            json=body,
            headers={"x-goog-api-key": key},
        )
        elapsed = time.monotonic() - started
    assert resp.status_code == 200 and elapsed >= 0.3
