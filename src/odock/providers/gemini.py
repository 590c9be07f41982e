"""Google Gemini (generativelanguage v1beta) upstreams."""

from __future__ import annotations

from urllib.parse import quote

from odock.providers.base import ProviderAdapter, ProviderConfig


class GeminiAdapter(ProviderAdapter):
    name = "gemini"

    def chat_url(self, provider: ProviderConfig, slug: str, stream: bool) -> str:
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return self.url(provider, f"/v1beta/models/{quote(slug, safe='')}:{method}")

    def headers(self, provider: ProviderConfig) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if provider.api_key:
            headers["x-goog-api-key"] = provider.api_key
        return headers
