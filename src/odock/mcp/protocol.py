"""JSON-RPC as the MCP gateway needs it: what a POST asks for (every batch element), the 2026-07-28 routing
headers checked against the body, tool rules, `tools/list` filtering (JSON and SSE bodies), and error bodies.

Pure functions, no I/O: the stages and the endpoint call them.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

from odock.errors import BadRequest, Forbidden, GatewayError
from odock.mcp.records import McpServer

# methods whose params name what they act on (the `Mcp-Name` header mirrors it, reference 2026-07-28)
NAME_PARAMS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
# which rule list a method's name is checked against
RULE_KIND = {"tools/call": "tool", "prompts/get": "prompt", "resources/read": "resource"}

HEADER_MISMATCH = -32020  # mcp_types.jsonrpc.HEADER_MISMATCH
INVALID_REQUEST = -32600
INTERNAL_ERROR = -32603

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


@dataclass(slots=True)
class Message:
    """One JSON-RPC element of a POST body."""

    method: str | None  # None: a response or error the client sends back (to a server request)
    id: Any
    name: str | None  # tools/call and prompts/get `params.name`, resources/read `params.uri`
    params: dict[str, Any]
    item: dict[str, Any]  # the element as decoded (`params` is its own): re-encoded when a screen rewrites it

    @property
    def is_request(self) -> bool:
        return self.method is not None and self.id is not None


def parse_body(body: bytes) -> tuple[list[Message], bool]:
    """The elements of a JSON-RPC POST body, and whether it was a batch; 400 invalid_request_body otherwise."""
    try:
        parsed = _decoder.decode(body)
    except msgspec.DecodeError:
        raise BadRequest("MCP request body is not valid JSON", "invalid_request_body") from None
    batch = isinstance(parsed, list)
    items = parsed if batch else [parsed]
    if not items:
        raise BadRequest("MCP request body is an empty batch", "invalid_request_body")
    messages: list[Message] = []
    for item in items:
        if not isinstance(item, dict) or item.get("jsonrpc") != "2.0":
            raise BadRequest("MCP request body must hold JSON-RPC 2.0 messages", "invalid_request_body")
        method = item.get("method")
        if method is not None and not isinstance(method, str):
            raise BadRequest("JSON-RPC method must be a string", "invalid_request_body")
        params = item.get("params")
        if params is not None and not isinstance(params, dict):
            raise BadRequest("JSON-RPC params must be an object", "invalid_request_body")
        params = params or {}
        name = None
        if method in NAME_PARAMS:
            value = params.get(NAME_PARAMS[method])
            if not isinstance(value, str):
                raise BadRequest(
                    f"{method} needs params.{NAME_PARAMS[method]} (a string)", "invalid_request_body"
                )
            name = value
        messages.append(Message(method, item.get("id"), name, params, item))
    return messages, batch


def encode_messages(messages: list[Message], batch: bool) -> bytes:
    """The POST body again, after a screen changed its elements in place."""
    return _encoder.encode([m.item for m in messages] if batch else messages[0].item)


def decode_header_value(value: str | None) -> str | None:
    """The `=?base64?...?=` header encoding of the 2026-07-28 transport (None when malformed)."""
    if value is None or not (value.startswith("=?base64?") and value.endswith("?=")):
        return value
    payload = value[9:-2]
    try:
        return base64.b64decode(payload, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def check_routing_headers(headers: dict[str, str], messages: list[Message], batch: bool) -> None:
    """2026-07-28: `Mcp-Method` / `Mcp-Name` must say what the body says, so that nothing routing on the headers
    (a load balancer, the upstream) sees another call than the one the gateway checked."""
    method_header = headers.get("mcp-method")
    name_header = headers.get("mcp-name")
    if method_header is None and name_header is None:
        return
    if batch:
        raise McpHeaderMismatch("Mcp-Method / Mcp-Name headers cannot describe a batch")
    message = messages[0]
    if method_header is not None and method_header != message.method:
        raise McpHeaderMismatch("Mcp-Method header does not match the request body's method")
    if (
        message.name is not None
        and name_header is not None
        and decode_header_value(name_header) != message.name
    ):
        raise McpHeaderMismatch(
            f"Mcp-Name header does not match the request body's {NAME_PARAMS[message.method or '']}"
        )
    if message.name is not None and name_header is None and method_header is not None:
        raise McpHeaderMismatch("Mcp-Name header is missing")


class McpHeaderMismatch(BadRequest):
    code = "mcp_header_mismatch"
    rpc_code = HEADER_MISMATCH


# --- tool rules --------------------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Rules:
    """allowed / blocked names per kind; an entry is a tool name (or `prompt:NAME`, `resource:URI`), globs allowed."""

    allowed: dict[str, tuple[str, ...]]
    blocked: dict[str, tuple[str, ...]]
    keywords: tuple[str, ...]
    # tool-definition pinning (odock.mcp.pinning): whether a listed tool may stay, and whether a call is refused
    pin_admit: Callable[[dict[str, Any]], bool] | None = None
    pin_refused: Callable[[str], bool] | None = None

    @property
    def empty(self) -> bool:
        return not (self.allowed or self.blocked or self.keywords or self.pin_admit)


def _by_kind(entries: list[str]) -> dict[str, tuple[str, ...]]:
    kinds: dict[str, list[str]] = {}
    for entry in entries:
        kind, sep, rest = entry.partition(":")
        if sep and kind in ("prompt", "resource", "tool"):
            kinds.setdefault(kind, []).append(rest)
        else:
            kinds.setdefault("tool", []).append(entry)
    return {k: tuple(v) for k, v in kinds.items()}


def rules_of(server: McpServer) -> Rules:
    keywords = server.semantic_filter.get("blockedKeywords") or []
    return Rules(
        _by_kind(server.allowed_tools), _by_kind(server.blocked_tools), tuple(k.lower() for k in keywords)
    )


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def permitted(rules: Rules, kind: str, name: str) -> bool:
    """allowedTools first (when non-empty, the name must be in it), then blockedTools (always wins)."""
    allowed = rules.allowed.get(kind)
    if allowed and not _matches(name, allowed):
        return False
    return not _matches(name, rules.blocked.get(kind, ()))


def enforce(rules: Rules, messages: list[Message], body: bytes) -> None:
    """403 mcp_guardrail_block when any element names a refused tool / prompt / resource, or the body holds a
    blocked keyword (semanticFilter, matched case-insensitively)."""
    for message in messages:
        kind = RULE_KIND.get(message.method or "")
        if kind is not None and message.name is not None and not permitted(rules, kind, message.name):
            raise Forbidden(
                f"{kind} {message.name!r} is not allowed on this MCP server", "mcp_guardrail_block"
            )
        if kind == "tool" and rules.pin_refused is not None and rules.pin_refused(message.name or ""):
            raise Forbidden(f"tool {message.name!r} changed since it was pinned", "mcp_guardrail_block")
    if rules.keywords:
        text = body.decode("utf-8", "replace").lower()
        for keyword in rules.keywords:
            if keyword in text:
                raise Forbidden("the request holds a blocked keyword", "mcp_guardrail_block")


def filter_result(rules: Rules, payload: Any, list_ids: set[Any] | None) -> bool:
    """Drop refused tools from `tools/list` results (answers to the ids in `list_ids`; None: any result holding
    a `tools` list, for streams whose requests went elsewhere); return whether changed."""
    changed = False
    for item in payload if isinstance(payload, list) else [payload]:
        if not isinstance(item, dict) or (list_ids is not None and item.get("id") not in list_ids):
            continue
        result = item.get("result")
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(tools, list):
            continue
        admit = rules.pin_admit
        kept = [
            t
            for t in tools
            if isinstance(t, dict)
            and permitted(rules, "tool", str(t.get("name", "")))
            and (admit is None or admit(t))
        ]
        if len(kept) != len(tools):
            assert isinstance(result, dict)
            result["tools"] = kept
            changed = True
    return changed


def filter_json(rules: Rules, body: bytes, list_ids: set[Any]) -> bytes:
    try:
        payload = _decoder.decode(body)
    except msgspec.DecodeError:
        return body
    return _encoder.encode(payload) if filter_result(rules, payload, list_ids) else body


def sse_events(buffer: bytearray) -> Iterator[bytes]:
    """Take the complete events (up to a blank line) off the front of `buffer`."""
    while True:
        normalized = buffer.find(b"\n\n")
        crlf = buffer.find(b"\r\n\r\n")
        if normalized < 0 and crlf < 0:
            return
        if crlf >= 0 and (normalized < 0 or crlf < normalized):
            end, width = crlf, 4
        else:
            end, width = normalized, 2
        event = bytes(buffer[: end + width])
        del buffer[: end + width]
        yield event


def sse_payload(event: bytes) -> tuple[list[bytes], Any] | None:
    """An SSE event's lines and its `data:` JSON decoded (None: no data, or not JSON)."""
    lines = event.replace(b"\r\n", b"\n").split(b"\n")
    payload_lines = [line[5:].lstrip(b" ") for line in lines if line.startswith(b"data:")]
    if not payload_lines:
        return None
    try:
        return lines, _decoder.decode(b"\n".join(payload_lines))
    except msgspec.DecodeError:
        return None


