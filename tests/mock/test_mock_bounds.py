"""Every count, size and delay the mock honours is bounded: above a bound it answers 400 (413 for the body) at
once, in the provider's error shape, instead of allocating or waiting without end."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors, types

from odock.mock.testing import MockServer
from odock.mock.wire import MAX_BODY_BYTES

pytestmark = pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")
AUTH = {"authorization": "Bearer sk-test"}
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture()
async def client(mock: MockServer) -> AsyncIterator[openai.AsyncOpenAI]:
    """An OpenAI client on the mock, without retries."""
    async with openai.AsyncOpenAI(
        api_key="sk-test", base_url=mock.base_url + "/v1", max_retries=0, timeout=10
    ) as c:
        yield c


async def test_image_count_2_pow_63_is_refused_fast(client: openai.AsyncOpenAI) -> None:
    """`n = 2**63` images answers a 400 naming `n` at once (it used to allocate until the kernel killed it)."""
    started = time.monotonic()
    with pytest.raises(openai.BadRequestError) as refused:
        await client.images.generate(model="dall-e-2", prompt="a cat", n=2**63)
    assert time.monotonic() - started < 2
    assert "'n'" in refused.value.message and "<= 10" in refused.value.message
    assert (await client.images.generate(model="dall-e-2", prompt="a cat", n=10)).data is not None


async def test_image_edit_count_is_bounded(client: openai.AsyncOpenAI) -> None:
    """The multipart `n` of image edits is bounded the same way."""
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 64
    with pytest.raises(openai.BadRequestError) as refused:
        await client.images.edit(image=("a.png", png, "image/png"), prompt="x", n=10**30)
    assert "'n'" in refused.value.message


async def test_token_counts_and_inputs_are_bounded(client: openai.AsyncOpenAI) -> None:
    """A huge `max_tokens`, `cached` directive or embeddings input count answers 400 in OpenAI's shape."""
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(model="gpt-4o", messages=USER, max_tokens=2**63)  # type: ignore[arg-type]
    assert "max_tokens" in refused.value.message
    with pytest.raises(openai.BadRequestError, match="cached"):
        await client.chat.completions.create(model="gpt-4o;cached=9999999999999", messages=USER)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="input"):
        await client.embeddings.create(model="text-embedding-3-small", input=["x"] * 2049)


@pytest.mark.parametrize(
    "directive",
    [
        "words=1000000000",
        "chunks=100000000",
        "latency_ms=inf",
        "latency_ms=nan",
        "chunk_delay_ms=1e12",
        "linger_ms=1e12",
        "status=1000000",
        "fail_rate=nan",
        "cut_after=99999999999",
    ],
)
async def test_directives_are_bounded(client: openai.AsyncOpenAI, directive: str) -> None:
    """A directive asking for endless words, chunks or delays answers 400 at once."""
    started = time.monotonic()
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(
            model="gpt-4o",
            messages=USER,
            stream=True,  # type: ignore[arg-type]
            extra_headers={"x-mock": directive},
        )
    assert time.monotonic() - started < 2
    assert directive.split("=")[0] in refused.value.message


async def test_bounds_answer_in_each_provider_shape(mock: MockServer) -> None:
    """Anthropic and Gemini clients get their own 400 for an out-of-bound count."""
    async with anthropic.AsyncAnthropic(api_key="sk-ant", base_url=mock.base_url, max_retries=0) as claude:
        with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
            # streamed: unary calls with such a cap are refused by the SDK itself before any request
            await claude.messages.create(
                model="claude-test",
                max_tokens=2**62,
                messages=USER,  # type: ignore[arg-type]
                stream=True,
            )
    gemini = genai.Client(
        api_key="g", http_options=types.HttpOptions(base_url=mock.base_url, api_version="v1beta")
    )
    with pytest.raises(errors.ClientError) as refused:
        await gemini.aio.models.generate_content(model="gemini-2.5-flash;words=999999999", contents="hi")
    assert refused.value.code == 400 and "words" in str(refused.value.message)


async def test_body_above_the_bound_is_413(mock: MockServer) -> None:
    """A request body above MAX_BODY_BYTES answers 413 without being kept."""
    async with httpx.AsyncClient(base_url=mock.base_url, headers=AUTH, timeout=30) as raw:
        too_big = await raw.post("/v1/chat/completions", content=b" " * (MAX_BODY_BYTES + 1))
    assert too_big.status_code == 413 and too_big.json()["error"]["type"] == "invalid_request_error"


async def test_detokenize_refuses_ids_that_are_no_token(mock: MockServer) -> None:
    """/detokenize answers 400 (not 500) for an id no tokenizer output can hold."""
    async with httpx.AsyncClient(base_url=mock.base_url, headers=AUTH) as raw:
        wide = await raw.post("/detokenize", json={"model": "m", "tokens": [(1 << 32) + (0x1FFFFF << 21)]})
        huge = await raw.post("/detokenize", json={"model": "m", "tokens": [10**40]})
    assert wide.status_code == 400 and huge.status_code == 400


async def test_journal_entries_are_bounded(journal: MockServer) -> None:
    """A request with a huge model name and many fields leaves a journal entry of bounded size."""
    body = {"model": "m" * 100_000, "messages": USER, **{f"field{i}": i for i in range(1000)}}
    async with httpx.AsyncClient(base_url=journal.base_url, headers=AUTH) as raw:
        assert (await raw.post("/v1/chat/completions", json=body)).status_code == 200
    entry = journal.requests[-1]
    assert len(entry["model"]) <= 256 and len(entry["keys"]) <= 100
