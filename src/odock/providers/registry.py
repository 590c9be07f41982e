"""Provider type → adapter, family, chat dialect: the one table of provider types.

Every place that needs a provider type reads this table: catalogue validation (`PROVIDER_TYPES`), routing and
route pinning (`family_of`), the upstream call (`adapter_for`, `dialect_for`). A new provider type is one adapter
module plus one line here. Types follow reference §4.1; AZURE_OPENAI and CUSTOM are the OpenAI family, GOOGLE is
the Gemini API.
"""

from __future__ import annotations

from dataclasses import dataclass

from odock.dialects.contract import Dialect
from odock.dialects.registry import DIALECTS
from odock.errors import BadRequest
from odock.providers.anthropic import AnthropicAdapter
from odock.providers.azure_openai import AzureOpenAIAdapter
from odock.providers.base import ProviderAdapter
from odock.providers.custom import CustomAdapter
from odock.providers.gemini import GeminiAdapter
from odock.providers.openai import OpenAIAdapter
from odock.providers.vllm import VLLMAdapter


@dataclass(frozen=True, slots=True)
class ProviderType:
    """What a provider type is to the gateway."""

    adapter: ProviderAdapter
    # the runtime provider name (§4.6): what native routes pin, `provider` fields and usage records carry
    family: str
    # the wire format of its chat upstream
    dialect: Dialect


PROVIDERS: dict[str, ProviderType] = {
    "openai": ProviderType(OpenAIAdapter(), "openai", DIALECTS["openai_chat"]),
    "azure_openai": ProviderType(AzureOpenAIAdapter(), "openai", DIALECTS["openai_chat"]),
    "custom": ProviderType(CustomAdapter(), "openai", DIALECTS["openai_chat"]),
    "anthropic": ProviderType(AnthropicAdapter(), "anthropic", DIALECTS["anthropic"]),
    "gemini": ProviderType(GeminiAdapter(), "gemini", DIALECTS["gemini"]),
    "google": ProviderType(GeminiAdapter(), "gemini", DIALECTS["gemini"]),
    "vllm": ProviderType(VLLMAdapter(), "vllm", DIALECTS["vllm_chat"]),
}
PROVIDER_TYPES: tuple[str, ...] = tuple(PROVIDERS)
FAMILIES: frozenset[str] = frozenset(p.family for p in PROVIDERS.values())


def provider_type(name: str) -> ProviderType:
    """The registered provider type `name`, or 400 provider_type_unsupported."""
    try:
        return PROVIDERS[name]
    except KeyError:
        raise BadRequest(
            f"provider type {name!r} is not supported (supported: {', '.join(PROVIDER_TYPES)})",
            "provider_type_unsupported",
        ) from None


# per-call lookups (several per call) go straight to these
_ADAPTERS = {name: p.adapter for name, p in PROVIDERS.items()}
_FAMILIES = {name: p.family for name, p in PROVIDERS.items()}


def adapter_for(name: str) -> ProviderAdapter:
    """The adapter of a provider type (400 provider_type_unsupported for an unknown type)."""
    adapter = _ADAPTERS.get(name)
    return adapter if adapter is not None else provider_type(name).adapter


def family_of(name: str) -> str:
    """The family of a provider type (400 provider_type_unsupported for an unknown type)."""
    family = _FAMILIES.get(name)
    return family if family is not None else provider_type(name).family


def dialect_for(name: str) -> Dialect:
    """The chat dialect a provider type's upstream speaks (400 provider_type_unsupported for an unknown type)."""
    return provider_type(name).dialect
