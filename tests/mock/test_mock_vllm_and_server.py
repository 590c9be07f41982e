"""vLLM extra endpoints, the journal, directive parsing and the CLI of the mock upstream."""

from __future__ import annotations

import argparse

import httpx
import openai
import pytest

from odock.mock import directives
from odock.mock.cli import add_parser
from odock.mock.server import JOURNAL_SIZE, create_app
from odock.mock.testing import MockServer, clear_journal, fetch_journal

AUTH = {"authorization": "Bearer vllm-key"}


@pytest.fixture()
async def raw(mock: MockServer) -> httpx.AsyncClient:
    """A plain HTTP client with a bearer key."""
    return httpx.AsyncClient(base_url=mock.base_url, headers=AUTH)


async def test_tokenize_detokenize_round_trip(raw: httpx.AsyncClient) -> None:
    """/tokenize counts ceil(chars/4) tokens and /detokenize (also under /v1) restores the text."""
    async with raw:
        tokens = (await raw.post("/tokenize", json={"model": "m", "prompt": "Hello, wörld!"})).json()
        text = (await raw.post("/v1/detokenize", json={"model": "m", "tokens": tokens["tokens"]})).json()
    assert tokens["count"] == 4 and tokens["max_model_len"] > 0 and len(tokens["tokens"]) == 4
    assert text == {"prompt": "Hello, wörld!"}


async def test_pooling_classify_score_rerank(raw: httpx.AsyncClient) -> None:
    """The pooling, classify, score and rerank endpoints answer vLLM's documented shapes."""
    async with raw:
        pooled = (await raw.post("/pooling", json={"model": "m", "input": ["a", "b"]})).json()
        classified = (await raw.post("/classify", json={"model": "m", "input": "great"})).json()
        scored = (
            await raw.post(
                "/v1/score", json={"model": "m", "text_1": "paris france", "text_2": ["paris", "tokyo"]}
            )
        ).json()
        reranked = (
            await raw.post(
                "/rerank",
                json={
                    "model": "m",
                    "query": "capital of france",
                    "documents": ["tokyo is big", "paris is the capital of france"],
                    "top_n": 1,
                },
            )
        ).json()
    assert [d["object"] for d in pooled["data"]] == ["pooling", "pooling"] and pooled["usage"][
        "prompt_tokens"
    ] == 2
    assert classified["data"][0]["num_classes"] == 2 and sum(classified["data"][0]["probs"]) == pytest.approx(
        1
    )
    assert scored["data"][0]["score"] > scored["data"][1]["score"]
    assert [r["index"] for r in reranked["results"]] == [1] and reranked["usage"]["total_tokens"] > 0


async def test_audio_transcription_reports_upload(mock: MockServer) -> None:
    """A multipart transcription arrives intact: its size is in the text and the x-mock-files header."""
    audio = bytes(range(256)) * 100
    async with openai.AsyncOpenAI(api_key="k", base_url=mock.base_url + "/v1", max_retries=0) as client:
        raw = await client.audio.transcriptions.with_raw_response.create(
            model="whisper", file=("a.wav", audio, "audio/wav")
        )
    async with httpx.AsyncClient(base_url=mock.base_url, headers=AUTH) as plain:
        translated = await plain.post(
            "/v1/audio/translations",
            data={"model": "whisper", "response_format": "text"},
            files={"file": ("a.wav", audio, "audio/wav")},
        )
    assert f"{len(audio)} bytes" in raw.parse().text
    assert raw.headers["x-mock-files"].startswith(f"file={len(audio)}:")
    assert translated.headers["content-type"].startswith("text/plain")
    assert translated.text.startswith("Mock translate")


async def test_journal_over_http(mock: MockServer) -> None:
    """GET /_mock/requests lists requests with stream_options and keys; DELETE clears; health answers 200."""
    await __import__("asyncio").to_thread(clear_journal, mock.base_url)
    async with httpx.AsyncClient(base_url=mock.base_url, headers=AUTH) as raw:
        await raw.post(
            "/v1/chat/completions",
            json={
                "model": "gpt-4o;status=503",
                "messages": [{"role": "user", "content": "x"}],
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
        assert (await raw.get("/_mock/health")).status_code == 200
    entries = await __import__("asyncio").to_thread(fetch_journal, mock.base_url)
    assert len(entries) == 1
    entry = entries[0]
    assert entry["model"] == "gpt-4o;status=503" and entry["stream"] is True and entry["status"] == 503
    assert entry["stream_options"] == {"include_usage": True}
    assert entry["keys"] == ["messages", "model", "stream", "stream_options"]


async def test_unknown_route_and_wrong_method(raw: httpx.AsyncClient) -> None:
    """Unknown paths are 404 and known paths with the wrong method 405, in OpenAI's error shape."""
    async with raw:
        missing = await raw.post("/v1/nothing", json={})
        wrong = await raw.get("/v1/chat/completions")
        bad_json = await raw.post("/v1/chat/completions", content=b"{nope")
    assert missing.status_code == 404 and "error" in missing.json()
    assert wrong.status_code == 405
    assert bad_json.status_code == 400 and bad_json.json()["error"]["type"] == "invalid_request_error"


def test_journal_is_bounded() -> None:
    """The journal keeps only the newest JOURNAL_SIZE entries."""
    app = create_app()
    assert app.journal.maxlen == JOURNAL_SIZE


def test_directive_parsing_and_precedence() -> None:
    """Model, marker and header directives combine with header > marker > model precedence."""
    name, from_model = directives.split_model("gpt-4o;status=503;latency_ms=5")
    assert name == "gpt-4o" and from_model.status == 503 and from_model.latency_ms == 5
    combined = directives.resolve(from_model, "hello [[mock status=429 tool=x]]", "status=500, words=2")
    assert (combined.status, combined.latency_ms, combined.tool, combined.words) == (500, 5, "x", 2)
    assert directives.strip_markers("a [[mock x=1]] b").split() == ["a", "b"]
    with pytest.raises(directives.DirectiveError):
        directives.parse("fail_rate=2")
    with pytest.raises(directives.DirectiveError):
        directives.parse("bogus=1")


def test_cli_parser_defaults() -> None:
    """`mock-upstream` has the documented flags and defaults and sets func."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_parser(sub)
    args = parser.parse_args(
        ["mock-upstream", "--latency-ms", "5", "--fail-rate", "0.5", "--fail-status", "503"]
    )
    assert (args.host, args.port, args.latency_ms, args.chunk_delay_ms) == ("127.0.0.1", 9000, 5.0, 0.0)
    assert (args.fail_rate, args.fail_status) == (0.5, 503) and callable(args.func)


async def test_server_defaults_apply_to_every_request() -> None:
    """MockDefaults fail_rate/fail_status fail requests that carry no directives of their own."""
    from odock.mock.testing import running_mock

    defaults = directives.MockDefaults(fail_rate=1.0, fail_status=502)
    async with running_mock(defaults=defaults) as url, httpx.AsyncClient(base_url=url, headers=AUTH) as raw:
        failed = await raw.post(
            "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]}
        )
        forced_ok = await raw.post(
            "/v1/chat/completions",
            json={"model": "m;fail_rate=0", "messages": [{"role": "user", "content": "x"}]},
        )
    assert failed.status_code == 502 and failed.json()["error"]["type"] == "server_error"
    assert forced_ok.status_code == 200
