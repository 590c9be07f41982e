"""The admin HTTP API (Starlette, never on the hot path): JSON CRUD over `CatalogueService` under /admin/….

Every route needs `Authorization: Bearer <ODOCK_ADMIN_TOKEN>`; with no token configured the whole API is off
and answers 404 `admin_disabled`. Errors are `{"error": {"code": …, "message": …}}` with the error's status, a bad
body included (400 `invalid_request_body`) and a bug too (500 `internal_error`, never Starlette's plain text).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from odock.dialects.body import decode_json
from odock.errors import BadRequest, GatewayError
from odock.state.service import CatalogueService, CreatedKey, to_json
from odock.state.validation import KeyRotation, NewGrant, decode, holds_nul

if TYPE_CHECKING:
    from odock.admin.openapi import Operation

log = logging.getLogger("odock.admin")
Handler = Callable[[Request], Awaitable[Response]]
_ENCODER = msgspec.json.Encoder()


def json_response(value: Any, status: int = 200) -> Response:
    """Encode records, info structs and builtins as a JSON response."""
    return Response(_ENCODER.encode(to_json(value)), status_code=status, media_type="application/json")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """Render the admin error body."""
    body = _ENCODER.encode({"error": {"code": code, "message": message}})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


async def read_body(request: Request) -> dict[str, Any]:
    """The request's JSON object body ({} when empty), or 400 invalid_request_body."""
    raw = await request.body()
    if not raw.strip():
        return {}
    data = decode_json(raw)
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object", "invalid_request_body")
    if holds_nul(data):
        # nothing the admin API writes or looks up can hold one on PostgreSQL: refuse it here, once
        raise BadRequest(
            "the request body holds a NUL character (\\u0000), which no stored value may contain",
            "invalid_request_body",
        )
    return data


def _created_key(created: CreatedKey) -> dict[str, Any]:
    # the secret is in this response and nowhere else, ever
    body: dict[str, Any] = to_json(created.key)
    body["secret"] = created.secret
    return body


