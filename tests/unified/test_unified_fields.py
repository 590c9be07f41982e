"""The unified endpoint's fields, in process: message fields refused (never dropped), `content_blocks`,
`provider_options` merged for one provider family only, `include_raw`, and the Odock model name in relayed
streams; per-image pricing billed on image routes; reroutes named as such."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from odock.context import Attempt, CallContext
from odock.pipeline.stages.usage import routing_evidence
from odock.state.records import ModelRecord
from tests.harness import wait_usage
from tests.inprocess import InProcessGateway, in_process_gateway


def auth(gw: InProcessGateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gw.seeded['secret']}"}


async def chat(gw: InProcessGateway, http: httpx.AsyncClient, **fields: Any) -> httpx.Response:
    body = {"model": "claude-test", "messages": [{"role": "user", "content": "hi"}], **fields}
    return await http.post("/v1/llm/chat", json=body, headers=auth(gw))


@pytest.fixture
async def gw(tmp_path: Path) -> Any:
    async with in_process_gateway(tmp_path) as gateway:
        yield gateway


async def test_an_unknown_message_field_is_refused_by_name(gw: InProcessGateway) -> None:
    """A message field the unified request cannot carry is a 400 naming it, never silently dropped."""
    async with gw.client() as http:
        reply = await chat(gw, http, messages=[{"role": "user", "content": "hi", "audio": {"id": "x"}}])
        assert reply.status_code == 400
        assert reply.json()["error"]["code"] == "invalid_request"
        assert (
            "messages[0]" in reply.json()["error"]["message"] and "audio" in reply.json()["error"]["message"]
        )
        part = {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}
        reply = await chat(gw, http, messages=[{"role": "user", "content": [part]}])
        assert reply.status_code == 400 and "cache_control" in reply.json()["error"]["message"]


async def test_content_blocks_reach_the_upstream(gw: InProcessGateway) -> None:
    """`content_blocks` beside `content` (reference §10.3) are sent as the message's parts."""
    async with gw.client() as http:
        blocks = [{"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}}]
        reply = await chat(
            gw, http, messages=[{"role": "user", "content": "what is this", "content_blocks": blocks}]
        )
        assert reply.status_code == 200, reply.text
    assert gw.mock.journal[-1]["path"] == "/v1/messages"


async def test_provider_options_reach_only_their_provider(gw: InProcessGateway) -> None:
    """`provider_options.anthropic` is merged into the Anthropic body; options for a provider this call cannot
    reach, or that would set the model or the stream, are refused."""
    async with gw.client() as http:
        reply = await chat(gw, http, provider_options={"anthropic": {"top_k": 3, "service_tier": "auto"}})
        assert reply.status_code == 200, reply.text
        assert {"top_k", "service_tier"} <= set(gw.mock.journal[-1]["keys"])
        stray = await chat(gw, http, provider_options={"gemini": {"safetySettings": []}})
        assert stray.status_code == 400 and "provider_options.gemini" in stray.json()["error"]["message"]
        reserved = await chat(gw, http, provider_options={"anthropic": {"model": "other"}})
        assert reserved.status_code == 400 and "model" in reserved.json()["error"]["message"]
        unknown = await chat(gw, http, provider_options={"mistral": {}})
        assert unknown.status_code == 400


async def test_include_raw_adds_the_provider_view(gw: InProcessGateway) -> None:
    """`include_raw: true` adds the raw provider usage, request id and answer; they are absent by default."""
    async with gw.client() as http:
        plain = (await chat(gw, http)).json()
        assert "raw" not in plain and "raw_usage" not in plain
        raw = (await chat(gw, http, include_raw=True)).json()
        assert raw["raw"]["type"] == "message" and raw["raw_usage"]["input_tokens"] > 0
        assert raw["provider_request_id"]


async def test_relayed_unified_streams_name_the_odock_model(gw: InProcessGateway) -> None:
    """A unified stream relayed from an OpenAI upstream carries the Odock model name, like unary answers."""
    async with gw.client() as http:
        body = {"model": "gpt-test", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        reply = await http.post("/v1/llm/chat", json=body, headers=auth(gw))
        chunks = [json.loads(line[6:]) for line in reply.text.splitlines() if line.startswith("data: {")]
        assert chunks and {c["model"] for c in chunks} == {"gpt-test"}
        unary = await http.post("/v1/llm/chat", json={**body, "stream": False}, headers=auth(gw))
        assert unary.json()["model"] == "gpt-test"


async def test_images_are_billed_per_image(gw: InProcessGateway) -> None:
    """An image model priced per image is billed for the images in the answer."""
    await gw.service.create_model(
        {
            "organisation": "acme",
            "name": "image-priced",
            "provider": "mock-openai",
            "slug": "gpt-image-1",
            "type": "image",
            "pricing": {"per_image": 0.04},
        }
    )
    await gw.service.add_grant(gw.seeded["key_id"], "image-priced")
    await gw.gateway.catalogue.invalidate()
    async with gw.client() as http:
        reply = await http.post(
            "/v1/images/generations",
            headers=auth(gw),
            json={"model": "image-priced", "prompt": "a cat", "n": 3},
        )
        assert reply.status_code == 200, reply.text
        assert len(reply.json()["data"]) == 3
    record = await wait_usage(gw.service, reply.headers["x-request-id"])
    assert record["cost_nanos"] == 3 * 40_000_000


def test_a_cooldown_skip_is_a_reroute() -> None:
    """A call answered by another model than the one requested is `rerouted`, even in a single attempt (a
    cooldown skipped the requested model)."""
    ctx = CallContext(request_id="r", route="unified.chat", client_ip="")
    ctx.requested_model = "primary"
    ctx.attempts = [Attempt(model="backup", provider="openai", outcome="success")]
    ctx.answered_by = _model("backup")
    assert routing_evidence(ctx) == {
        "decision": "rerouted",
        "attempts": [
            {
                "model": "backup",
                "provider": "openai",
                "outcome": "success",
                "error_class": None,
                "status": None,
                "latency_ms": 0,
            }
        ],
    }
    ctx.answered_by = _model("primary")
    ctx.attempts = [Attempt(model="primary", provider="openai", outcome="success")]
    assert routing_evidence(ctx)["decision"] == "direct"  # type: ignore[index]


def _model(name: str) -> ModelRecord:
    return msgspec.convert(
        {"id": name, "organisation_id": "o", "provider_id": "p", "name": name, "slug": name, "type": "chat"},
        ModelRecord,
    )


async def test_an_image_budget_binds_per_image(gw: InProcessGateway) -> None:
    """The reservation counts `n` images at `per_image`: a budget of two images refuses a call for three (402)
    before any upstream call, and admits one for two."""
    await gw.service.create_model(
        {
            "organisation": "acme",
            "name": "image-budget",
            "provider": "mock-openai",
            "slug": "gpt-image-1",
            "type": "image",
            "pricing": {"per_image": 0.04},
        }
    )
    await gw.service.add_grant(gw.seeded["key_id"], "image-budget")
    from odock.admin.governance import GovernanceAdmin
    from odock.governance.store import GovernanceStore

    admin = GovernanceAdmin(GovernanceStore(gw.service.store), catalogue=gw.service)
    await admin.create_budget(
        {"name": "images", "organisation": "acme", "key": "main", "period": "DAILY", "amount_usd": "0.08"}
    )
    assert gw.gateway.governance is not None
    await gw.gateway.governance.refresh_definitions()
    await gw.gateway.catalogue.invalidate()
    async with gw.client() as http:
        sent = gw.transport.requests
        three = await http.post(
            "/v1/images/generations",
            headers=auth(gw),
            json={"model": "image-budget", "prompt": "a cat", "n": 3},
        )
        assert three.status_code == 402, three.text
        assert gw.transport.requests == sent
        two = await http.post(
            "/v1/images/generations",
            headers=auth(gw),
            json={"model": "image-budget", "prompt": "a cat", "n": 2},
        )
        assert two.status_code == 200, two.text
