"""`POST /v1/keys/validate` (reference §3.5, §15.4): may a control plane trust this key, and whose is it?

The key is presented the usual way (Authorization: Bearer, X-API-Key, x-goog-api-key, ?key=) and is its own
authorisation, as the reference says: whoever holds the secret may learn its status. A key that is unknown,
revoked or expired answers 401 `unauthorized`, `api_key_revoked` or `api_key_expired`, exactly as on the LLM
routes; a valid one answers 200 with its owner and grants. Neither the secret nor its hash is ever in the answer.

Served by the `key_check` pipeline (pre-auth gate, authentication): no usage record, and the key's own rate limits
are not spent by a control plane asking about it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import msgspec

from odock.edge.endpoint import LLMEndpoint

if TYPE_CHECKING:
    from odock.pipeline.call import Call
    from odock.transport.base import UpstreamResponse

PATH = "/v1/keys/validate"


class KeyValidateEndpoint(LLMEndpoint):
    name = "keys.validate"
    kind = "key_check"
    methods = ("POST",)

    async def decode(self, call: Call) -> None:
        """Nothing to read: the answer depends only on the presented key."""

    async def respond(self, call: Call, upstream: UpstreamResponse | None) -> None:
        ctx, catalogue = call.ctx, call.pipeline.catalogue
        key = ctx.key
        assert key is not None and catalogue is not None
        granted = sorted(await catalogue.grants(key.id))
        models = await asyncio.gather(*(catalogue.model_by_id(model_id) for model_id in granted))
        grants = [
            {"id": model.id, "name": model.name, "type": model.type}
            for model in models
            if model is not None and model.organisation_id == key.organisation_id
        ]
        organisation = ctx.organisation
        body: dict[str, Any] = {
            "valid": True,
            "status": "valid",
            "key": {
                "id": key.id,
                "name": key.name,
                "type": key.type,
                "expires_at": key.expires_at.isoformat() if key.expires_at else None,
                "timezone": key.timezone,
                "rotation_count": key.rotation_count,
            },
            "organisation": {
                "id": key.organisation_id,
                "name": organisation.name if organisation is not None else None,
            },
            "team": {"id": ctx.team.id, "name": ctx.team.name} if ctx.team is not None else None,
            "user_id": key.user_id,
            "grants": {"models": sorted(grants, key=lambda g: str(g["name"]))},
        }
        await call.respond(200, msgspec.json.encode(body))
