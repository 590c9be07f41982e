"""The openai SDK through a live gateway on the native OpenAI routes: responses, embeddings, images."""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import Any

import httpx
import openai
import pytest

from odock.mock.testing import MockServer
from odock.state.service import CatalogueService
from tests.harness import GatewayProcess
from tests.native.conftest import last_request, wait_usage

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40  # binary content with CR/LF and boundary-like bytes


def client(gateway: GatewayProcess, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


async def test_responses_unary(
    gateway: GatewayProcess, key: str, service: CatalogueService, mock: MockServer
) -> None:
    """responses.create answers through the slug; usage is recorded from the answer's usage."""
    async with client(gateway, key) as c:
        raw = await c.responses.with_raw_response.create(model="gpt-test", input="hello there")
    reply = raw.parse()
    assert reply.output_text and reply.usage is not None
    assert last_request(mock, "/v1/responses")["model"] == "gpt-4o-mini"
    record = await wait_usage(service, raw.headers["x-request-id"])
    assert record["route"] == "openai.responses" and record["output_tokens"] == reply.usage.output_tokens


async def test_responses_stream_full_event_sequence(
    gateway: GatewayProcess, key: str, service: CatalogueService
) -> None:
    """A Responses stream passes the whole event sequence through; usage comes from response.completed."""
    async with client(gateway, key) as c:
        raw = await c.responses.with_raw_response.create(model="gpt-test", input="stream please", stream=True)
        events = [e async for e in raw.parse()]
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds and "response.output_item.done" in kinds
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    completed = events[-1].response  # type: ignore[union-attr]
    assert text and completed.usage is not None
    record = await wait_usage(service, raw.headers["x-request-id"])
    assert record["stream"] and record["output_tokens"] == completed.usage.output_tokens


async def test_responses_stream_helper_and_cut(gateway: GatewayProcess, key: str) -> None:
    """The responses.stream() helper gets the final response; a cut stream ends with error + response.failed."""
    async with client(gateway, key) as c:
        async with c.responses.stream(model="gpt-test", input="stream please") as stream:
            final = await stream.get_final_response()
        assert final.output_text
        stream_cut = await c.responses.create(
            model="gpt-test", input="long [[mock cut_after=4]]", stream=True
        )
        kinds = [e.type async for e in stream_cut]
    assert kinds[-2:] == ["error", "response.failed"] and "response.completed" not in kinds


async def test_responses_errors(gateway: GatewayProcess, key: str) -> None:
    """A non-OpenAI model is 400 provider_not_allowed; an upstream 500 is a 502 with the upstream body."""
    async with client(gateway, key) as c:
        with pytest.raises(openai.BadRequestError) as pinned:
            await c.responses.create(model="claude-test", input="hi")
        assert pinned.value.code == "provider_not_allowed"
        with pytest.raises(openai.InternalServerError) as upstream:
            await c.responses.create(model="gpt-test", input="x [[mock status=500]]")
    assert upstream.value.status_code == 502


async def test_embeddings_float_and_base64(
    gateway: GatewayProcess, key: str, service: CatalogueService
) -> None:
    """Embeddings come back in either encoding with the same vector; usage is recorded."""
    async with client(gateway, key) as c:
        raw = await c.embeddings.with_raw_response.create(
            model="embed-test", input="the same text", encoding_format="float"
        )
        floats = raw.parse()
        b64 = await c.embeddings.create(model="embed-test", input="the same text")  # SDK default: base64
    assert floats.data[0].embedding == pytest.approx(b64.data[0].embedding)
    record = await wait_usage(service, raw.headers["x-request-id"])
    assert record["route"] == "openai.embeddings" and record["input_tokens"] == floats.usage.prompt_tokens > 0
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        resp = await http.post(
            "/v1/embeddings",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "embed-test", "input": "the same text", "encoding_format": "base64"},
        )
    vector = resp.json()["data"][0]["embedding"]
    assert isinstance(vector, str)
    decoded = struct.unpack(f"<{len(base64.b64decode(vector)) // 4}f", base64.b64decode(vector))
    assert list(decoded) == pytest.approx(floats.data[0].embedding)


