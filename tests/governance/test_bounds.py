"""The reservation's upper bound: what each dialect's request body says about its billable input and output."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from odock.dialects.prompt import PromptShape, measure_prompt
from odock.governance import bounds
from odock.governance.pricing import DEFAULT_MAX_TOKENS, worst_case_nanos
from odock.state.records import ModelRecord


def shape(body: dict[str, Any]) -> PromptShape:
    raw = msgspec.json.encode(body)
    return measure_prompt(raw, body)


def model(**config: Any) -> ModelRecord:
    return ModelRecord(id="m", organisation_id="o", name="m", slug="s", provider_id="p", config=config)


IMAGE_BODIES = {
    "openai chat": {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": "https://x.invalid/a.png", "detail": "high"}},
                ],
            }
        ]
    },
    "responses": {
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "what is this"},
                    {"type": "input_image", "image_url": "https://x.invalid/a"},
                ],
            }
        ]
    },
    "anthropic": {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "url", "url": "https://x.invalid/a.png"}},
                    {"type": "text", "text": "what is this"},
                ],
            }
        ]
    },
    "gemini": {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "what is this"},
                    {"fileData": {"mimeType": "image/png", "fileUri": "gs://b/a.png"}},
                ],
            }
        ]
    },
}


@pytest.mark.parametrize("dialect", sorted(IMAGE_BODIES))
def test_one_image_part_counts_once(dialect: str) -> None:
    """An image part is counted once in every dialect (its nested source/url is not counted again)."""
    measured = shape(IMAGE_BODIES[dialect])
    assert (measured.images, measured.files, measured.hidden) == (1, 0, False)


def test_files_documents_audio_and_video_are_files() -> None:
    """Documents, file inputs, input audio and non-image Gemini data are file parts (the context window bounds them)."""
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "document",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBER"},
                    },
                    {"type": "input_audio", "input_audio": {"data": "UklGR", "format": "wav"}},
                    {"type": "file", "file": {"file_id": "file-1"}},
                    {
                        "type": "tool_result",
                        "content": [{"type": "image", "source": {"type": "base64", "data": "iVBO"}}],
                    },
                ],
            }
        ],
        "contents": [{"parts": [{"inlineData": {"mimeType": "video/mp4", "data": "AAAA"}}]}],
    }
    assert (shape(body).images, shape(body).files) == (1, 4)


def test_text_only_bodies_are_not_walked_and_count_nothing() -> None:
    """A body without part markers measures its bytes only."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}
    raw = msgspec.json.encode(body)
    assert measure_prompt(raw, body) == PromptShape(size=len(raw))


@pytest.mark.parametrize(
    "body",
    [
        {"input": "again", "previous_response_id": "resp_1"},
        {"input": "hi", "conversation": "conv_1"},
        {"prompt": {"id": "pmpt_1"}, "input": "hi"},
        {"contents": [], "cachedContent": "cachedContents/1"},
        {"input": "hi", "tools": [{"type": "web_search_preview"}]},
        {"messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
        {"contents": [], "tools": [{"googleSearch": {}}]},
    ],
    ids=[
        "previous_response",
        "conversation",
        "prompt_template",
        "cached_content",
        "openai_hosted_tool",
        "anthropic_server_tool",
        "gemini_grounding",
    ],
)
def test_input_held_by_the_provider_is_hidden(body: dict[str, Any]) -> None:
    """Stored responses, conversations, prompt templates, cached content and hosted tools make the input unseen."""
    assert shape(body).hidden


def test_choices_and_tools() -> None:
    """n, best_of and candidateCount multiply the output; function tools add the tool-use overhead."""
    assert shape({"n": 3, "messages": []}).choices == 3
    assert shape({"n": 2, "best_of": 5, "prompt": "x"}).choices == 5
    assert shape({"generationConfig": {"candidateCount": 4}}).choices == 4
    assert shape({"n": -1000, "prompt": "x"}).choices == 1
    tools = shape({"messages": [], "tools": [{"type": "function", "function": {"name": "f"}}]})
    assert tools.tools and not tools.hidden


def test_input_bound_adds_images_files_overhead_and_caps_at_the_window() -> None:
    """Bytes + images × the family's maximum + tool overhead; files and hidden input take the context window."""
    prompt = PromptShape(size=300, images=2, tools=True)
    assert bounds.input_bound(prompt, model(), "anthropic") == 300 + 2 * 1_600 + 2_048
    assert bounds.input_bound(prompt, model(), "azure_openai") == 300 + 2 * 48_169 + 2_048
    tuned = model(image_tokens=1_445, tool_overhead_tokens=500, context_window=128_000)
    assert bounds.input_bound(prompt, tuned, "openai") == 300 + 2 * 1_445 + 500
    assert bounds.input_bound(PromptShape(size=300, files=1), tuned, "openai") == 128_000
    assert bounds.input_bound(PromptShape(size=300, files=1), model(file_tokens=5_000), "gemini") == 5_300
    assert bounds.input_bound(PromptShape(size=10, hidden=True), tuned, "openai") == 128_000
    assert bounds.input_bound(PromptShape(size=10**9), model(), "openai") == bounds.DEFAULT_CONTEXT_WINDOW


def test_output_cap() -> None:
    """The request's cap (within the model's maximum), else the tightest policy/model cap, chosen by the gateway."""
    assert bounds.output_cap(100, [50], model()) == (100, False)
    assert bounds.output_cap(10**6, [], model(max_output_tokens=8_192)) == (8_192, False)
    assert bounds.output_cap(None, [], model()) == (DEFAULT_MAX_TOKENS, True)
    assert bounds.output_cap(None, [900, 700], model(max_output_tokens=800)) == (700, True)
    assert bounds.output_cap(None, [], model(max_output_tokens="big")) == (DEFAULT_MAX_TOKENS, True)


def test_worst_case_prices_input_at_the_dearest_input_rate_and_no_output() -> None:
    """A cache write dearer than input is the input rate of the worst case; 0 output tokens reserve no output."""
    pricing = {"input": 1.0, "cache_write": 1.25, "cached_input": 0.1, "output": 4.0}
    assert worst_case_nanos(pricing, 1000, 0) == 1000 * 1250
    assert worst_case_nanos(pricing, 0, None) == DEFAULT_MAX_TOKENS * 4000
