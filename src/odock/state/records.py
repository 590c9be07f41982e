"""Catalogue and ledger records: plain values the store returns and the pipeline reads.

Secrets never appear here in clear except `ProviderRecord.api_key`, which the store decrypts on load and the
provider layer uses only to build the upstream auth header.
"""

from __future__ import annotations

import random
import time
from datetime import datetime
from typing import Any, Literal

import msgspec

KeyType = Literal["ORGANISATION", "TEAM", "USER"]
ModelType = Literal[
    "chat", "reasoning", "image", "embeddings", "audio", "moderation", "transcription", "tts", "ocr"
]


class Organisation(msgspec.Struct, kw_only=True):
    id: str
    name: str
    timezone: str = "UTC"
    policies: dict[str, Any] = {}


class Team(msgspec.Struct, kw_only=True):
    id: str
    organisation_id: str
    name: str
    policies: dict[str, Any] = {}


class User(msgspec.Struct, kw_only=True):
    id: str
    organisation_id: str
    email: str
    name: str = ""


class ApiKeyRecord(msgspec.Struct, kw_only=True):
    """An Odock API key as the gateway sees it; only the SHA-256 hash of the secret is stored."""

    id: str
    name: str
    key_hash: str
    key_preview: str
    type: KeyType
    organisation_id: str
    team_id: str | None = None
    user_id: str | None = None
    expires_at: datetime | None = None  # timezone-aware UTC
    revoked: bool = False
    timezone: str = "UTC"
    policies: dict[str, Any] = {}
    rotation_count: int = 0
    created_at: datetime | None = None


class ProviderRecord(msgspec.Struct, kw_only=True):
    id: str
    organisation_id: str
    name: str
    type: str  # a provider type of odock.providers.registry (checked when the catalogue is written)
    base_url: str
    api_key: str | None = None  # decrypted by the store; never logged or serialized by the admin API
    timeout_ms: int | None = None
    enabled: bool = True
    config: dict[str, Any] = {}


class ModelRecord(msgspec.Struct, kw_only=True):
    id: str
    organisation_id: str
    name: str  # client-facing, unique per organisation
    slug: str  # upstream model id
    provider_id: str
    type: ModelType = "chat"
    capabilities: list[str] = []
    # per million tokens in USD: input, output, cached_input, cache_write, reasoning; per_image; per_unit
    pricing: dict[str, Any] = {}
    policies: dict[str, Any] = {}
    config: dict[str, Any] = {}


def new_usage_id() -> str:
    """A unique, time-ordered ledger row id: 14 hex digits of epoch microseconds, then 72 random bits.

    Time order keeps inserts at the end of the primary-key index (a random key touches a different page of it
    for nearly every row). The random bits only need to be unique, not secret: Python's generator (seeded from
    the OS at start, reseeded in a forked child) costs no system call, os.urandom one per governed call."""
    # as one 128-bit number (bytes.hex costs a fraction of two format specs); the microseconds fit 56 bits
    # until the year 4253
    return (((time.time_ns() // 1000) << 72) | random.getrandbits(72)).to_bytes(16, "big").hex()


class McpUsage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The MCP side of an MCP call's ledger entry (reference §11.7), carried by its `UsageRecord` so that both
    travel together: one spool line, one batch, one transaction (the `mcp_usage_records` row shares its id)."""

    server: str  # the path's server reference (slug or id)
    transport: str  # STREAMABLE_HTTP | SSE | STDIO, "none" when the server was not resolved
    method: str  # a bounded label: the JSON-RPC method, "batch", "response", "other" or "none"
    outcome: str  # success | failed | blocked | cancelled
    server_id: str | None = None
    tool: str | None = None  # the first tools/call name (all of them in `metadata.tools` for a batch)
    tool_calls: int = 0
    endpoint: str | None = None  # the path below the server that was forwarded ("" for its root)
    bytes_in: int = 0
    bytes_out: int = 0
    upstream_status: int | None = None
    metadata: dict[str, Any] | None = None


class UsageRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One call's ledger row (reference §12.1). Never the prompt, completion or a credential.

    `id` is the gateway's own key for the row; `request_id` is the propagated X-Request-Id, which a client may
    send more than once (a retry, a reused id) without one call's usage ever replacing another's."""

    id: str = msgspec.field(default_factory=new_usage_id)
    request_id: str
    created_at: datetime
    organisation_id: str
    api_key_id: str
    route: str
    status: int
    outcome: Literal["success", "failed", "cancelled"]
    team_id: str | None = None
    user_id: str | None = None
    model: str | None = None  # requested Odock name
    model_slug: str | None = None
    provider: str | None = None
    stream: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    usage_estimated: bool = False
    latency_ms: int = 0
    provider_request_id: str | None = None
    error_code: str | None = None
    cost_nanos: int | None = None
    pricing: dict[str, Any] | None = None
    raw_usage: dict[str, Any] | None = None
    routing: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    # MCP calls only: their sidecar row (kept last: the usage_records columns are the fields before it)
    mcp: McpUsage | None = None
