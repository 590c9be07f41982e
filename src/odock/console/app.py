"""The console's HTTP side: its static files, login/logout, its read endpoints over the rollups, and a proxy
that lets the session cookie use the whole admin API (every change validated by the admin API itself).

    GET  /console                      the single page (static HTML, no inline script)
    GET  /console/static/<file>        its script, style sheet and icon (package files, nothing external)
    POST /console/login                {"token": <admin token>} → session cookie
    POST /console/logout               ends the session (CSRF)
    GET  /console/api/session          the CSRF token of this session
    GET  /console/api/overview|usage|usage.csv|keys|records|records/<id>|budgets/<id>/burn
    *    /console/api/admin/<path>     the admin API's /admin/<path>, authenticated by the session (CSRF on changes)
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from odock.admin.app import error_response, json_response, read_body
from odock.admin.governance import GovernanceAdmin
from odock.console import data
from odock.console.auth import COOKIE, CSRF_HEADER, SECURITY_HEADERS, Sessions
from odock.errors import GatewayError, NotFound
from odock.state.sql import SqlStore

log = logging.getLogger("odock.console")
STATIC = Path(__file__).with_name("static")
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_SAFE_METHODS = frozenset({"GET", "HEAD"})
Handler = Callable[[Request], Awaitable[Response]]


def _static_files() -> dict[str, tuple[bytes, str]]:
    # read once at start: a fixed set of names, so no request path ever reaches the file system
    return {p.name: (p.read_bytes(), _TYPES[p.suffix]) for p in STATIC.iterdir() if p.suffix in _TYPES}


def _same_origin(request: Request) -> bool:
    """Refuse a change sent from another site (browsers send Origin on every cross-site POST)."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host", "")


