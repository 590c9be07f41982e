"""Anthropic Messages upstreams."""

from __future__ import annotations

from odock.providers.base import ProviderAdapter, ProviderConfig

DEFAULT_VERSION = "2023-06-01"


class AnthropicAdapter(ProviderAdapter):
    name = "anthropic"

    def url(self, provider: ProviderConfig, path: str) -> str:
        base = provider.base_url.rstrip("/")
        return base + path

    def chat_url(self, provider: ProviderConfig, slug: str, stream: bool) -> str:
        return self.url(provider, "/v1/messages")

    def headers(self, provider: ProviderConfig) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "anthropic-version": DEFAULT_VERSION}
        if provider.api_key:
            headers["x-api-key"] = provider.api_key
        return headers
