"""Provider adapters: per provider type, the upstream URL, auth headers, timeouts and error mapping.

Adapters are siblings behind one shape (uvicorn's protocols/http/*_impl habit) named in `registry.PROVIDERS`
with the family and the chat dialect of each provider type.
Bodies are built by the dialect modules; adapters never touch the transport.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from odock.errors import UpstreamError
from odock.transport.base import Timeouts

# upstream error headers a client can act on (back-off and retry hints, the provider's request id for support);
# relayed with an upstream 4xx that reaches the client (never the upstream's own X-Request-Id: ours is kept)
RELAYED_ERROR_HEADERS = ("retry-after", "retry-after-ms", "x-should-retry", "request-id")


class ProviderConfig(Protocol):
    """What an adapter reads of a provider (the catalogue's `ProviderRecord` is one): providers sit below the
    catalogue, which names its provider types from `providers.registry`."""

    @property
    def base_url(self) -> str: ...

    @property
    def api_key(self) -> str | None: ...

    @property
    def timeout_ms(self) -> int | None: ...

    @property
    def config(self) -> dict[str, Any]: ...


class ProviderAdapter:
    """Defaults for an OpenAI-shaped upstream; sibling adapters override what differs."""

    name = "openai"
    # providers whose upstream rejects unauthenticated calls: a missing key is a configuration error (400)
    requires_key = True
    error_message_path: tuple[str, ...] = ("error", "message")

    def url(self, provider: ProviderConfig, path: str) -> str:
        return provider.base_url.rstrip("/") + path

    def chat_url(self, provider: ProviderConfig, slug: str, stream: bool) -> str:
        return self.url(provider, "/chat/completions")

    def headers(self, provider: ProviderConfig) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if provider.api_key:
            headers["Authorization"] = f"Bearer {provider.api_key}"
        return headers

    def timeouts(self, provider: ProviderConfig) -> Timeouts:
        cfg = provider.config or {}
        total = (provider.timeout_ms or 600_000) / 1000
        return Timeouts(
            connect_s=float(cfg.get("connect_timeout_ms", 10_000)) / 1000,
            first_byte_s=float(cfg.get("first_byte_timeout_ms", provider.timeout_ms or 120_000)) / 1000,
            total_s=total,
        )

    def upstream_error(self, status: int, body: bytes, headers: dict[str, str]) -> UpstreamError:
        """Map an upstream HTTP error (headers with lower-case names) to an UpstreamError whose `kind` drives
        failover triggers."""
        content_type = headers.get("content-type", "")
        message = body[:300].decode("utf-8", "replace")
        parsed: Any = None
        if "json" in content_type:
            try:
                parsed = msgspec.json.decode(body)
            except msgspec.DecodeError:
                parsed = None
            node = parsed
            for key in self.error_message_path:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, str):
                message = node
        lowered = message.lower()
        if status == 429 or "rate_limit" in lowered or "rate limit" in lowered:
            kind = "rate_limit"
        elif status >= 500:
            kind = "5xx"
        else:
            kind = "4xx"
        return UpstreamError(
            f"upstream {self.name} returned {status}: {message}",
            "upstream_error",
            kind=kind,
            upstream_status=status,
            upstream_body=body,
            upstream_content_type=content_type,
            upstream_headers={name: headers[name] for name in RELAYED_ERROR_HEADERS if name in headers},
        )