class ConsoleApp:
    """The console's ASGI app (mounted by the admin dispatcher under /console)."""

    def __init__(
        self, store: SqlStore, governance: GovernanceAdmin, admin: ASGIApp, admin_token: str
    ) -> None:
        self.store = store
        self.governance = governance
        self.admin = admin
        self.admin_token = admin_token
        self.sessions = Sessions(admin_token)
        self.files = _static_files()
        self.app = self._build()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] != b"server"]
                headers.extend(SECURITY_HEADERS)
                if not any(name == b"cache-control" for name, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, secured)

    # ------------------------------------------------------------------ pages and sessions

    async def page(self, request: Request) -> Response:
        body, kind = self.files["index.html"]
        return Response(body, media_type=kind)

    async def static(self, request: Request) -> Response:
        found = self.files.get(request.path_params["name"])
        if found is None:
            raise NotFound("no such console file")
        return Response(found[0], media_type=found[1], headers={"cache-control": "no-cache"})

    async def login(self, request: Request) -> Response:
        if not _same_origin(request):
            return error_response(403, "forbidden", "cross-site login refused")
        body = await read_body(request)
        token = body.get("token")
        if not isinstance(token, str) or not self.sessions.token_matches(token):
            log.warning("console login refused (wrong admin token)")
            return error_response(401, "unauthorized", "wrong admin token")
        value, expires = self.sessions.issue()
        session_id = self.sessions.check(value)
        assert session_id is not None
        response = json_response({"csrf": self.sessions.csrf_token(session_id), "expires_at": expires})
        response.headers["set-cookie"] = self.sessions.cookie_header(
            value, secure=request.url.scheme == "https", max_age=self.sessions.lifetime_s
        )
        return response

    async def logout(self, request: Request) -> Response:
        self.sessions.revoke(request.cookies.get(COOKIE, ""))
        response = Response(status_code=204)
        response.headers["set-cookie"] = self.sessions.cookie_header(
            "", secure=request.url.scheme == "https", max_age=0
        )
        return response

    async def session(self, request: Request) -> Response:
        return json_response({"csrf": self.sessions.csrf_token(request.state.session)})

    # ------------------------------------------------------------------ reads over rollups and the ledger

    async def overview(self, request: Request) -> Response:
        q = request.query_params
        return json_response(await data.overview(self.store, q.get("hours"), q.get("organisation")))

    async def usage(self, request: Request) -> Response:
        return json_response(await data.explorer(self.store, request.query_params))

    async def usage_csv(self, request: Request) -> Response:
        params = request.query_params
        data._explorer_filters(params)  # a bad parameter is a 400 before the stream starts
        name = f"odock-usage-by-{params.get('group_by') or 'model'}.csv"
        return StreamingResponse(
            data.explorer_csv(self.store, params),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{name}"'},
        )

    async def keys(self, request: Request) -> Response:
        return json_response(await data.keys_page(self.store, request.query_params))

    async def records(self, request: Request) -> Response:
        return json_response(await data.records(self.store, request.query_params))

    async def record(self, request: Request) -> Response:
        found = await data.record_detail(self.store, request.path_params["id"])
        if found is None:
            raise NotFound("no such usage record")
        return json_response(found)

    async def burn(self, request: Request) -> Response:
        budget = await self.governance.get_budget(request.path_params["id"])
        windows = await self.governance.windows(budget.id)
        return json_response(await data.budget_burn(self.store, budget, windows))

    # ------------------------------------------------------------------ the admin API under the session

    async def proxy(self, request: Request) -> Response:
        """Run the admin API's route with the admin token in place of the session (its status and body as is)."""
        path = "/admin/" + request.path_params["path"]
        headers = [
            (k, v) for k, v in request.scope["headers"] if k not in (b"cookie", b"authorization", b"host")
        ]
        headers += [(b"authorization", b"Bearer " + self.admin_token.encode()), (b"host", b"console")]
        scope = {**request.scope, "path": path, "raw_path": path.encode(), "headers": headers}
        scope.pop("router", None)
        scope.pop("endpoint", None)
        scope.pop("path_params", None)
        body = await request.body()
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.admin(scope, receive, capture)
        raw_headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
        response = Response(b"".join(chunks), status_code=start.get("status", 500))
        response.raw_headers = [*raw_headers, (b"content-length", str(len(response.body)).encode())]
        return response

    # ------------------------------------------------------------------ routing and the session guard

    def _guarded(self, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            session_id = self.sessions.check(request.cookies.get(COOKIE))
            if session_id is None:
                return error_response(401, "unauthorized", "log in to the console first")
            if request.method not in _SAFE_METHODS and (
                not _same_origin(request)
                or not self.sessions.csrf_matches(session_id, request.headers.get(CSRF_HEADER))
            ):
                return error_response(403, "csrf_failed", "missing or wrong X-CSRF-Token for this session")
            request.state.session = session_id
            return await handler(request)

        return endpoint

    def _build(self) -> Starlette:
        g = self._guarded
        any_method = ["GET", "POST", "PATCH", "PUT", "DELETE"]
        routes = [
            Route("/console", self.page, methods=["GET"]),
            Route("/console/", self.page, methods=["GET"]),
            Route("/console/static/{name}", self.static, methods=["GET"]),
            Route("/console/login", self.login, methods=["POST"]),
            Route("/console/logout", g(self.logout), methods=["POST"]),
            Route("/console/api/session", g(self.session), methods=["GET"]),
            Route("/console/api/overview", g(self.overview), methods=["GET"]),
            Route("/console/api/usage", g(self.usage), methods=["GET"]),
            Route("/console/api/usage.csv", g(self.usage_csv), methods=["GET"]),
            Route("/console/api/keys", g(self.keys), methods=["GET"]),
            Route("/console/api/records", g(self.records), methods=["GET"]),
            Route("/console/api/records/{id}", g(self.record), methods=["GET"]),
            Route("/console/api/budgets/{id}/burn", g(self.burn), methods=["GET"]),
            Route("/console/api/admin/{path:path}", g(self.proxy), methods=any_method),
        ]

        async def gateway_error(_request: Request, exc: Exception) -> Response:
            assert isinstance(exc, GatewayError)
            return error_response(exc.status, exc.code, exc.message)

        async def http_error(_request: Request, exc: Exception) -> Response:
            assert isinstance(exc, HTTPException)
            if exc.status_code == 405:
                return error_response(405, "method_not_allowed", "method not allowed on this console route")
            return error_response(exc.status_code, "not_found", "no such console route")

        return Starlette(
            routes=routes, exception_handlers={GatewayError: gateway_error, HTTPException: http_error}
        )


class AdminSide:
    """The admin side's one ASGI app: /console… to the console, the rest to the admin API (`admin`). Without a
    console (it has its own port), /console… answers 404 before the admin API's token check could say 401."""

    def __init__(self, admin: ASGIApp, console: ASGIApp | None) -> None:
        self.admin, self.console = admin, console

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == "/console" or path.startswith("/console/")):
            if self.console is None:
                response = error_response(404, "not_found", "the console is not served on this port")
                await response(scope, receive, send)
                return
            await self.console(scope, receive, send)
        else:
            await self.admin(scope, receive, send)


def with_console(admin: ASGIApp, console: ASGIApp | None) -> ASGIApp:
    """One ASGI app for the admin side: /console… to the console (when on), the rest to the admin API."""
    return admin if console is None else AdminSide(admin, console)


def without_console(admin: ASGIApp) -> ASGIApp:
    """The main port's admin side when the console has its own port: /console… answers 404."""
    return AdminSide(admin, None)
