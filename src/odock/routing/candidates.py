"""Deployments: a model with the provider that serves it, checked usable before any attempt is planned on it."""

from __future__ import annotations

from typing import Protocol

from odock.errors import BadRequest, Forbidden
from odock.providers.registry import adapter_for
from odock.routing.router import Candidate
from odock.state.records import ModelRecord, ProviderRecord


class Deployments(Protocol):
    """The catalogue as routing sees it (the in-process catalogue cache is one)."""

    async def model(self, organisation_id: str, name: str) -> ModelRecord | None: ...

    async def grants(self, api_key_id: str) -> frozenset[str]: ...

    async def provider(self, provider_id: str) -> ProviderRecord | None: ...


async def deployment(deployments: Deployments, model: ModelRecord) -> Candidate:
    """The model with its provider, if that provider is configured, enabled and has a credential."""
    provider = await deployments.provider(model.provider_id)
    if provider is None:
        raise BadRequest(f"model {model.name!r} has no provider", "provider_not_configured")
    if not provider.enabled:
        raise Forbidden(f"provider {provider.name!r} is disabled", "provider_disabled")
    if adapter_for(provider.type).requires_key and not provider.api_key:
        raise BadRequest(
            f"provider {provider.name!r} has no API key configured", "provider_api_key_not_configured"
        )
    return Candidate(model=model, provider=provider)
