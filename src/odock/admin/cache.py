"""`POST /admin/cache/purge`: drop cached answers of one organisation, by namespace, model or key (any mix; none:
all of its entries). Embedded mode purges this process's memory; cluster mode purges Redis, for every process.

    {"organisation": "acme", "namespace": "faq", "model": "gpt-test", "key": "ci"}  ->  {"purged": 3}

`key` purges the entries scoped to that key (`scope: key`); entries shared by the organisation belong to no key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from odock.admin.app import error_response, json_response, read_body
from odock.cache.store import PurgeFilter
from odock.errors import BadRequest, GatewayError
from odock.state.cache_policy import validate_cache
from odock.state.validation import Input, Ref, decode

if TYPE_CHECKING:
    from odock.cache.store import Coalescer
    from odock.state.service import CatalogueService


class CachePurge(Input):
    """What to purge: one organisation's entries, narrowed by namespace, model and key (any mix)."""

    organisation: Ref
    namespace: Ref | None = None
    model: Ref | None = None
    key: Ref | None = None
    blank_is_none: ClassVar[frozenset[str]] = frozenset({"namespace", "model", "key"})


class PurgeCount(msgspec.Struct):
    purged: int


async def purge_filter(service: CatalogueService, body: dict[str, object]) -> PurgeFilter:
    """The purge's filter, names resolved to ids within the organisation (404 for an unknown one)."""
    purge = decode(CachePurge, body, "cache purge")
    org_ref, namespace, model, key = purge.organisation, purge.namespace, purge.model, purge.key
    if namespace is not None and validate_cache({"cache": {"namespace": namespace}}):
        raise BadRequest("cache purge: namespace must be 1-64 letters, digits, '_', '.' or '-'")
    org = await service.get_organisation(org_ref)
    return PurgeFilter(
        organisation=org.id,
        namespace=namespace,
        model_id=(await service.get_model(model, org.id)).id if model is not None else None,
        key_id=(await service.get_key(key, org.id)).id if key is not None else None,
    )


def cache_routes(service: CatalogueService, cache: Coalescer | None) -> list[Route]:
    async def purge(request: Request) -> Response:
        try:
            which = await purge_filter(service, await read_body(request))
            if cache is None:
                return error_response(409, "cache_disabled", "the response cache is off (ODOCK_CACHE=off)")
            return json_response({"purged": await cache.store.purge(which)})
        except GatewayError as exc:
            return error_response(exc.status, exc.code, exc.message)

    return [Route("/admin/cache/purge", purge, methods=["POST"])]
