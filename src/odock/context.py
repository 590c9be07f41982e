"""The per-call context every pipeline stage reads and fills in, from the edge to the usage record."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from odock.dialects.prompt import PromptShape, measure_prompt
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
class PluginRun:
    """One plugin's execution in one phase (kept in the usage record's metadata; never call text)."""

    plugin: str
    phase: str
    outcome: str  # "allow" | "modify" | "block" | "error" | "timeout"
    duration_us: int = 0
    # stream_chunk: one run per stream, over this many deltas
    count: int = 1
    findings: list[str] | None = None


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
    measured_prompt: PromptShape | None = None
    # the decoded body `prompt` measures on first read: only reservations read it, most calls never do
    prompt_source: tuple[bytes, dict[str, Any]] | None = None
    # what bounds the route's output: "text" (a max-tokens field the gateway sets when the request has none),
    # "none" (no generated tokens: embeddings, pooling), "images" (one image per choice), "other" (not bounded)
    output: Literal["text", "none", "images", "other"] = "other"
    # set by the final gate: the request named no output cap and the gateway chose `max_tokens`; the endpoint
    # must send it upstream
    output_cap_added: bool = False
    # governance receipts (rate-limit lease, token reservation, budget/quota reservations), opaque to the edge
    governance: Any = None
    # a scope beside the model's that joins the final gate: (scope, id, policy envelope) — MCP calls put their
    # server there (the MCP scope, reference §2.3 step 10)
    extra_scope: tuple[str, str, dict[str, Any]] | None = None
    # what budgets and cost quotas reserve when the call is not priced by tokens (MCP: pricing × request bytes
    # plus the per-call and per-tool price); None: the model's worst case
    reserve_nanos: int | None = None
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
    # plugin executions (usage record) and per-call plugin state (stream_chunk); None when no plugin ran
    plugin_runs: list[PluginRun] | None = None
    plugin_state: dict[str, Any] | None = None
    # SafetySec decisions ({"phase", "module", "category", "action"}; never the matched text), for the usage record
    security: list[dict[str, str]] | None = None
    # Redis script calls an earlier stage asks the final gate to send in its round trip (`governance.Rider`)
    redis_riders: list[Any] | None = None
    provider_request_id: str | None = None
    status: int = 0
    error_code: str | None = None
    outcome: Literal["success", "failed", "cancelled"] = "success"
    upstream_started: float | None = None
    # when the first streamed bytes went to the client (time to first token; None for a unary answer)
    first_byte_at: float | None = None
    # what stages decided, for the request log line and the trace ("cache": "hit", "safety": "redacted", …):
    # short names only, never content; None until a stage notes one
    decisions: dict[str, str] | None = None
    # the tracing state of a sampled call (odock.observability.tracing); None when tracing is off or unsampled
    trace: Any = None
    # answered from the response cache (no upstream call, no tokens)
    cache_hit: bool = False

    @property
    def prompt(self) -> PromptShape | None:
        """The request's billable shape (measured once, when first asked for)."""
        if self.measured_prompt is None and self.prompt_source is not None:
            self.measured_prompt = measure_prompt(*self.prompt_source)
            self.prompt_source = None
        return self.measured_prompt

    @prompt.setter
    def prompt(self, shape: PromptShape | None) -> None:
        self.measured_prompt, self.prompt_source = shape, None

    def elapsed_ms(self) -> int:
        return int((time.perf_counter() - self.started) * 1000)

    def note(self, name: str, decision: str) -> None:
        """Record a stage's decision (shown in the request log line and on the call's trace)."""
        if self.decisions is None:
            self.decisions = {}
        self.decisions[name] = decision

    def ttft_ms(self) -> int | None:
        """Time to the first streamed bytes, in milliseconds (None: not a stream, or nothing was sent)."""
        return None if self.first_byte_at is None else int((self.first_byte_at - self.started) * 1000)

    def overhead_ms(self) -> int | None:
        """Time spent in the gateway before the upstream call began (None: no upstream call)."""
        return None if self.upstream_started is None else int((self.upstream_started - self.started) * 1000)
