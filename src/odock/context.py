"""The per-call context every pipeline stage reads and fills in, from the edge to the usage record."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from odock.dialects.prompt import PromptShape
from odock.model import GatewayRequest, Usage
from odock.state.records import ApiKeyRecord, ModelRecord, Organisation, ProviderRecord, Team


@dataclass(slots=True)
class Attempt:
    """One upstream attempt made by the router (kept in the usage record's routing metadata)."""

    model: str
    provider: str
    outcome: str  # "success" | "failed"
    error_class: str | None = None
    status: int | None = None
    latency_ms: int = 0


@dataclass(slots=True)
class CallContext:
    request_id: str
    route: str  # bounded route label, e.g. "openai.chat", "unified.chat", "anthropic.messages"
    client_ip: str
    started: float = field(default_factory=time.perf_counter)
    # the provider family a native route pins ("openai", "anthropic", "gemini", "vllm"), None on /v1/llm/chat
    required_provider: str | None = None
    # a unified call's `provider` pin: it reaches only that provider family
    provider_pin: str | None = None
    body_bytes: int = 0
    # filled by auth
    key: ApiKeyRecord | None = None
    organisation: Organisation | None = None
    team: Team | None = None
    # filled by decode / access / model resolution
    requested_model: str | None = None
    request: GatewayRequest | None = None
    model: ModelRecord | None = None
    provider: ProviderRecord | None = None
    stream: bool = False
    max_tokens: int | None = None
    # a cheap input estimate (TPM reservations); budgets reserve the upper bound measured in `prompt`
    estimated_input_tokens: int = 0
    prompt: PromptShape | None = None
    # what bounds the route's output: "text" (a max-tokens field the gateway sets when the request has none),
    # "none" (no generated tokens: embeddings, pooling), "images" (one image per choice), "other" (not bounded)
    output: Literal["text", "none", "images", "other"] = "other"
    # set by the final gate: the request named no output cap and the gateway chose `max_tokens`; the endpoint
    # must send it upstream
    output_cap_added: bool = False
    # governance receipts (rate-limit lease, token reservation, budget/quota reservations), opaque to the edge
    governance: Any = None
    response_headers: dict[str, str] = field(default_factory=dict)
    # filled by the router and the response path
    attempts: list[Attempt] = field(default_factory=list)
    answered_by: ModelRecord | None = None
    answered_provider: ProviderRecord | None = None
    usage: Usage | None = None
    raw_usage: dict[str, Any] | None = None
    # items billed per unit beside tokens (images generated: `per_image` pricing)
    billed_images: int = 0
    # the exact cost, computed once when the call ends (post-flight and the usage record share it)
    priced: bool = False
    cost_nanos: int | None = None
    # impossible usage the gateway clamped ("negative", "above_ceiling"), or a charge above the call's reservation
    # ("above_reservation"): kept on the usage record
    usage_flags: list[str] = field(default_factory=list)
    # SafetySec decisions ({"phase", "module", "category", "action"}; never the matched text), for the usage record
    security: list[dict[str, str]] | None = None
    provider_request_id: str | None = None
    status: int = 0
    error_code: str | None = None
    outcome: Literal["success", "failed", "cancelled"] = "success"
    upstream_started: float | None = None

    def elapsed_ms(self) -> int:
        return int((time.perf_counter() - self.started) * 1000)
