"""Azure OpenAI upstreams: the OpenAI chat wire format behind Azure's key header and optional `api-version`.

`base_url` is either the v1 API (`https://{resource}.openai.azure.com/openai/v1`, no version needed) or a
deployment (`…/openai/deployments/{deployment}`, with `config.api_version`, e.g. "2024-10-21").
"""

from __future__ import annotations

from urllib.parse import quote

from odock.providers.base import ProviderAdapter, ProviderConfig


class AzureOpenAIAdapter(ProviderAdapter):
    name = "azure_openai"

    def url(self, provider: ProviderConfig, path: str) -> str:
        url = super().url(provider, path)
        version = (provider.config or {}).get("api_version")
        return f"{url}?api-version={quote(str(version), safe='')}" if version else url

    def headers(self, provider: ProviderConfig) -> dict[str, str]:
        # Azure's key header: accepted by the v1 API and by the dated deployment API alike
        headers = {"Content-Type": "application/json"}
        if provider.api_key:
            headers["api-key"] = provider.api_key
        return headers