async def test_images_generate(gateway: GatewayProcess, key: str, service: CatalogueService) -> None:
    """images.generate forwards JSON; usage from the upstream's input/output tokens."""
    async with client(gateway, key) as c:
        raw = await c.images.with_raw_response.generate(model="image-test", prompt="a red square", n=2)
    images = raw.parse()
    assert len(images.data or []) == 2 and images.data and images.data[0].b64_json
    record = await wait_usage(service, raw.headers["x-request-id"])
    assert images.usage is not None and record["output_tokens"] == images.usage.output_tokens


# the SDK marks images.create_variation deprecated (DALL-E 2); the route is still on the API page
@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
async def test_images_edit_and_variation_multipart(
    gateway: GatewayProcess,
    key: str,
    service: CatalogueService,
    mock: MockServer,
    uploads: list[dict[str, str]],
) -> None:
    """Multipart uploads reach the upstream byte-identical with `model` rewritten to the slug."""
    mask = b"MASK" + PNG[::-1]
    async with client(gateway, key) as c:
        raw = await c.images.with_raw_response.edit(
            model="image-test",
            image=("in.png", PNG, "image/png"),
            mask=("mask.png", mask, "image/png"),
            prompt="make it blue",
        )
        edited = raw.parse()
        variation = await c.images.with_raw_response.create_variation(
            model="image-test", image=("in.png", PNG, "image/png"), n=1
        )
    assert [u["files"] for u in uploads] == [
        f"image={len(PNG)}:{digest(PNG)},mask={len(mask)}:{digest(mask)}",
        f"image={len(PNG)}:{digest(PNG)}",
    ]
    assert uploads[0]["model"] == "gpt-image-1" and uploads[0]["prompt"] == "make it blue"
    assert uploads[1]["n"] == "1"
    upstream = last_request(mock, "/v1/images/variations")
    assert upstream["model"] == "gpt-image-1" and "image" in upstream["keys"]
    assert last_request(mock, "/v1/images/edits")["model"] == "gpt-image-1"
    assert edited.data and edited.data[0].b64_json and variation.parse().data
    record = await wait_usage(service, raw.headers["x-request-id"])
    assert record["route"] == "openai.images.edits" and record["model_slug"] == "gpt-image-1"


async def test_multipart_bad_input(gateway: GatewayProcess, key: str) -> None:
    """Wrong content type, malformed framing, a missing file part or model are clear 400s in OpenAI's shape."""
    auth = {"Authorization": f"Bearer {key}"}
    boundary = "b0undary"
    form = {"Content-Type": f"multipart/form-data; boundary={boundary}", **auth}
    model_part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nimage-test\r\n'.encode()
    )
    file_part = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + PNG
        + b"\r\n"
    )
    cases: list[tuple[dict[str, str], bytes, str, str]] = [
        (
            {"Content-Type": "application/json", **auth},
            b'{"model":"image-test"}',
            "invalid_request_body",
            "multipart/form-data",
        ),
        ({"Content-Type": "multipart/form-data", **auth}, model_part, "invalid_request_body", "boundary"),
        (form, model_part + file_part, "invalid_request_body", "truncated"),
        (form, b"garbage without any boundary", "invalid_request_body", "opening boundary"),
        (form, model_part + f"--{boundary}--\r\n".encode(), "invalid_request", "'image'"),
        (form, file_part + f"--{boundary}--\r\n".encode(), "invalid_request", "'model'"),
    ]
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        for headers, body, code, words in cases:
            resp = await http.post("/v1/images/variations", content=body, headers=headers)
            assert resp.status_code == 400, (code, words, resp.text)
            error: dict[str, Any] = resp.json()["error"]
            assert error["code"] == code and words in error["message"], error
            assert error["type"] == "invalid_request_error"


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
async def test_media_route_pinning_and_auth(gateway: GatewayProcess, key: str) -> None:
    """Embeddings of a non-OpenAI model are 400 provider_not_allowed; a bad key is 401."""
    async with client(gateway, key) as c:
        with pytest.raises(openai.BadRequestError) as pinned:
            await c.embeddings.create(model="vllm-test", input="x")
        assert pinned.value.code == "provider_not_allowed"
    async with client(gateway, "odk-wrong") as bad:
        with pytest.raises(openai.AuthenticationError):
            await bad.images.create_variation(model="image-test", image=("a.png", PNG, "image/png"))
