"""Identity and access stages: authenticate the key (step 5), read and decode the body (step 8), and resolve the
requested model to a usable deployment the key may use (steps 10–11)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from odock.errors import BadRequest, DependencyUnavailable, Forbidden
from odock.pipeline.stage import Stage
from odock.providers.registry import family_of
from odock.routing.candidates import deployment

if TYPE_CHECKING:
    from odock.pipeline.call import Call
    from odock.state.catalogue import Catalogue


class Authenticate(Stage):
    """Step 5: the presented Odock key, its organisation and team (from the in-process catalogue cache)."""

    name = "authenticate"

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue

    async def before(self, call: Call) -> None:
        ctx, catalogue = call.ctx, self.catalogue
        key = await catalogue.authenticate(call.credential())
        ctx.key = key
        ctx.organisation = await catalogue.organisation(key.organisation_id)
        if key.team_id:
            ctx.team = await catalogue.team(key.team_id)


class ReadBody(Stage):
    """Step 8: read the body and decode it with the route's dialect (model, stream, output cap); when a stage
    needs the normalized request, a native body is decoded into it too."""

    name = "read_body"

    async def before(self, call: Call) -> None:
        await call.route.decode(call)
        dialect = call.route.dialect
        if (
            call.pipeline.needs_request
            and call.request is None
            and call.json is not None
            and dialect is not None
        ):
            call.request = call.ctx.request = dialect.client.decode_request(
                call.json, path_model=call.ctx.requested_model
            )


# the width of a model name in the catalogue and in the usage ledger
MAX_MODEL_NAME = 200


class ModelAccess(Stage):
    """Steps 10–11: the model exists in the key's organisation and is granted to the key; its provider is
    configured, enabled and has a credential; a native route (or a unified call's `provider`) reaches only its
    provider family (400 provider_not_allowed, reference §4.6)."""

    name = "model_access"

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue

    async def before(self, call: Call) -> None:
        ctx, catalogue = call.ctx, self.catalogue
        assert ctx.key is not None and ctx.requested_model is not None
        name = ctx.requested_model
        if len(name) > MAX_MODEL_NAME or "\x00" in name:
            # no model can have such a name, and PostgreSQL could neither look it up nor record it in the ledger:
            # the call's usage record must not carry it either
            ctx.requested_model = None
            raise BadRequest(
                f"model: expected a model name of at most {MAX_MODEL_NAME} characters, without NUL",
                "invalid_request",
            )
        try:
            model = await catalogue.model(ctx.key.organisation_id, name)
        except DependencyUnavailable:
            raise DependencyUnavailable("model lookup unavailable", "model_lookup_unavailable") from None
        if model is None:
            raise BadRequest(f"model {name!r} is not configured", "model_not_found")
        try:
            grants = await catalogue.grants(ctx.key.id)
        except DependencyUnavailable:
            raise DependencyUnavailable(
                "model access check unavailable", "model_access_unavailable"
            ) from None
        if model.id not in grants:
            raise Forbidden(f"this API key is not allowed to use model {name!r}", "model_not_allowed")
        candidate = await deployment(catalogue, model)
        family = family_of(candidate.provider.type)
        if ctx.required_provider is not None and family != ctx.required_provider:
            raise BadRequest(
                f"model {name!r} is served by a {family} provider; this route only reaches {ctx.required_provider}",
                "provider_not_allowed",
            )
        if ctx.provider_pin is not None and ctx.provider_pin != family:
            raise BadRequest(
                f"provider {ctx.provider_pin!r} does not match model {name!r} (served by {family})",
                "provider_not_allowed",
            )
        ctx.model, ctx.provider = candidate.model, candidate.provider
        call.primary = candidate
