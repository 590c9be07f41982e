"""The mock's OpenAI formats, driven by the official `openai` SDK."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from odock.mock.testing import MockServer

USER = [{"role": "user", "content": "What is the weather in Paris today?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "f"]}},
        },
    },
}


@pytest.fixture()
async def client(mock: MockServer) -> AsyncIterator[openai.AsyncOpenAI]:
    """An OpenAI client pointed at the mock, without retries."""
    async with openai.AsyncOpenAI(api_key="sk-test", base_url=mock.base_url + "/v1", max_retries=0) as c:
        yield c


async def test_chat_unary_has_text_and_full_usage(client: openai.AsyncOpenAI) -> None:
    """A unary chat completion echoes the question and reports detailed, deterministic usage."""
    result = await client.chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
    assert result.model == "gpt-4o"
    text = result.choices[0].message.content or ""
    assert text.startswith("Mock reply to: What is the weather")
    assert len(text.split()) == 12
    assert result.choices[0].finish_reason == "stop"
    assert result.usage is not None
    assert result.usage.prompt_tokens == 9  # ceil(35 chars / 4)
    assert result.usage.completion_tokens == 12
    assert result.usage.prompt_tokens_details is not None
    assert result.usage.prompt_tokens_details.cached_tokens == 0
    assert result.usage.completion_tokens_details is not None
    assert result.usage.completion_tokens_details.reasoning_tokens == 0


async def test_chat_stream_without_include_usage_has_no_usage_chunk(client: openai.AsyncOpenAI) -> None:
    """Without stream_options.include_usage no chunk carries usage, like OpenAI."""
    stream = await client.chat.completions.create(model="gpt-4o", messages=USER, stream=True)  # type: ignore[arg-type]
    chunks = [c async for c in stream]
    assert all(c.usage is None and c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks).startswith("Mock reply to:")
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_chat_stream_with_include_usage_ends_with_usage_chunk(client: openai.AsyncOpenAI) -> None:
    """With include_usage the last chunk has empty choices and the usage."""
    stream = await client.chat.completions.create(
        model="gpt-4o",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},  # type: ignore[arg-type]
    )
    chunks = [c async for c in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    assert all(c.usage is None for c in chunks[:-1])


async def test_chat_tool_call_streams_arguments_in_many_deltas(client: openai.AsyncOpenAI) -> None:
    """An offered tool is called; its JSON arguments, split in many deltas, fill the schema's properties."""
    stream = await client.chat.completions.create(
        model="gpt-4o",
        messages=USER,
        tools=[WEATHER_TOOL],
        stream=True,  # type: ignore[list-item,arg-type]
    )
    pieces, name = [], None
    async for chunk in stream:
        for call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            name = name or (call.function.name if call.function else None)
            if call.function and call.function.arguments:
                pieces.append(call.function.arguments)
        if chunk.choices and chunk.choices[0].finish_reason:
            assert chunk.choices[0].finish_reason == "tool_calls"
    assert name == "get_weather"
    assert len(pieces) > 3
    assert json.loads("".join(pieces)) == {"city": "Paris", "unit": "celsius"}


