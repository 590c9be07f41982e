"""The MCP server record as the gateway's hot path sees it (secrets decrypted by the directory, never logged)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

Transport = Literal["STREAMABLE_HTTP", "SSE", "STDIO"]
AuthType = Literal["NONE", "HEADER", "BEARER", "BASIC", "OAUTH2"]
TRANSPORTS: tuple[str, ...] = ("STREAMABLE_HTTP", "SSE", "STDIO")
AUTH_TYPES: tuple[str, ...] = ("NONE", "HEADER", "BEARER", "BASIC", "OAUTH2")


class McpServer(msgspec.Struct, kw_only=True):
    id: str
    organisation_id: str
    name: str
    slug: str
    transport: Transport
    team_id: str | None = None
    api_key_id: str | None = None
    description: str = ""
    endpoint_url: str | None = None
    stdio_command: str | None = None
    stdio_args: list[str] = []
    # decrypted by the store; `${VAR}` values are resolved from the gateway's environment at spawn time
    stdio_env: dict[str, str] = {}
    auth_type: AuthType = "NONE"
    auth: dict[str, Any] = {}  # decrypted upstream auth config; never logged, never in an admin answer
    enabled: bool = True
    allowed_tools: list[str] = []
    blocked_tools: list[str] = []
    semantic_filter: dict[str, Any] = {}
    pricing: dict[str, Any] = {}
    policies: dict[str, Any] = {}
    config: dict[str, Any] = {}


class McpServerInfo(msgspec.Struct, kw_only=True):
    """What the admin API and the CLI show of a server: no secret, only whether one is set."""

    id: str
    organisation_id: str
    name: str
    slug: str
    transport: str
    team_id: str | None = None
    api_key_id: str | None = None
    description: str = ""
    endpoint_url: str | None = None
    stdio_command: str | None = None
    stdio_args: list[str] = []
    stdio_env_keys: list[str] = []
    auth_type: str = "NONE"
    has_auth: bool = False
    enabled: bool = True
    allowed_tools: list[str] = []
    blocked_tools: list[str] = []
    semantic_filter: dict[str, Any] = {}
    pricing: dict[str, Any] = {}
    policies: dict[str, Any] = {}
    config: dict[str, Any] = {}
