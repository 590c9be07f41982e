"""MCP server inputs (admin API bodies, YAML entries, CLI flags), checked once before anything is written.

Codes of reference §15.3: `invalid_transport`, `mcp_missing_endpoint`, `mcp_missing_stdio_command` (400); any
other bad field is `invalid_request` naming it.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, ClassVar

from msgspec import UNSET, Meta, UnsetType

from odock.errors import BadRequest
from odock.state.validation import Input, Name, Object, Ref, Url

SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")
Slug = Annotated[str, Meta(min_length=1, max_length=200)]
Tool = Annotated[str, Meta(min_length=1, max_length=500)]
Arg = Annotated[str, Meta(max_length=4000)]

# pricing keys (reference §11.6: nanos USD per call, per input byte, per output byte) plus per-tool prices and
# the output bytes a reservation assumes before the answer is known
_PRICES = ("callNanosUsd", "inputByteNanosUsd", "outputByteNanosUsd")
_PRICING_KEYS = (*_PRICES, "toolNanosUsd", "reserveOutputBytes")
DEFAULT_RESERVE_OUTPUT_BYTES = 65_536

# auth config fields per type (OAuth2 also accepts the reference's camelCase names)
_AUTH_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "NONE": ((), ()),
    "HEADER": (("name", "value"), ()),
    "BEARER": (("token",), ()),
    "BASIC": (("username", "password"), ()),
    "OAUTH2": (("token_url", "client_id", "client_secret"), ("scope", "audience")),
}
_CAMEL = {"tokenUrl": "token_url", "clientId": "client_id", "clientSecret": "client_secret"}

# config keys the gateway reads (timeouts, stdio pool, tool pinning; `plugins`: run the plugins on its calls)
_CONFIG_NUMBERS = (
    "timeout_ms",
    "connect_timeout_ms",
    "max_processes",
    "init_timeout_ms",
    "idle_ttl_s",
    "max_lifetime_s",
)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise BadRequest(f"{where} must be a non-negative number")
    return float(value)


def check_pricing(pricing: Object) -> Object:
    """A pricing object of §11.6 keys; per-tool prices as `toolNanosUsd: {tool: nanos}`."""
    for key, value in pricing.items():
        if key not in _PRICING_KEYS:
            raise BadRequest(f"mcp server: pricing.{key} is unknown; allowed: {', '.join(_PRICING_KEYS)}")
        if key == "toolNanosUsd":
            if not isinstance(value, dict):
                raise BadRequest("mcp server: pricing.toolNanosUsd must map tool names to nanos USD")
            for tool, price in value.items():
                _number(price, f"mcp server: pricing.toolNanosUsd.{tool}")
        else:
            _number(value, f"mcp server: pricing.{key}")
    return pricing


def check_auth(auth: Object | None) -> tuple[str, dict[str, Any] | None]:
    """(auth type, the config to encrypt) from `{"type": ..., ...}`; 400 naming what is missing or unknown."""
    if not auth:
        return "NONE", None
    kind = auth.get("type", "NONE")
    if kind not in _AUTH_FIELDS:
        raise BadRequest(f"mcp server: auth.type must be one of {', '.join(_AUTH_FIELDS)}")
    required, optional = _AUTH_FIELDS[kind]
    config = {_CAMEL.get(k, k): v for k, v in auth.items() if k != "type"}
    unknown = set(config) - set(required) - set(optional)
    if unknown:
        raise BadRequest(f"mcp server: auth.{sorted(unknown)[0]} is not a field of {kind} auth")
    for name in required:
        if not isinstance(config.get(name), str) or not config[name]:
            raise BadRequest(f"mcp server: {kind} auth needs auth.{name} (a non-empty string)")
    if kind == "OAUTH2" and not str(config["token_url"]).startswith(("http://", "https://")):
        raise BadRequest("mcp server: auth.token_url must start with http:// or https://")
    return kind, (config or None)


def check_config(config: Object) -> Object:
    for name in _CONFIG_NUMBERS:
        if name in config:
            _number(config[name], f"mcp server: config.{name}")
    if "pin_tools" in config and config["pin_tools"] not in ("off", "alert", "block", False, True):
        raise BadRequest("mcp server: config.pin_tools must be off, alert or block")
    if "plugins" in config and not isinstance(config["plugins"], bool):
        raise BadRequest("mcp server: config.plugins must be true or false")
    return config


def check_semantic_filter(value: Object) -> Object:
    keywords = value.get("blockedKeywords", [])
    if set(value) - {"blockedKeywords"} or not isinstance(keywords, list):
        raise BadRequest('mcp server: semantic_filter must be {"blockedKeywords": [...]}')
    if not all(isinstance(k, str) and k for k in keywords):
        raise BadRequest("mcp server: semantic_filter.blockedKeywords must be non-empty strings")
    return value


def check_env(env: Object) -> dict[str, str]:
    if not all(isinstance(k, str) and k and isinstance(v, str) for k, v in env.items()):
        raise BadRequest("mcp server: stdio_env must map variable names to strings")
    return env


def check_slug(slug: str) -> str:
    if not SLUG.match(slug):
        raise BadRequest("mcp server: slug may hold letters, digits, '.', '_' and '-' (no '/'), at most 200")
    return slug


def check_transport(transport: Any) -> str:
    if transport not in ("STREAMABLE_HTTP", "SSE", "STDIO"):
        raise BadRequest(
            f"mcp server: transport must be STREAMABLE_HTTP, SSE or STDIO (got {transport!r})",
            "invalid_transport",
        )
    return str(transport)


def check_endpoint(transport: str, endpoint_url: str | None, stdio_command: str | None) -> None:
    """What each transport needs (reference §15.3)."""
    if transport in ("STREAMABLE_HTTP", "SSE"):
        if not endpoint_url:
            raise BadRequest(f"mcp server: a {transport} server needs endpoint_url", "mcp_missing_endpoint")
        if not endpoint_url.startswith(("http://", "https://")):
            raise BadRequest(
                "mcp server: endpoint_url must start with http:// or https://", "mcp_missing_endpoint"
            )
    elif not stdio_command:
        raise BadRequest("mcp server: a STDIO server needs stdio_command", "mcp_missing_stdio_command")


class NewMcpServer(Input):
    organisation: Ref
    name: Name
    slug: Slug | None = None  # default: the name
    transport: Any = "STREAMABLE_HTTP"
    team: Ref | None = None
    api_key: Ref | None = None
    description: Annotated[str, Meta(max_length=2000)] | None = None
    endpoint_url: Url | None = None
    stdio_command: Annotated[str, Meta(max_length=2000)] | None = None
    stdio_args: list[Arg] | None = None
    stdio_env: Object | None = None
    auth: Object | None = None
    enabled: bool = True
    allowed_tools: list[Tool] | None = None
    blocked_tools: list[Tool] | None = None
    semantic_filter: Object | None = None
    pricing: Object | None = None
    policies: Object | None = None
    config: Object | None = None
    blank_is_none: ClassVar[frozenset[str]] = frozenset(
        {"team", "api_key", "endpoint_url", "stdio_command", "description", "slug"}
    )


class McpServerChanges(Input):
    name: Name | UnsetType = UNSET
    slug: Slug | UnsetType = UNSET
    transport: Any = UNSET
    team: Ref | UnsetType | None = UNSET
    api_key: Ref | UnsetType | None = UNSET
    description: Annotated[str, Meta(max_length=2000)] | UnsetType | None = UNSET
    endpoint_url: Url | UnsetType | None = UNSET
    stdio_command: Annotated[str, Meta(max_length=2000)] | UnsetType | None = UNSET
    stdio_args: list[Arg] | UnsetType | None = UNSET
    stdio_env: Object | UnsetType | None = UNSET
    auth: Object | UnsetType | None = UNSET
    enabled: bool | UnsetType = UNSET
    allowed_tools: list[Tool] | UnsetType | None = UNSET
    blocked_tools: list[Tool] | UnsetType | None = UNSET
    semantic_filter: Object | UnsetType | None = UNSET
    pricing: Object | UnsetType | None = UNSET
    policies: Object | UnsetType | None = UNSET
    config: Object | UnsetType | None = UNSET
    blank_is_none: ClassVar[frozenset[str]] = frozenset(
        {"team", "api_key", "endpoint_url", "stdio_command", "description"}
    )


class NewMcpGrant(Input):
    """A key's grant of one MCP server (by slug or id; `server` is accepted as a shorter name)."""

    mcp_server: Ref | None = None
    server: Ref | None = None