async def test_chat_answers_text_after_a_tool_result(client: openai.AsyncOpenAI) -> None:
    """Once the last message is a tool result, the mock answers with text (an agent loop ends)."""
    messages = [
        *USER,
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    result = await client.chat.completions.create(
        model="gpt-4o",
        messages=messages,  # type: ignore[arg-type]
        tools=[WEATHER_TOOL],
    )  # type: ignore[list-item]
    assert result.choices[0].message.tool_calls is None
    assert result.choices[0].finish_reason == "stop"


async def test_chat_json_schema_answer_is_valid_json(client: openai.AsyncOpenAI) -> None:
    """response_format json_schema produces JSON with the schema's properties."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}
    result = await client.chat.completions.create(
        model="gpt-4o",
        messages=USER,  # type: ignore[arg-type]
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": schema}},
    )
    assert json.loads(result.choices[0].message.content or "") == {"city": "Paris", "days": 1}


async def test_directives_from_model_header_and_marker(
    client: openai.AsyncOpenAI, journal: MockServer
) -> None:
    """Directives come from `model;...`, the x-mock header and a [[mock]] marker; the model echo is stripped."""
    result = await client.chat.completions.create(
        model="gpt-4o;words=3",
        messages=[{"role": "user", "content": "hi [[mock cached=5]]"}],
        extra_headers={"x-mock": "thinking=1"},
    )
    assert result.model == "gpt-4o"
    assert result.choices[0].message.content == "Mock reply to:"
    assert result.usage is not None and result.usage.prompt_tokens_details is not None
    assert result.usage.prompt_tokens_details.cached_tokens == 5
    assert result.usage.completion_tokens_details is not None
    assert result.usage.completion_tokens_details.reasoning_tokens > 0
    assert result.usage.completion_tokens == 3 + result.usage.completion_tokens_details.reasoning_tokens
    assert journal.requests[-1]["model"] == "gpt-4o;words=3"
    assert journal.requests[-1]["directives"] == {"words": 3, "cached": 5, "thinking": True}


async def test_chunks_directive_sets_the_number_of_text_chunks(client: openai.AsyncOpenAI) -> None:
    """chunks=7 splits the answer into exactly seven content deltas."""
    stream = await client.chat.completions.create(model="gpt-4o;chunks=7", messages=USER, stream=True)  # type: ignore[arg-type]
    contents = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
    assert len(contents) == 7


async def test_max_tokens_truncates_with_length(client: openai.AsyncOpenAI) -> None:
    """max_tokens below the answer length stops at that many words with finish_reason length."""
    result = await client.chat.completions.create(model="gpt-4o", messages=USER, max_tokens=4)  # type: ignore[arg-type]
    assert result.choices[0].finish_reason == "length"
    assert result.usage is not None and result.usage.completion_tokens == 4


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, openai.BadRequestError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
async def test_status_directive_raises_matching_sdk_error(
    client: openai.AsyncOpenAI, status: int, error: type[openai.APIStatusError]
) -> None:
    """status=<n> answers that error in OpenAI's shape, so the SDK raises its matching exception."""
    with pytest.raises(error) as info:
        await client.chat.completions.create(model=f"gpt-4o;status={status}", messages=USER)  # type: ignore[arg-type]
    assert info.value.status_code == status
    body = info.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    if status == 429:
        assert info.value.response.headers["retry-after"] == "1"


async def test_named_errors_and_retry_after(client: openai.AsyncOpenAI) -> None:
    """error=context_length / model_not_found answer in OpenAI's own words; retry_after sets Retry-After."""
    with pytest.raises(openai.BadRequestError) as too_long:
        await client.chat.completions.create(model="gpt-4o;error=context_length", messages=USER)  # type: ignore[arg-type]
    assert (
        too_long.value.code == "context_length_exceeded"
        and "maximum context length" in too_long.value.message
    )
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(model="gpt-nope;error=model_not_found", messages=USER)  # type: ignore[arg-type]
    assert missing.value.code == "model_not_found" and "`gpt-nope` does not exist" in missing.value.message
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(model="gpt-4o;status=429;retry_after=7", messages=USER)  # type: ignore[arg-type]
    assert limited.value.response.headers.get_list("retry-after") == ["7"]
    with pytest.raises(openai.BadRequestError, match="bad value for mock directive 'error'"):
        await client.chat.completions.create(model="gpt-4o;error=bogus", messages=USER)  # type: ignore[arg-type]


async def test_missing_credential_is_401(mock: MockServer) -> None:
    """A request without a bearer key gets OpenAI's 401 (AuthenticationError)."""
    async with openai.AsyncOpenAI(
        api_key="x", base_url=mock.base_url + "/v1", max_retries=0, default_headers={"Authorization": ""}
    ) as c:
        with pytest.raises(openai.AuthenticationError):
            await c.chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]


async def test_unknown_directive_is_a_bad_request(client: openai.AsyncOpenAI) -> None:
    """A typo in a directive is refused with 400 instead of being silently ignored."""
    with pytest.raises(openai.BadRequestError, match="unknown mock directive"):
        await client.chat.completions.create(model="gpt-4o;stauts=500", messages=USER)  # type: ignore[arg-type]


async def test_fail_rate_one_fails_and_zero_succeeds(client: openai.AsyncOpenAI) -> None:
    """fail_rate=1 always fails (500 by default, or `status`), fail_rate=0 never does."""
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="gpt-4o;fail_rate=1", messages=USER)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="gpt-4o;fail_rate=1;status=429", messages=USER)  # type: ignore[arg-type]
    ok = await client.chat.completions.create(model="gpt-4o;fail_rate=0;status=429", messages=USER)  # type: ignore[arg-type]
    assert ok.choices[0].message.content


async def test_error_after_emits_in_stream_error(client: openai.AsyncOpenAI) -> None:
    """error_after=2 sends two chunks then OpenAI's in-stream error, which the SDK raises."""
    stream = await client.chat.completions.create(model="gpt-4o;error_after=2", messages=USER, stream=True)  # type: ignore[arg-type]
    seen = 0
    with pytest.raises(openai.APIError, match="injected a stream error"):
        async for _ in stream:
            seen += 1
    assert seen == 2


async def test_cut_after_truncates_the_stream(client: openai.AsyncOpenAI, journal: MockServer) -> None:
    """cut_after=2 closes the connection mid-stream; the SDK sees an incomplete body, not a clean end."""
    stream = await client.chat.completions.create(model="gpt-4o;cut_after=2", messages=USER, stream=True)  # type: ignore[arg-type]
    seen = 0
    with pytest.raises((httpx.RemoteProtocolError, openai.APIConnectionError)):
        async for _ in stream:
            seen += 1
    assert seen == 2
    assert journal.requests[-1]["events_sent"] == 2


