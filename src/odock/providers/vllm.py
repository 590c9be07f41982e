"""vLLM's OpenAI-compatible server: OpenAI chat plus its own endpoints, some of which live outside /v1."""

from __future__ import annotations

from odock.providers.base import ProviderAdapter, ProviderConfig

# vLLM serves these at the server root, not under /v1
_ROOT_PATHS = frozenset({"/tokenize", "/detokenize", "/pooling", "/classify"})


class VLLMAdapter(ProviderAdapter):
    name = "vllm"
    requires_key = False  # a local vLLM server commonly runs without --api-key

    def url(self, provider: ProviderConfig, path: str) -> str:
        base = provider.base_url.rstrip("/")
        if path in _ROOT_PATHS and base.endswith("/v1"):
            base = base[:-3]
        return base + path
