"""MCP commands: `odock mcp-servers create|list|update|delete` and `odock mcp-grants add|remove|list`.

Secrets never go on the command line: upstream auth secrets are read from the environment variable named by
`--auth-secret-env`, and stdio environment values may be `${VAR}` references resolved when a process starts.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from odock.commands.catalogue import _group, _json_arg, _leaf, _org_option, _put
from odock.errors import BadRequest
from odock.mcp.records import AUTH_TYPES, TRANSPORTS
from odock.mcp.service import McpCatalogueService
from odock.state.service import CatalogueService

SERVER_COLUMNS = (
    "id",
    "organisation_id",
    "slug",
    "transport",
    "endpoint_url",
    "stdio_command",
    "auth_type",
    "enabled",
)


def _mcp(s: CatalogueService) -> McpCatalogueService:
    return McpCatalogueService(s.store)


def _auth(a: argparse.Namespace) -> dict[str, Any] | None:
    kind = a.auth_type
    if kind is None:
        return None
    secret = None
    if a.auth_secret_env:
        secret = os.environ.get(a.auth_secret_env)
        if not secret:
            raise BadRequest(
                f"--auth-secret-env: environment variable {a.auth_secret_env} is not set or empty"
            )
    if kind == "NONE":
        return {}
    if kind == "BEARER":
        return {"type": kind, "token": secret}
    if kind == "HEADER":
        return {"type": kind, "name": a.auth_header_name, "value": secret}
    if kind == "BASIC":
        return {"type": kind, "username": a.auth_username, "password": secret}
    return _put(
        {
            "type": kind,
            "token_url": a.oauth_token_url,
            "client_id": a.oauth_client_id,
            "client_secret": secret,
        },
        scope=a.oauth_scope,
        audience=a.oauth_audience,
    )


def _env(pairs: list[str] | None) -> dict[str, str] | None:
    if pairs is None:
        return None
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise BadRequest("--env must be NAME=VALUE (use ${VAR} for secrets)")
        env[name] = value
    return env


def _fields(a: argparse.Namespace) -> dict[str, Any]:
    fields = _put(
        {},
        slug=a.slug,
        transport=a.transport,
        endpoint_url=a.url,
        stdio_command=a.command,
        stdio_args=a.arg,
        stdio_env=_env(a.env),
        description=a.description,
        team=a.team,
        api_key=a.key,
        allowed_tools=a.allowed_tool,
        blocked_tools=a.blocked_tool,
        pricing=_json_arg(a.pricing, "--pricing"),
        policies=_json_arg(a.policies, "--policies"),
        config=_json_arg(a.config, "--config"),
    )
    auth = _auth(a)
    if auth is not None:
        fields["auth"] = auth or None
    if a.enabled is not None:
        fields["enabled"] = a.enabled
    return fields


async def _create(s: CatalogueService, a: argparse.Namespace) -> Any:
    return await _mcp(s).create_mcp_server({"organisation": a.org, "name": a.name, **_fields(a)})


async def _list(s: CatalogueService, a: argparse.Namespace) -> Any:
    return await _mcp(s).list_mcp_servers(a.org)


async def _update(s: CatalogueService, a: argparse.Namespace) -> Any:
    changes = _fields(a)
    if a.name_new:
        changes["name"] = a.name_new
    return await _mcp(s).update_mcp_server(a.ref, changes, a.org)


async def _delete(s: CatalogueService, a: argparse.Namespace) -> Any:
    await _mcp(s).delete_mcp_server(a.ref, a.org)
    return {"deleted": a.ref}


async def _grant_add(s: CatalogueService, a: argparse.Namespace) -> Any:
    return await _mcp(s).add_mcp_grant(a.key, a.server, a.org)


async def _grant_remove(s: CatalogueService, a: argparse.Namespace) -> Any:
    return await _mcp(s).remove_mcp_grant(a.key, a.server, a.org)


async def _grant_list(s: CatalogueService, a: argparse.Namespace) -> Any:
    return await _mcp(s).list_mcp_grants(a.key, a.org)


def _server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slug", help="the /v1/mcp/{slug} path segment (default: the name)")
    p.add_argument("--transport", choices=TRANSPORTS)
    p.add_argument("--url", help="endpoint URL (STREAMABLE_HTTP, SSE)")
    p.add_argument("--command", help="command to run (STDIO)")
    p.add_argument("--arg", action="append", help="a command argument (repeat)")
    p.add_argument(
        "--env", action="append", help="NAME=VALUE for the stdio process; ${VAR} for secrets (repeat)"
    )
    p.add_argument("--description")
    p.add_argument("--team", help="team scope (id or name)")
    p.add_argument("--key", help="API key scope (id or name)")
    p.add_argument("--auth-type", choices=AUTH_TYPES)
    p.add_argument("--auth-secret-env", help="environment variable holding the token, header value or secret")
    p.add_argument("--auth-header-name", help="HEADER auth: the header's name")
    p.add_argument("--auth-username", help="BASIC auth: the user name")
    p.add_argument("--oauth-token-url")
    p.add_argument("--oauth-client-id")
    p.add_argument("--oauth-scope")
    p.add_argument("--oauth-audience")
    p.add_argument("--allowed-tool", action="append", help="allowed tool name or glob (repeat)")
    p.add_argument(
        "--blocked-tool", action="append", help="blocked tool name or glob; prompt:NAME, resource:URI"
    )
    p.add_argument("--pricing", help='JSON, e.g. {"callNanosUsd": 2000, "toolNanosUsd": {"search": 5000}}')
    p.add_argument(
        "--policies",
        help="JSON policy envelope (rate limits under the MCP scope; safety: SafetySec on its calls)",
    )
    p.add_argument("--config", help='JSON, e.g. {"timeout_ms": 30000, "max_processes": 4}')
    p.add_argument("--enabled", action=argparse.BooleanOptionalAction, default=None)


def add_parsers(subparsers: Any) -> None:
    """Add the MCP commands to the `odock` sub-command parser."""
    servers = _group(subparsers, "mcp-servers", "manage MCP servers")
    p = _leaf(servers, "create", "create an MCP server", _create, SERVER_COLUMNS)
    p.add_argument("name")
    _org_option(p, required=True)
    _server_options(p)
    _org_option(_leaf(servers, "list", "list MCP servers", _list, SERVER_COLUMNS))
    p = _leaf(servers, "update", "change an MCP server", _update, SERVER_COLUMNS)
    p.add_argument("ref", help="server id (or slug with --org)")
    p.add_argument("--name", dest="name_new")
    _org_option(p)
    _server_options(p)
    p = _leaf(servers, "delete", "delete an MCP server", _delete, ())
    p.add_argument("ref", help="server id (or slug with --org)")
    _org_option(p)

    grants = _group(subparsers, "mcp-grants", "manage key → MCP server grants (deny by default)")
    for name, action, text in (
        ("add", _grant_add, "grant a key access to an MCP server"),
        ("remove", _grant_remove, "withdraw a key's access to an MCP server"),
    ):
        p = _leaf(grants, name, text, action, SERVER_COLUMNS)
        p.add_argument("key", help="key id (or name with --org)")
        p.add_argument("server", help="server slug or id")
        _org_option(p)
    p = _leaf(grants, "list", "list the MCP servers a key may call", _grant_list, SERVER_COLUMNS)
    p.add_argument("key", help="key id (or name with --org)")
    _org_option(p)
