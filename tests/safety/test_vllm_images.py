"""SafetySec on the vLLM routes (/v1/vllm/...: chat, completions, responses) and the image generation route
(the prompt of /v1/images/generations), with the openai SDK: block (403 safety_blocked before any upstream call),
redact (the upstream sees the marker), and the response phase on a vLLM stream."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from tests.inprocess import InProcessGateway, in_process_gateway
from tests.safety.test_safety_routes import (
    BLOCK_REDACT,
    EMAIL,
    INJECTION,
    RESPONSE_BLOCK,
    RESPONSE_REDACT,
    SECRET,
    record_upstream,
    upstream_bodies,
)


async def _keys(gw: InProcessGateway) -> dict[str, str]:
    out = {}
    for name, policies in (
        ("guarded", BLOCK_REDACT),
        ("response_redact", RESPONSE_REDACT),
        ("response_block", RESPONSE_BLOCK),
    ):
        created = await gw.service.create_key(
            {
                "organisation": "acme",
                "name": name,
                "type": "ORGANISATION",
                "models": ["vllm-test", "image-test"],
                "policies": policies,
            }
        )
        out[name] = created.secret
    await gw.gateway.catalogue.invalidate()
    record_upstream(gw)
    return out


def _client(gw: InProcessGateway, key: str, base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=key, base_url=f"http://gateway.test{base}", max_retries=0, http_client=gw.sdk_client()
    )


async def test_vllm_routes(tmp_path: Path) -> None:
    async with in_process_gateway(tmp_path) as gw:
        k = await _keys(gw)
        vllm = _client(gw, k["guarded"], "/v1/vllm")
        before = len(gw.mock.journal)
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await vllm.chat.completions.create(
                model="vllm-test", messages=[{"role": "user", "content": f"my key {SECRET}"}]
            )
        assert caught.value.body["code"] == "safety_blocked"  # type: ignore[index]
        assert SECRET not in json.dumps(caught.value.body)
        with pytest.raises(openai.PermissionDeniedError):
            await vllm.completions.create(model="vllm-test", prompt=INJECTION)
        with pytest.raises(openai.PermissionDeniedError):
            await vllm.responses.create(model="vllm-test", input=f"key {SECRET}")
        with pytest.raises(openai.PermissionDeniedError):
            await vllm.chat.completions.create(
                model="vllm-test", messages=[{"role": "user", "content": INJECTION}], stream=True
            )
        assert len(gw.mock.journal) == before  # every block came before any upstream call
        # redact: the upstream sees the marker, and so does the client (the mock echoes the prompt)
        reply = await vllm.chat.completions.create(
            model="vllm-test", messages=[{"role": "user", "content": f"mail {EMAIL} today"}]
        )
        assert "[REDACTED_EMAIL]" in (reply.choices[0].message.content or "")
        done = await vllm.completions.create(model="vllm-test", prompt=f"mail {EMAIL} today")
        assert "[REDACTED_EMAIL]" in done.choices[0].text
        assert EMAIL not in upstream_bodies(gw) and "[REDACTED_EMAIL]" in upstream_bodies(gw)
        # the response phase while streaming
        stream = await _client(gw, k["response_redact"], "/v1/vllm").chat.completions.create(
            model="vllm-test",
            messages=[{"role": "user", "content": f"say {EMAIL} back [[mock chunks=9]]"}],
            stream=True,
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert "[REDACTED_EMAIL]" in text and EMAIL not in text
        stream = await _client(gw, k["response_block"], "/v1/vllm").chat.completions.create(
            model="vllm-test",
            messages=[{"role": "user", "content": f"say {EMAIL} back [[mock chunks=9]]"}],
            stream=True,
        )
        seen = ""
        with pytest.raises(openai.APIError):
            async for chunk in stream:
                seen += chunk.model_dump_json()
        assert EMAIL not in seen


async def test_image_generation_prompt(tmp_path: Path) -> None:
    async with in_process_gateway(tmp_path) as gw:
        k = await _keys(gw)
        images = _client(gw, k["guarded"], "/v1")
        before = len(gw.mock.journal)
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await images.images.generate(model="image-test", prompt=f"a poster with {SECRET}")
        assert caught.value.body["code"] == "safety_blocked"  # type: ignore[index]
        with pytest.raises(openai.PermissionDeniedError):
            await images.images.generate(model="image-test", prompt=INJECTION)
        assert len(gw.mock.journal) == before
        result = await images.images.generate(model="image-test", prompt=f"a card reading {EMAIL}", n=1)
        assert result.data and result.data[0].b64_json  # the image still comes back
        sent = upstream_bodies(gw)
        assert EMAIL not in sent and "a card reading [REDACTED_EMAIL]" in sent
