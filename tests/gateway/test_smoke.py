"""The openai SDK through a live gateway to the mock provider: unary, streams, usage, request ids."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai

from odock.state.service import CatalogueService
from tests.harness import GatewayProcess, usage_rows, wait_usage


def client(gateway: GatewayProcess, key: str, **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0, **kwargs)


async def test_unary_chat(gateway: GatewayProcess, seeded: dict[str, Any], service: CatalogueService) -> None:
    """A unary chat completion returns the mock's answer with usage, and one usage record is written."""
    async with client(gateway, seeded["secret"]) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="gpt-test", messages=[{"role": "user", "content": "hello there"}]
        )
    reply = raw.parse()
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.prompt_tokens > 0
    request_id = raw.headers["x-request-id"]
    record = await wait_usage(service, request_id)
    assert record["model"] == "gpt-test" and record["model_slug"] == "gpt-4o-mini"
    assert record["provider"] == "openai" and record["status"] == 200
    assert record["input_tokens"] + record["cached_input_tokens"] == reply.usage.prompt_tokens
    assert record["output_tokens"] == reply.usage.completion_tokens
    assert record["cost_nanos"] == reply.usage.prompt_tokens * 1000 + reply.usage.completion_tokens * 2000


async def test_request_id_is_echoed(gateway: GatewayProcess, seeded: dict[str, Any]) -> None:
    """An inbound X-Request-Id is returned unchanged; without one the gateway generates one."""
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        given = await http.get("/v1/health", headers={"X-Request-Id": "req-abc.123"})
        generated = await http.get("/v1/health")
    assert given.headers["x-request-id"] == "req-abc.123"
    assert len(generated.headers["x-request-id"]) >= 16


async def test_a_reused_request_id_bills_every_call(
    gateway: GatewayProcess, seeded: dict[str, Any], service: CatalogueService
) -> None:
    """Two calls sent with the same X-Request-Id (a client retry, a fixed id) are two usage records."""
    async with client(gateway, seeded["secret"]) as c:
        for text in ("first", "second call"):
            raw = await c.chat.completions.with_raw_response.create(
                model="gpt-test",
                messages=[{"role": "user", "content": text}],
                extra_headers={"X-Request-Id": "client-fixed-id"},
            )
            assert raw.headers["x-request-id"] == "client-fixed-id"
    await wait_usage(service, "client-fixed-id", count=2)
    rows = await usage_rows(service.store, "client-fixed-id")
    assert len(rows) == 2 and rows[0]["input_tokens"] < rows[1]["input_tokens"]


async def test_stream_hides_usage_chunk_but_records_usage(
    gateway: GatewayProcess, seeded: dict[str, Any], service: CatalogueService, mock: Any
) -> None:
    """A stream without include_usage gets no usage chunk, yet the upstream was asked for usage and it is billed."""
    async with client(gateway, seeded["secret"]) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="gpt-test", messages=[{"role": "user", "content": "stream please"}], stream=True
        )
        chunks = [chunk async for chunk in raw.parse()]
    assert chunks and all(ch.usage is None for ch in chunks)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text
    upstream = [r for r in mock.requests if r.get("stream")][-1]
    assert upstream["stream_options"] == {"include_usage": True}
    record = await wait_usage(service, raw.headers["x-request-id"])
    assert record["stream"] and record["output_tokens"] == len(text.split())


async def test_stream_with_usage_when_asked(gateway: GatewayProcess, seeded: dict[str, Any]) -> None:
    """A client asking for include_usage gets the final usage chunk, exactly once."""
    async with client(gateway, seeded["secret"]) as c:
        stream = await c.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "stream please"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    with_usage = [ch for ch in chunks if ch.usage is not None]
    assert len(with_usage) == 1 and with_usage[0].usage.completion_tokens > 0


async def test_unified_unary(gateway: GatewayProcess, seeded: dict[str, Any]) -> None:
    """/v1/llm/chat answers the normalized JSON shape."""
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        resp = await http.post(
            "/v1/llm/chat",
            headers={"Authorization": f"Bearer {seeded['secret']}"},
            json={
                "model": "gpt-test",
                "provider": "openai",
                "messages": [{"role": "user", "content": "Write a short summary."}],
                "temperature": 0.2,
                "max_tokens": 64,
            },
        )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["provider"] == "openai" and body["model"] == "gpt-test"
    assert body["content"] and body["stop_reason"] in ("stop", "length")
    assert body["input_tokens"] > 0 and body["output_tokens"] > 0


async def test_unified_stream_is_openai_chunks(gateway: GatewayProcess, seeded: dict[str, Any]) -> None:
    """/v1/llm/chat streamed answers chat.completion.chunk SSE (each valid for the openai SDK) ending with [DONE]."""
    from openai.types.chat import ChatCompletionChunk

    headers = {"Authorization": f"Bearer {seeded['secret']}"}
    body = {"model": "gpt-test", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with (
        httpx.AsyncClient(base_url=gateway.base_url) as http,
        http.stream("POST", "/v1/llm/chat", headers=headers, json=body) as resp,
    ):
        raw = b"".join([part async for part in resp.aiter_bytes()])
    assert resp.status_code == 200
    events = [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("Mock reply")


async def test_metrics_and_health(gateway: GatewayProcess, seeded: dict[str, Any]) -> None:
    """Liveness, readiness and Prometheus metrics answer; metric labels are bounded (no key or model ids)."""
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        assert (await http.get("/v1/health")).json() == {"status": "ok"}
        ready = await http.get("/v1/healthz")
        assert ready.status_code == 200 and ready.json()["checks"]["store"] == "ok"
        text = (await http.get("/metrics")).text
    assert 'gateway_requests_total{route="openai.chat",status_class="2xx"}' in text
    assert "gateway_provider_request_duration_seconds" in text
    assert seeded["key_id"] not in text and "gpt-test" not in text


async def test_concurrent_streams(gateway: GatewayProcess, seeded: dict[str, Any]) -> None:
    """200 concurrent streams through one gateway process all complete with every chunk in order."""
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with client(
        gateway, seeded["secret"], http_client=httpx.AsyncClient(limits=limits, timeout=60)
    ) as c:

        async def one(i: int) -> list[str]:
            stream = await c.chat.completions.create(
                model="gpt-test",
                stream=True,
                messages=[{"role": "user", "content": f"n{i} [[mock chunks=8 words=16 chunk_delay_ms=2]]"}],
            )
            return [ch.choices[0].delta.content or "" for ch in [x async for x in stream] if ch.choices]

        results = await asyncio.gather(*(one(i) for i in range(200)))
    for i, parts in enumerate(results):
        text = "".join(parts)
        assert text.split()[:4] == ["Mock", "reply", "to:", f"n{i}"], text
        assert len(text.split()) == 16
