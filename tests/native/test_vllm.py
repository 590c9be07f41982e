"""vLLM routes under /v1/vllm through a live gateway: openai SDK for chat/completions/responses, httpx for extras."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import openai
import pytest

from odock.mock import vllm as mock_vllm
from odock.mock.testing import MockServer
from odock.state.service import CatalogueService
from tests.harness import GatewayProcess
from tests.native.conftest import last_request, wait_usage

AUDIO = bytes(range(256)) * 300 + b"\r\n--not-a-boundary\r\n"


def client(gateway: GatewayProcess, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.base_url + "/v1/vllm", api_key=key, max_retries=0)


async def test_models_lists_granted_vllm_models(gateway: GatewayProcess, key: str) -> None:
    """/v1/vllm/models lists the key's granted vLLM models by Odock name (GET and POST)."""
    async with client(gateway, key) as c:
        names = [m.id async for m in c.models.list()]
    assert names == ["vllm-test", "vllm-whisper"]
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        posted = await http.post("/v1/vllm/models", headers={"Authorization": f"Bearer {key}"})
        anonymous = await http.get("/v1/vllm/models")
    assert [m["id"] for m in posted.json()["data"]] == names
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"


async def test_chat_unary_stream_and_vllm_fields(
    gateway: GatewayProcess, key: str, service: CatalogueService, mock: MockServer
) -> None:
    """Chat completions reach vLLM with vLLM-only fields intact; streams pass through and are billed."""
    async with client(gateway, key) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="vllm-test",
            messages=[{"role": "user", "content": "hello"}],
            extra_body={"top_k": 5, "repetition_penalty": 1.1},
        )
        reply = raw.parse()
        upstream = last_request(mock, "/v1/chat/completions")
        stream = await c.chat.completions.create(
            model="vllm-test", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
    assert reply.choices[0].message.content and text
    assert upstream["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert {"top_k", "repetition_penalty"} <= set(upstream["keys"])
    record = await wait_usage(service, raw.headers["x-request-id"])
    assert record["route"] == "vllm.chat" and record["provider"] == "vllm" and record["output_tokens"] > 0


async def test_completions_and_responses(gateway: GatewayProcess, key: str) -> None:
    """Legacy completions (unary + stream) and Responses (stream events) work on the vLLM prefix."""
    async with client(gateway, key) as c:
        done = await c.completions.create(model="vllm-test", prompt="Say hi", max_tokens=8)
        pieces = [
            ch.choices[0].text
            async for ch in await c.completions.create(
                model="vllm-test", prompt="Say hi", max_tokens=8, stream=True
            )
            if ch.choices
        ]
        events = [e.type async for e in await c.responses.create(model="vllm-test", input="hi", stream=True)]
    assert done.choices[0].text and "".join(pieces)
    assert events[0] == "response.created" and events[-1] == "response.completed"


async def post(gateway: GatewayProcess, key: str, path: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        return await http.post(path, json=body, headers={"Authorization": f"Bearer {key}"})


async def test_tokenize_detokenize_roundtrip(gateway: GatewayProcess, key: str, mock: MockServer) -> None:
    """tokenize/detokenize reach vLLM's root-level endpoints and round-trip the text."""
    tokens = await post(
        gateway,
        key,
        "/v1/vllm/tokenize",
        {"model": "vllm-test", "prompt": "hello world", "return_token_strs": True},
    )
    body = tokens.json()
    assert tokens.status_code == 200 and body["tokens"] == mock_vllm.encode("hello world")
    assert body["max_model_len"] == mock_vllm.MAX_MODEL_LEN and body["token_strs"]
    assert last_request(mock, "/tokenize")["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    text = await post(gateway, key, "/v1/vllm/detokenize", {"model": "vllm-test", "tokens": body["tokens"]})
    assert text.json() == {"prompt": "hello world"}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/vllm/pooling", {"input": ["a b", "c"]}, "data"),
        ("/v1/vllm/classify", {"input": ["good film", "bad"]}, "data"),
        ("/v1/vllm/score", {"text_1": "a cat", "text_2": ["a cat sat", "dogs"]}, "data"),
        ("/v1/vllm/rerank", {"query": "a cat", "documents": ["a cat sat", "dogs"], "top_n": 1}, "results"),
        ("/v1/vllm/embeddings", {"input": "embed me"}, "data"),
    ],
)
async def test_json_extras_passthrough_with_usage(
    gateway: GatewayProcess, key: str, service: CatalogueService, path: str, body: dict[str, Any], field: str
) -> None:
    """pooling/classify/score/rerank/embeddings answer vLLM's raw shape; their token usage is recorded."""
    resp = await post(gateway, key, path, {"model": "vllm-test", **body})
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer[field] and answer["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    record = await wait_usage(service, resp.headers["x-request-id"])
    assert record["route"] == "vllm." + path.rsplit("/", 1)[1]
    assert record["input_tokens"] == answer["usage"].get("prompt_tokens", answer["usage"]["total_tokens"]) > 0


# the SDK marks audio.translations deprecated; vLLM still serves it and the route is on the API page
@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
@pytest.mark.parametrize("task", ["transcriptions", "translations"])
async def test_audio_multipart(
    gateway: GatewayProcess, key: str, task: str, uploads: list[dict[str, str]]
) -> None:
    """Audio uploads reach vLLM byte-identical with the model rewritten; text and JSON formats relay raw."""
    async with client(gateway, key) as c:
        api = c.audio.transcriptions if task == "transcriptions" else c.audio.translations
        answer = await api.create(model="vllm-whisper", file=("a.wav", AUDIO, "audio/wav"))
        text = await api.create(
            model="vllm-whisper", file=("a.wav", AUDIO, "audio/wav"), response_format="text"
        )
    digest = hashlib.sha256(AUDIO).hexdigest()[:12]
    assert digest in answer.text and str(text).startswith("Mock ")
    assert [u["files"] for u in uploads] == [f"file={len(AUDIO)}:{digest}"] * 2
    assert uploads[0]["model"] == "openai/whisper-large-v3"


async def test_vllm_bad_input(gateway: GatewayProcess, key: str) -> None:
    """A missing model, an OpenAI model on a vLLM route and an audio upload without `file` are 400s."""
    no_model = await post(gateway, key, "/v1/vllm/tokenize", {"prompt": "x"})
    pinned = await post(
        gateway, key, "/v1/vllm/rerank", {"model": "gpt-test", "query": "q", "documents": ["d"]}
    )
    assert no_model.status_code == 400 and no_model.json()["error"]["code"] == "invalid_request"
    assert pinned.status_code == 400 and pinned.json()["error"]["code"] == "provider_not_allowed"
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        no_file = await http.post(
            "/v1/vllm/audio/transcriptions",
            headers={"Authorization": f"Bearer {key}"},
            data={"model": "vllm-whisper"},
            files={"other": ("a.wav", b"x", "audio/wav")},
        )
    assert no_file.status_code == 400 and "'file'" in no_file.json()["error"]["message"]
