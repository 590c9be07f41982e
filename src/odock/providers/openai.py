"""OpenAI upstreams."""

from __future__ import annotations

from odock.providers.base import ProviderAdapter


class OpenAIAdapter(ProviderAdapter):
    name = "openai"
