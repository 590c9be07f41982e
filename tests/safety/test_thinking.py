"""Reasoning text is screened like the answer in the response phase: OpenAI chat reasoning deltas, Anthropic
thinking blocks and Gemini thought parts, unary and streamed, with the official SDKs. The mock upstream's
reasoning repeats the prompt's first words, so an e-mail in the prompt shows up in the reasoning too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from google.genai import errors as genai_errors
from google.genai import types

from tests.inprocess import in_process_gateway
from tests.safety.test_safety_routes import EMAIL, ant, gem, keys, oai

PROMPT = f"{EMAIL} is my address [[mock chunks=6]]"
MARK = "[REDACTED_EMAIL]"


def _reasoning(obj: Any) -> str:
    extra = getattr(obj, "model_extra", None) or {}
    return str(extra.get("reasoning_content") or "")


async def test_openai_chat_reasoning(tmp_path: Path) -> None:
    async with in_process_gateway(tmp_path) as gw:
        k = await keys(gw)
        messages: Any = [{"role": "user", "content": PROMPT}]
        plain = await oai(gw, k["plain"]).chat.completions.create(
            model="gpt-test", messages=messages, reasoning_effort="low"
        )
        assert EMAIL in _reasoning(plain.choices[0].message)  # the mock does reason about the address
        reply = await oai(gw, k["response_redact"]).chat.completions.create(
            model="gpt-test", messages=messages, reasoning_effort="low"
        )
        assert MARK in _reasoning(reply.choices[0].message) and EMAIL not in reply.model_dump_json()
        stream = await oai(gw, k["response_redact"]).chat.completions.create(
            model="gpt-test", messages=messages, reasoning_effort="low", stream=True
        )
        chunks = [c async for c in stream]
        reasoning = "".join(_reasoning(c.choices[0].delta) for c in chunks if c.choices)
        assert MARK in reasoning and EMAIL not in "".join(c.model_dump_json() for c in chunks)
        with pytest.raises(openai.PermissionDeniedError):
            await oai(gw, k["response_block"]).chat.completions.create(
                model="gpt-test", messages=messages, reasoning_effort="low"
            )
        stream = await oai(gw, k["response_block"]).chat.completions.create(
            model="gpt-test", messages=messages, reasoning_effort="low", stream=True
        )
        seen = ""
        with pytest.raises(openai.APIError):
            async for chunk in stream:
                seen += chunk.model_dump_json()
        assert EMAIL not in seen


async def test_anthropic_thinking(tmp_path: Path) -> None:
    async with in_process_gateway(tmp_path) as gw:
        k = await keys(gw)
        args: Any = {
            "model": "claude-test",
            "max_tokens": 256,
            "thinking": {"type": "enabled", "budget_tokens": 128},
            "messages": [{"role": "user", "content": PROMPT}],
        }
        reply = await ant(gw, k["response_redact"]).messages.create(**args)
        thinking = [b for b in reply.content if b.type == "thinking"]
        assert thinking and MARK in thinking[0].thinking  # type: ignore[union-attr]
        assert EMAIL not in reply.model_dump_json()
        async with ant(gw, k["response_redact"]).messages.stream(**args) as stream:
            events = [e async for e in stream]
            final = await stream.get_final_message()
        streamed = "".join(e.thinking for e in events if e.type == "thinking")
        assert MARK in streamed and EMAIL not in streamed
        assert final.content[0].type == "thinking"  # the SDK's accumulator took every event
        assert final.content[0].signature  # type: ignore[union-attr]  # the signature still closes the block
        with pytest.raises(anthropic.PermissionDeniedError):
            await ant(gw, k["response_block"]).messages.create(**args)
        with pytest.raises(anthropic.APIStatusError):
            async with ant(gw, k["response_block"]).messages.stream(**args) as stream:
                async for event in stream:
                    assert EMAIL not in event.model_dump_json()


async def test_gemini_thought_parts(tmp_path: Path) -> None:
    async with in_process_gateway(tmp_path) as gw:
        k = await keys(gw)
        config = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(include_thoughts=True))

        def thoughts(response: Any) -> str:
            parts = response.candidates[0].content.parts or []
            return "".join(p.text or "" for p in parts if p.thought)

        client = gem(gw, k["response_redact"])
        reply = await client.aio.models.generate_content(model="gemini-test", contents=PROMPT, config=config)
        assert MARK in thoughts(reply) and EMAIL not in reply.model_dump_json()
        streamed = ""
        async for chunk in await client.aio.models.generate_content_stream(
            model="gemini-test", contents=PROMPT, config=config
        ):
            assert EMAIL not in chunk.model_dump_json()
            streamed += thoughts(chunk)
        assert MARK in streamed
        with pytest.raises(genai_errors.ClientError):
            await gem(gw, k["response_block"]).aio.models.generate_content(
                model="gemini-test", contents=PROMPT, config=config
            )
        with pytest.raises(genai_errors.APIError):
            async for chunk in await gem(gw, k["response_block"]).aio.models.generate_content_stream(
                model="gemini-test", contents=PROMPT, config=config
            ):
                assert EMAIL not in chunk.model_dump_json()
