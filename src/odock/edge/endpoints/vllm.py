"""The vLLM routes under `/v1/vllm/` (pinned to the vllm family): raw vLLM passthrough.

Every JSON route forwards the client's body with only `model` rewritten to the slug, so vLLM-specific fields
(`top_k`, `guided_json`, `add_special_tokens`, `truncate_prompt_tokens`, …) reach vLLM and vLLM-specific answer
fields reach the client. Chat and completions stream as OpenAI SSE, responses as Responses SSE; audio is multipart.
The VLLMAdapter maps the root-level endpoints (/tokenize, /detokenize, /pooling, /classify) off the `/v1` base.

`/v1/vllm/models` answers from the catalogue and does not call the upstream: the client addresses models by their
Odock names (the upstream only knows slugs) and may only see the models its key is granted, so the upstream's
own list would be both wrongly named and too wide.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import msgspec

from odock.dialects import openai_chat
from odock.dialects.registry import dialect
from odock.edge.endpoint import LLMEndpoint
from odock.edge.endpoints.openai_media import ForwardEndpoint, MultipartForwardEndpoint, openai_stream
from odock.edge.endpoints.responses import responses_endpoint
from odock.pipeline.call import Call
from odock.providers.registry import family_of

if TYPE_CHECKING:
    from odock.transport.base import UpstreamResponse

PREFIX = "/v1/vllm"
FAMILY = "vllm"


def _completion_max_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("max_tokens")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class VLLMModelsEndpoint(LLMEndpoint):
    """`GET/POST /v1/vllm/models`: the key's granted vLLM models in OpenAI list shape, from the catalogue.

    Served by the `listing` pipeline (pre-auth gate, authentication, early gate), like every other route."""

    name = "vllm.models"
    kind = "listing"
    methods = ("GET", "POST")
    family = FAMILY

    async def decode(self, call: Call) -> None:
        """Nothing to read: the listing depends only on the key."""

    async def respond(self, call: Call, upstream: UpstreamResponse | None) -> None:
        """List the key's granted models served by an enabled vLLM provider."""
        catalogue = call.pipeline.catalogue
        key = call.ctx.key
        assert key is not None and catalogue is not None
        granted = await catalogue.grants(key.id)
        models = await asyncio.gather(*(catalogue.model_by_id(model_id) for model_id in sorted(granted)))
        data: list[dict[str, Any]] = []
        for model in models:
            if model is None or model.organisation_id != key.organisation_id:
                continue
            provider = await catalogue.provider(model.provider_id)
            if provider is None or not provider.enabled or family_of(provider.type) != FAMILY:
                continue
            data.append(
                {
                    "id": model.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "odock",
                    "root": model.name,
                    "parent": None,
                }
            )
        data.sort(key=lambda m: str(m["id"]))
        await call.respond(200, msgspec.json.encode({"object": "list", "data": data}))


def vllm_routes() -> dict[str, Any]:
    """The vLLM route table (exact paths)."""
    json_routes = {
        "embeddings": "/embeddings",
        "tokenize": "/tokenize",
        "detokenize": "/detokenize",
        "pooling": "/pooling",
        "classify": "/classify",
        "score": "/score",
        "rerank": "/rerank",
    }
    routes: dict[str, LLMEndpoint] = {
        f"{PREFIX}/models": VLLMModelsEndpoint(),
        f"{PREFIX}/chat/completions": ForwardEndpoint(
            "vllm.chat",
            "/chat/completions",
            FAMILY,
            dialect=dialect("vllm_chat"),
            stream=openai_stream,
            max_tokens=openai_chat.requested_max_tokens,
            set_cap=openai_chat.set_max_tokens,
            validate=openai_chat.check_chat_body,
        ),
        f"{PREFIX}/completions": ForwardEndpoint(
            "vllm.completions",
            "/completions",
            FAMILY,
            stream=openai_stream,
            max_tokens=_completion_max_tokens,
            set_cap=openai_chat.set_max_tokens,
        ),
        f"{PREFIX}/responses": responses_endpoint("vllm.responses", FAMILY),
        f"{PREFIX}/audio/transcriptions": MultipartForwardEndpoint(
            "vllm.audio", "/audio/transcriptions", FAMILY, file_fields=("file",)
        ),
        f"{PREFIX}/audio/translations": MultipartForwardEndpoint(
            "vllm.audio", "/audio/translations", FAMILY, file_fields=("file",)
        ),
    }
    for name, path in json_routes.items():  # none of them generates tokens
        routes[f"{PREFIX}/{name}"] = ForwardEndpoint(f"vllm.{name}", path, FAMILY, output="none")
    return routes
