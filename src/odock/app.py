"""Application assembly: the route table of the API page and the ASGI app uvicorn serves."""

from __future__ import annotations

from typing import TYPE_CHECKING

from odock.edge.app import Edge, Endpoint, Health, Metrics, Readiness
from odock.edge.app import Gateway as EdgeGateway
from odock.edge.endpoints.anthropic import messages_endpoint
from odock.edge.endpoints.chat import OpenAIChatEndpoint, UnifiedChatEndpoint
from odock.edge.endpoints.gemini import PREFIX as GEMINI_PREFIX
from odock.edge.endpoints.gemini import GeminiEndpoint
from odock.edge.endpoints.keys import PATH as KEY_VALIDATE_PATH
from odock.edge.endpoints.keys import KeyValidateEndpoint
from odock.edge.endpoints.mcp import McpEndpoint
from odock.edge.endpoints.openai_media import openai_media_routes
from odock.edge.endpoints.responses import responses_endpoint
from odock.edge.endpoints.vllm import vllm_routes
from odock.gateway import Gateway
from odock.settings import Settings, load_settings
from odock.state.service import CatalogueService

if TYPE_CHECKING:
    from odock.edge.http import ASGIApp


def routes() -> tuple[dict[str, Endpoint], list[tuple[str, Endpoint]]]:
    """Exact paths and path prefixes of every gateway route."""
    exact: dict[str, Endpoint] = {
        "/v1/health": Health(),
        "/v1/healthz": Readiness(),
        "/metrics": Metrics(),
        "/v1/chat/completions": OpenAIChatEndpoint(),
        "/v1/llm/chat": UnifiedChatEndpoint(),
        "/v1/responses": responses_endpoint(),
        "/v1/messages": messages_endpoint(),
        KEY_VALIDATE_PATH: KeyValidateEndpoint(),
    }
    exact.update(openai_media_routes())
    exact.update(vllm_routes())
    mcp = McpEndpoint()
    exact["/v1/mcp"] = mcp  # no server named: 400 invalid_mcp_ref
    prefixes: list[tuple[str, Endpoint]] = [(GEMINI_PREFIX, GeminiEndpoint()), ("/v1/mcp/", mcp)]
    return exact, prefixes


def admin_app_for(gw: Gateway) -> ASGIApp:
    """The admin API (Starlette) and its web console over the gateway's own store, so their changes reach this
    process at once."""
    from odock.admin.app import create_admin_app
    from odock.admin.cache import cache_routes
    from odock.admin.governance import admin_for, admin_routes
    from odock.admin.mcp import mcp_admin_routes
    from odock.mcp.service import McpCatalogueService

    # budget and quota changes reload this process's definitions at once (others poll)
    on_change = gw.governance.refresh_definitions if gw.governance is not None else None
    governance = admin_for(gw.store, on_change=on_change)
    service = CatalogueService(gw.store)
    extra = [
        *admin_routes(governance),
        *mcp_admin_routes(McpCatalogueService(gw.store)),
        *cache_routes(service, gw.cache),
    ]
    admin = create_admin_app(service, gw.settings.admin_token, extra)
    if not gw.settings.admin_token:
        return admin  # the console is on with the admin API only (/console answers 404 admin_disabled)
    from odock.console.app import ConsoleApp, with_console, without_console

    side = with_console(admin, ConsoleApp(gw.store, governance, admin, gw.settings.admin_token))
    if not gw.settings.console_port:
        return side
    # the console (and the admin API) on their own listener; the main port keeps /admin for the CLI and scripts
    from odock.console.listener import ConsoleListener

    listener = ConsoleListener(side, gw.settings.http_host, gw.settings.console_port)
    gw.services.register("console listener", listener, close=listener.stop)
    listener.start()
    return without_console(admin)


def create_app(settings: Settings | None = None, gateway: Gateway | None = None) -> Edge:
    """Build the ASGI app; the gateway's resources open in the lifespan startup."""
    settings = settings or load_settings()

    async def open_gateway() -> Gateway:
        return gateway if gateway is not None else await Gateway.open(settings)

    exact, prefixes = routes()

    def open_admin(gw: EdgeGateway) -> ASGIApp:
        assert isinstance(gw, Gateway)
        return admin_app_for(gw)

    return Edge(open_gateway, exact, prefixes, admin_factory=open_admin)
