"""Custom upstreams: any OpenAI-compatible chat server (llama.cpp, Ollama, LM Studio, a proxy, …)."""

from __future__ import annotations

from odock.providers.base import ProviderAdapter


class CustomAdapter(ProviderAdapter):
    name = "custom"
    requires_key = False  # self-hosted servers often take no key; one set is sent as a bearer token
