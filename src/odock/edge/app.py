"""The edge: a raw ASGI app with a route table, request ids, one error renderer, health and metrics.

Admin routes (`/admin/...`, and the console's `/console...`) go to the Starlette admin app mounted beside the hot
path.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from odock import metrics
from odock.dialects import openai_chat
from odock.edge.endpoint import LLMEndpoint
from odock.edge.http import ASGIApp, Receive, Request, Scope, Send, render_error
from odock.errors import ClientDisconnected, GatewayError, MethodNotAllowed, NotFound

if TYPE_CHECKING:
    from odock.pipeline.runner import Pipeline
    from odock.services import Services
    from odock.settings import Settings

log = logging.getLogger("odock.edge")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class Gateway(Protocol):
    """What the edge needs of the gateway its lifespan opens (`odock.gateway.Gateway` is one)."""

    settings: Settings
    services: Services
    pipelines: dict[str, Pipeline]

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Handler(Protocol):
    """A route the edge answers without a pipeline (health, readiness, metrics)."""

    name: str
    methods: tuple[str, ...]

    def error_body(self, err: GatewayError) -> bytes: ...

    async def handle(self, gw: Gateway, req: Request) -> None: ...


# a route of the table: an LLM route runs through the pipeline of its `kind`; a handler answers by itself
Endpoint = LLMEndpoint | Handler


class Health:
    name = "health"
    methods: tuple[str, ...] = ("GET", "HEAD")

    def error_body(self, err: GatewayError) -> bytes:
        return openai_chat.error_body(err)

    async def handle(self, gw: Gateway, req: Request) -> None:
        await req.respond(200, b'{"status":"ok"}')


class Readiness(Health):
    name = "healthz"

    async def handle(self, gw: Gateway, req: Request) -> None:
        # every registered resource with a ping (store, Redis in cluster mode), pinged concurrently
        checks = await gw.services.ready()
        ok = all(checks.values())
        body = {
            "status": "ok" if ok else "unavailable",
            "checks": {name: "ok" if up else "unavailable" for name, up in checks.items()},
        }
        await req.respond(200 if ok else 503, msgspec.json.encode(body))


class Metrics(Health):
    name = "metrics"
    methods: tuple[str, ...] = ("GET",)

    async def handle(self, gw: Gateway, req: Request) -> None:
        if not gw.settings.prometheus_enabled:
            raise NotFound("metrics are disabled", "not_found")
        await req.respond(200, generate_latest(metrics.REGISTRY), CONTENT_TYPE_LATEST.encode())


class Edge:
    """The ASGI application: lifespan, routing, request id, and the last-resort error renderer."""

    def __init__(
        self,
        gateway_factory: Callable[[], Awaitable[Gateway]],
        routes: dict[str, Endpoint],
        prefixes: list[tuple[str, Endpoint]],
        admin: ASGIApp | None = None,
        admin_factory: Callable[[Gateway], ASGIApp | None] | None = None,
    ) -> None:
        self.gateway_factory = gateway_factory
        self.gw: Gateway | None = None
        self.routes = routes
        self.prefixes = prefixes
        self.admin = admin
        self.admin_factory = admin_factory

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self.gw is None:
                        self.gw = await self.gateway_factory()
                    await self.gw.start()
                    if self.admin is None and self.admin_factory is not None:
                        self.admin = self.admin_factory(self.gw)
                except BaseException as exc:
                    log.exception("startup failed")
                    if self.gw is not None:
                        # what opened before the failure (store, Redis, pollers) is closed, not left to the OS
                        with contextlib.suppress(Exception):
                            await self.gw.stop()
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.gw is not None:
                    await self.gw.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def match(self, path: str) -> Endpoint | None:
        endpoint = self.routes.get(path)
        if endpoint is not None:
            return endpoint
        for prefix, candidate in self.prefixes:
            if path.startswith(prefix):
                return candidate
        return None

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if path.startswith(("/admin", "/console")) and self.admin is not None:
            await self.admin(scope, receive, send)
            return
        # ASGI header names arrive lowercased (uvicorn's parser lowers them), so only decoding is left to do
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = headers.get("x-request-id")
        if not request_id or not _REQUEST_ID.match(request_id):
            # unique, not secret: no system call; 32 hex digits (bytes.hex: a fraction of a format spec's cost)
            request_id = random.getrandbits(128).to_bytes(16, "big").hex()
        req = Request(scope, receive, send, request_id, headers)
        endpoint = self.match(path)
        label = endpoint.name if endpoint is not None else "unmatched"
        metrics.REQUESTS_IN_FLIGHT.value += 1
        started = time.perf_counter()
        try:
            if endpoint is None:
                raise NotFound(f"no route for {scope['method']} {path}", "not_found")
            if scope["method"] not in endpoint.methods:
                req.response_headers.append((b"allow", ", ".join(endpoint.methods).encode()))
                raise MethodNotAllowed(f"{scope['method']} is not allowed on {path}", "method_not_allowed")
            assert self.gw is not None, "lifespan startup did not run"
            if isinstance(endpoint, LLMEndpoint):
                await self.gw.pipelines[endpoint.kind].run(req, endpoint)
            else:
                await endpoint.handle(self.gw, req)
        except GatewayError as err:
            if not req.started:
                body = endpoint.error_body(err) if endpoint is not None else openai_chat.error_body(err)
                await req.respond(err.status, body, headers=render_error(err))
        except ClientDisconnected:
            pass
        except Exception:
            log.exception("unhandled error", extra={"request_id": request_id})
            if not req.started:
                # a bug, still answered in the route's own error shape so that its SDK raises its 500 class
                internal = GatewayError("internal gateway error", "internal_error")
                body = (
                    endpoint.error_body(internal)
                    if endpoint is not None
                    else openai_chat.error_body(internal)
                )
                await req.respond(500, body)
            elif not req.finished:
                await req.end()
        finally:
            metrics.REQUESTS_IN_FLIGHT.value -= 1
            tally = metrics.TALLY
            tally.observe(metrics.REQUEST_DURATION, time.perf_counter() - started, (label,))
            tally.inc(metrics.REQUESTS, (label, metrics.status_class(req.status or 500)))
