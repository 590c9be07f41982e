"""Anthropic Messages upstreams."""

from __future__ import annotations

from odock.providers.base import ProviderAdapter
from odock.state.records import ProviderRecord

DEFAULT_VERSION = "2023-06-01"


class AnthropicAdapter(ProviderAdapter):
    name = "anthropic"

    def url(self, provider: ProviderRecord, path: str) -> str:
        base = provider.base_url.rstrip("/")
        return base + path

    def chat_url(self, provider: ProviderRecord, slug: str, stream: bool) -> str:
        return self.url(provider, "/v1/messages")

    def headers(self, provider: ProviderRecord) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "anthropic-version": DEFAULT_VERSION}
        if provider.api_key:
            headers["x-api-key"] = provider.api_key
        return headers