class _Guard:
    """Pure ASGI guard: admin disabled → 404, missing or wrong bearer token → 401, before any routing."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response: Response | None = None
        if not self.token:
            response = error_response(
                404, "admin_disabled", "the admin API is disabled: set ODOCK_ADMIN_TOKEN to enable it"
            )
        else:
            header = dict(scope.get("headers") or []).get(b"authorization", b"")
            scheme, _, value = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(value.strip(), self.token):
                response = error_response(
                    401,
                    "unauthorized",
                    "admin API requires Authorization: Bearer <ODOCK_ADMIN_TOKEN>",
                    {"WWW-Authenticate": "Bearer"},
                )
            elif "\x00" in scope["path"] or b"%00" in scope.get("query_string", b""):
                response = error_response(400, "invalid_request", "a NUL character cannot name anything")
        if response is not None:
            await response(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        except Exception:
            # a bug: Starlette already answered 500 internal_error and re-raises so that it is seen; log it here,
            # since the server would drop the connection (and with it that answer) on an exception of the app
            log.exception("unhandled admin API error")


def _org(request: Request) -> str | None:
    return request.query_params.get("organisation") or None


def _crud_routes(
    path: str,
    create: Callable[[dict[str, Any]], Awaitable[Any]],
    list_: Callable[[str | None], Awaitable[Any]],
    get: Callable[[str, str | None], Awaitable[Any]],
    update: Callable[[str, dict[str, Any], str | None], Awaitable[Any]],
    delete: Callable[[str, str | None], Awaitable[None]],
) -> list[Route]:
    async def collection(request: Request) -> Response:
        if request.method == "POST":
            return json_response(await create(await read_body(request)), 201)
        return json_response({"data": await list_(_org(request))})

    async def item(request: Request) -> Response:
        ref = request.path_params["ref"]
        if request.method == "PATCH":
            return json_response(await update(ref, await read_body(request), _org(request)))
        if request.method == "DELETE":
            await delete(ref, _org(request))
            return Response(status_code=204)
        return json_response(await get(ref, _org(request)))

    return [
        Route(path, collection, methods=["GET", "POST"]),
        Route(path + "/{ref}", item, methods=["GET", "PATCH", "DELETE"]),
    ]


def create_admin_app(  # noqa: C901
    service: CatalogueService,
    admin_token: str,
    extra_routes: Sequence[BaseRoute] = (),
    extra_operations: Sequence[Operation] = (),
) -> ASGIApp:
    """Build the admin ASGI app; every route lives under /admin/ (`extra_routes` too, behind the same guard,
    described in the OpenAPI document by `extra_operations`)."""
    from odock.admin.openapi import OPERATIONS, document_json

    s = service

    async def list_orgs(_organisation: str | None) -> Any:
        return await s.list_organisations()

    async def get_org(ref: str, _organisation: str | None) -> Any:
        return await s.get_organisation(ref)

    async def update_org(ref: str, changes: dict[str, Any], _organisation: str | None) -> Any:
        return await s.update_organisation(ref, changes)

    async def delete_org(ref: str, _organisation: str | None) -> None:
        await s.delete_organisation(ref)

    async def create_key(request: Request) -> Response:
        return json_response(_created_key(await s.create_key(await read_body(request))), 201)

    async def key_collection(request: Request) -> Response:
        if request.method == "POST":
            return await create_key(request)
        return json_response({"data": await s.list_keys(_org(request))})

    async def key_item(request: Request) -> Response:
        ref = request.path_params["ref"]
        if request.method == "PATCH":
            return json_response(await s.update_key(ref, await read_body(request), _org(request)))
        if request.method == "DELETE":
            await s.delete_key(ref, _org(request))
            return Response(status_code=204)
        return json_response(await s.get_key(ref, _org(request)))

    async def rotate(request: Request) -> Response:
        rotation = decode(KeyRotation, await read_body(request), "rotate")
        created = await s.rotate_key(
            request.path_params["ref"],
            expires_at=rotation.expires_at,
            organisation=_org(request),
            rotated_by="admin-api",
        )
        return json_response(_created_key(created))

    async def revoke(request: Request) -> Response:
        return json_response(await s.revoke_key(request.path_params["ref"], _org(request)))

    async def rotations(request: Request) -> Response:
        return json_response({"data": await s.key_rotations(request.path_params["ref"], _org(request))})

    async def grants(request: Request) -> Response:
        ref = request.path_params["ref"]
        if request.method == "POST":
            grant = decode(NewGrant, await read_body(request), "grants")
            model = grant.model or grant.model_id
            assert model is not None  # NewGrant requires one
            return json_response({"data": await s.add_grant(ref, model, _org(request))}, 201)
        return json_response({"data": await s.list_grants(ref, _org(request))})

    async def grant_item(request: Request) -> Response:
        data = await s.remove_grant(request.path_params["ref"], request.path_params["model"], _org(request))
        return json_response({"data": data})

    async def usage(request: Request) -> Response:
        q = request.query_params
        group_by = q.get("group_by") or "model"
        rows = await s.usage_summary(
            group_by, since=q.get("since"), until=q.get("until"), organisation=_org(request)
        )
        return json_response({"group_by": group_by, "data": rows})

    routes = [
        *_crud_routes(
            "/admin/organisations", s.create_organisation, list_orgs, get_org, update_org, delete_org
        ),
        *_crud_routes("/admin/teams", s.create_team, s.list_teams, s.get_team, s.update_team, s.delete_team),
        *_crud_routes("/admin/users", s.create_user, s.list_users, s.get_user, s.update_user, s.delete_user),
        *_crud_routes(
            "/admin/providers",
            s.create_provider,
            s.list_providers,
            s.get_provider,
            s.update_provider,
            s.delete_provider,
        ),
        *_crud_routes(
            "/admin/models", s.create_model, s.list_models, s.get_model, s.update_model, s.delete_model
        ),
        Route("/admin/keys", key_collection, methods=["GET", "POST"]),
        Route("/admin/keys/{ref}", key_item, methods=["GET", "PATCH", "DELETE"]),
        Route("/admin/keys/{ref}/rotate", rotate, methods=["POST"]),
        Route("/admin/keys/{ref}/revoke", revoke, methods=["POST"]),
        Route("/admin/keys/{ref}/rotations", rotations, methods=["GET"]),
        Route("/admin/keys/{ref}/grants", grants, methods=["GET", "POST"]),
        Route("/admin/keys/{ref}/grants/{model}", grant_item, methods=["DELETE"]),
        Route("/admin/usage", usage, methods=["GET"]),
        *extra_routes,
    ]
    document: list[bytes] = []  # built on first request, from the routes as registered

    async def openapi(_request: Request) -> Response:
        if not document:
            document.append(document_json(routes, [*OPERATIONS, *extra_operations]))
        return Response(document[0], media_type="application/json")

    routes.append(Route("/admin/openapi.json", openapi, methods=["GET"]))

    async def gateway_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return error_response(exc.status, exc.code, exc.message)

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            return error_response(405, "method_not_allowed", "method not allowed on this admin route")
        if exc.status_code == 404:
            return error_response(404, "not_found", "no such admin route")
        return error_response(exc.status_code, "invalid_request", str(exc.detail))

    async def internal_error(_request: Request, _exc: Exception) -> Response:
        # a bug: the client still gets the admin JSON shape (Starlette re-raises afterwards, so it is logged)
        return error_response(500, "internal_error", "internal admin API error")

    app = Starlette(
        routes=routes,
        exception_handlers={
            GatewayError: gateway_error,
            HTTPException: http_error,
            Exception: internal_error,
        },
    )
    return _Guard(app, admin_token)
