"""Admin routes of the MCP gateway: /admin/mcp-servers CRUD and /admin/keys/{ref}/mcp-grants (deny by default:
a key reaches an MCP server only through a grant made here, never through a model grant), and /admin/mcp/usage (the
MCP usage records, filtered, in keyset pages)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from odock.admin.app import _crud_routes, _org, json_response, read_body
from odock.errors import BadRequest
from odock.mcp.service import McpCatalogueService
from odock.mcp.usage import mcp_usage_page
from odock.mcp.validation import NewMcpGrant
from odock.state.validation import decode


def mcp_admin_routes(service: McpCatalogueService) -> list[Route]:
    s = service

    async def grants(request: Request) -> Response:
        ref = request.path_params["ref"]
        if request.method == "POST":
            grant = decode(NewMcpGrant, await read_body(request), "mcp grants")
            server = grant.mcp_server or grant.server
            if not server:
                raise BadRequest('mcp grants: give the server as {"mcp_server": "<slug or id>"}')
            return json_response({"data": await s.add_mcp_grant(ref, server, _org(request))}, 201)
        return json_response({"data": await s.list_mcp_grants(ref, _org(request))})

    async def grant_item(request: Request) -> Response:
        data = await s.remove_mcp_grant(
            request.path_params["ref"], request.path_params["server"], _org(request)
        )
        return json_response({"data": data})

    async def usage(request: Request) -> Response:
        return json_response(await mcp_usage_page(s.store, request.query_params))

    return [
        *_crud_routes(
            "/admin/mcp-servers",
            s.create_mcp_server,
            s.list_mcp_servers,
            s.get_mcp_server,
            s.update_mcp_server,
            s.delete_mcp_server,
        ),
        Route("/admin/keys/{ref}/mcp-grants", grants, methods=["GET", "POST"]),
        Route("/admin/keys/{ref}/mcp-grants/{server}", grant_item, methods=["DELETE"]),
        Route("/admin/mcp/usage", usage, methods=["GET"]),
    ]