async def test_latency_and_chunk_delay(client: openai.AsyncOpenAI) -> None:
    """latency_ms delays the headers and chunk_delay_ms spaces the stream events."""
    import time

    start = time.perf_counter()
    await client.chat.completions.create(model="gpt-4o;latency_ms=150", messages=USER)  # type: ignore[arg-type]
    assert time.perf_counter() - start >= 0.15
    start = time.perf_counter()
    stream = await client.chat.completions.create(
        model="gpt-4o;chunk_delay_ms=30;chunks=4",
        messages=USER,  # type: ignore[arg-type]
        stream=True,
    )
    async for _ in stream:
        pass
    assert time.perf_counter() - start >= 0.15  # 6 events, 5 gaps of 30 ms


async def test_responses_unary(client: openai.AsyncOpenAI) -> None:
    """A unary Responses call returns a message item and usage with details."""
    result = await client.responses.create(
        model="gpt-4.1", input="Tell me about Paris", instructions="Be brief"
    )
    assert result.status == "completed"
    assert result.output_text.startswith("Mock reply to: Tell me about Paris")
    assert result.usage is not None
    assert result.usage.output_tokens == 12
    assert result.usage.input_tokens_details.cached_tokens == 0


async def test_responses_stream_event_sequence(client: openai.AsyncOpenAI) -> None:
    """The streamed Responses events come in OpenAI's order and end with response.completed and usage."""
    stream = await client.responses.create(model="gpt-4.1;thinking=1", input="Hello there", stream=True)
    events = [e async for e in stream]
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.reasoning_summary_text.delta" in kinds
    text_part = kinds[kinds.index("response.content_part.added") :]
    assert text_part[:2] == ["response.content_part.added", "response.output_text.delta"]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.usage is not None
    assert final.response.usage.output_tokens_details.reasoning_tokens > 0
    assert final.response.output_text.startswith("Mock reply to: Hello there")


async def test_responses_stream_function_call(client: openai.AsyncOpenAI) -> None:
    """A requested tool streams function_call_arguments deltas that add up to valid arguments."""
    tool = {
        "type": "function",
        "name": "lookup",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    }
    stream = await client.responses.create(model="gpt-4.1", input="find", tools=[tool], stream=True)  # type: ignore[list-item]
    events = [e async for e in stream]
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(deltas) > 1 and len(done) == 1
    assert json.loads("".join(deltas)) == json.loads(done[0].arguments) == {"query": "mock query"}
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.output[0].type == "function_call"


async def test_embeddings_float_and_base64(client: openai.AsyncOpenAI, mock: MockServer) -> None:
    """Embeddings come as floats or little-endian float32 base64 carrying the same deterministic vector."""
    floats = await client.embeddings.create(
        model="text-embedding-3-small", input=["a", "b"], encoding_format="float"
    )
    assert [d.index for d in floats.data] == [0, 1]
    assert floats.usage.prompt_tokens == 2
    decoded = await client.embeddings.create(
        model="text-embedding-3-small", input=["a", "b"]
    )  # SDK asks base64
    assert decoded.data[0].embedding == pytest.approx(floats.data[0].embedding)
    async with httpx.AsyncClient() as raw:
        body = (
            await raw.post(
                mock.base_url + "/v1/embeddings",
                headers={"authorization": "Bearer k"},
                json={"model": "m", "input": "a", "encoding_format": "base64"},
            )
        ).json()
    vector = struct.unpack("<16f", base64.b64decode(body["data"][0]["embedding"]))
    assert list(vector) == pytest.approx(floats.data[0].embedding)


async def test_images_generate_and_edit_report_upload_sizes(client: openai.AsyncOpenAI) -> None:
    """Image generation answers JSON; an edit's multipart upload is reported back byte-exact."""
    generated = await client.images.generate(model="gpt-image-1", prompt="a cat")
    assert generated.data and generated.data[0].b64_json
    image = bytes(range(256)) * 40
    mask = b"\x89PNG" + b"\x00" * 99
    raw = await client.images.with_raw_response.edit(
        model="gpt-image-1",
        image=("img.png", image, "image/png"),
        mask=("mask.png", mask, "image/png"),
        prompt="add a hat",
    )
    edited = raw.parse()
    assert (
        edited.data
        and edited.data[0].revised_prompt == f"received files: image={len(image)} mask={len(mask)}"
    )
    assert raw.headers["x-mock-files"].startswith(f"image={len(image)}:")


async def test_models_and_legacy_completions(client: openai.AsyncOpenAI) -> None:
    """GET /v1/models lists models; /v1/completions works unary and streamed with include_usage."""
    models = [m.id async for m in client.models.list()]
    assert "gpt-4o" in models
    unary = await client.completions.create(model="qwen", prompt="Once upon a time")
    assert unary.choices[0].text.startswith("Mock reply to: Once")
    stream = await client.completions.create(
        model="qwen", prompt="Once", stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