def sse_with_payload(lines: list[bytes], payload: Any) -> bytes:
    """The event of `lines` (its other fields kept as they were) carrying `payload` as its data."""
    out = [line for line in lines if not line.startswith(b"data:") and line]
    out.append(b"data: " + _encoder.encode(payload))
    return b"\n".join(out) + b"\n\n"


def filter_sse_event(rules: Rules, event: bytes, list_ids: set[Any] | None) -> bytes:
    """One SSE event with its `data:` JSON-RPC message filtered (other fields kept as they were)."""
    parsed = sse_payload(event)
    if parsed is None or not filter_result(rules, parsed[1], list_ids):
        return event
    return sse_with_payload(*parsed)


def rpc_errors(payload: Any) -> bool:
    """Whether a JSON-RPC answer (or batch) carries an error."""
    items = payload if isinstance(payload, list) else [payload]
    return any(isinstance(i, dict) and "error" in i for i in items)


# --- error bodies ------------------------------------------------------------------------------------------


def error_body(err: GatewayError, request_id: Any = None) -> bytes:
    """A JSON-RPC error the `mcp` SDK surfaces with our message; `error.data` holds the gateway's code and status
    (and a rate limit's scope / limit / retry_after), as every other route's body does."""
    rpc_code = getattr(err, "rpc_code", None) or (INVALID_REQUEST if err.status < 500 else INTERNAL_ERROR)
    data = {"code": err.code, "status": err.status, **err.extra}
    return _encoder.encode(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "error": {"code": rpc_code, "message": err.message, "data": data},
        }
    )
