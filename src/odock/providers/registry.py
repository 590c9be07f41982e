"""Provider type → adapter."""

from __future__ import annotations

from odock.errors import BadRequest
from odock.providers.anthropic import AnthropicAdapter
from odock.providers.base import ProviderAdapter
from odock.providers.gemini import GeminiAdapter
from odock.providers.openai import OpenAIAdapter
from odock.providers.vllm import VLLMAdapter

_ADAPTERS: dict[str, ProviderAdapter] = {
    "openai": OpenAIAdapter(),
    "vllm": VLLMAdapter(),
    "anthropic": AnthropicAdapter(),
    "gemini": GeminiAdapter(),
}


def adapter_for(provider_type: str) -> ProviderAdapter:
    """Return the adapter for a provider type, or 400 provider_type_unsupported."""
    try:
        return _ADAPTERS[provider_type]
    except KeyError:
        raise BadRequest(f"provider type {provider_type!r} is not supported", "provider_type_unsupported") from None


# provider types that speak a family's wire format (reference §4.1: AZURE_OPENAI/CUSTOM are the OpenAI family)
FAMILY = {"openai": "openai", "azure_openai": "openai", "custom": "openai", "anthropic": "anthropic",
          "gemini": "gemini", "google": "gemini", "vllm": "vllm"}


def family_of(provider_type: str) -> str:
    return FAMILY.get(provider_type, provider_type)
