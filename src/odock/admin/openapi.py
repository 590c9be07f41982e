"""The admin API's OpenAPI 3.1 document (`GET /admin/openapi.json`), generated from the msgspec types that
decode its requests (`odock.state.validation`, `odock.admin.governance`) and the records it answers with.

Each admin route is described once, in `OPERATIONS` (a route added elsewhere passes its own `Operation`s to
`create_admin_app`); the document covers every registered route, and a route with no description still
appears, marked `x-undocumented` (tests/admin/test_openapi.py fails on it). Examples are decoded by the test with
the very type that validates the request, so they cannot drift from what the API accepts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

import msgspec
from starlette.routing import BaseRoute, Route

from odock.admin.cache import CachePurge, PurgeCount
from odock.admin.governance import BudgetChanges, NewBudget, NewQuota, QuotaChanges
from odock.governance.store import Budget, BudgetEvent, Quota
from odock.mcp.records import McpServerInfo
from odock.mcp.usage import McpUsagePage
from odock.mcp.validation import McpServerChanges, NewMcpGrant, NewMcpServer
from odock.state.crud import KeyInfo, KeyRotation, ProviderInfo
from odock.state.records import ModelRecord, Organisation, Team, User
from odock.state.reports import GROUP_BY, UsageSummaryRow
from odock.state.validation import (
    KeyChanges,
    ModelChanges,
    NewGrant,
    NewKey,
    NewModel,
    NewOrganisation,
    NewProvider,
    NewTeam,
    NewUser,
    OrganisationChanges,
    ProviderChanges,
    TeamChanges,
    UserChanges,
)
from odock.state.validation import (
    KeyRotation as KeyRotationInput,
)

T = TypeVar("T")


class Page(msgspec.Struct, Generic[T]):
    """A list of records."""

    data: list[T]


class CreatedKeyBody(KeyInfo, kw_only=True):
    """A key with its secret: the only answer that ever holds it (creation and rotation)."""

    secret: str


class UsageReport(msgspec.Struct):
    """Usage totals grouped by one dimension."""

    group_by: str
    data: list[UsageSummaryRow]


class ErrorDetail(msgspec.Struct):
    code: str
    message: str


class ErrorBody(msgspec.Struct):
    """Every admin error: a status and a snake_case code."""

    error: ErrorDetail


@dataclass(frozen=True)
class Param:
    name: str
    description: str
    enum: tuple[str, ...] = ()


@dataclass(frozen=True)
class Operation:
    """One admin route and method: what it takes and what it answers (a msgspec type, or None: no content)."""

    method: str
    path: str
    summary: str
    tag: str
    body: Any = None
    response: Any = None
    status: int = 200
    query: tuple[Param, ...] = ()
    example: dict[str, Any] | None = None
    response_example: Any = None
    errors: tuple[int, ...] = (400, 404)
    description: str = ""


ORG_SCOPE = Param("organisation", "Restrict to this organisation (name or id).")
NOW = "2099-01-01T00:00:00Z"  # a future instant for examples (expiries must be in the future)


def _crud(
    path: str,
    tag: str,
    record: Any,
    new: Any,
    changes: Any,
    example: dict[str, Any],
    change_example: dict[str, Any],
    *,
    scoped: bool = True,
) -> list[Operation]:
    query = (ORG_SCOPE,) if scoped else ()
    item = path + "/{ref}"
    return [
        Operation("GET", path, f"List {tag}", tag, response=Page[record], query=query, errors=()),
        Operation("POST", path, f"Create one of the {tag}", tag, new, record, 201, example=example, errors=(400, 404, 409)),
        Operation("GET", item, f"Read one of the {tag} (by id or name)", tag, response=record, query=query),
        Operation("PATCH", item, f"Change some fields of one of the {tag}", tag, changes, record, query=query,
                  example=change_example, errors=(400, 404, 409)),
        Operation("DELETE", item, f"Delete one of the {tag}", tag, status=204, query=query, errors=(404, 409)),
    ]  # fmt: skip


def _definitions(kind: str, record: Any, new: Any, changes: Any, example: dict[str, Any]) -> list[Operation]:
    path, item = f"/admin/{kind}", f"/admin/{kind}/{{id}}"
    filters = (
        Param("owner_type", "Owner type.", ("ORG", "TEAM", "USER", "APIKEY")),
        Param("owner_id", "Owner id."),
        Param("organisation_id", "Organisation id."),
        Param("active", "Only active (true) or inactive (false) ones.", ("true", "false")),
    )
    return [
        Operation("GET", path, f"List {kind}", kind, response=list[record], query=filters, errors=()),
        Operation("POST", path, f"Create a {kind[:-1]}", kind, new, record, 201, example=example),
        Operation("GET", item, f"Read a {kind[:-1]}", kind, response=record),
        Operation("PATCH", item, f"Change a {kind[:-1]}", kind, changes, record, example={"active": False}),
        Operation("DELETE", item, f"Delete a {kind[:-1]}", kind, status=204, errors=(404,)),
        Operation("GET", item + "/windows", f"A {kind[:-1]}'s settled windows, newest first", kind,
                  response=list[dict[str, Any]], errors=(404,)),
    ]  # fmt: skip


CREATED_KEY = {
    "id": "key_01hzy3k2v4q9d8e7f6a5b4c3d2", "name": "search-backend", "key_preview": "sk-odock-…f3a9",
    "type": "TEAM", "organisation_id": "org_01hzy3jq1m2n3p4q5r6s7t8v9w", "team_id": "team_01hzy3jw0a1b2c3d4e5f6g7h8j",
    "user_id": None, "expires_at": NOW, "revoked": False, "revealed": True, "timezone": "UTC",
    "policies": {"rateLimit": {"rpm": 600}}, "rotation_count": 0, "created_at": "2026-12-06T12:00:00Z",
    "secret": "sk-odock-9bQ2xV7mKp4Lr8Tz1Nw6Hs3Dy5Fc0Ja2f3a9",
}  # fmt: skip

OPERATIONS: list[Operation] = [
    *_crud("/admin/organisations", "organisations", Organisation, NewOrganisation, OrganisationChanges,
           {"name": "example-co", "timezone": "Europe/Paris"}, {"timezone": "UTC"}, scoped=False),
    *_crud("/admin/teams", "teams", Team, NewTeam, TeamChanges, {"organisation": "example-co", "name": "search"},
           {"name": "search-eu"}),
    *_crud("/admin/users", "users", User, NewUser, UserChanges,
           {"organisation": "example-co", "email": "ada@example.com", "name": "Ada"}, {"name": "Ada L."}),
    *_crud("/admin/providers", "providers", ProviderInfo, NewProvider, ProviderChanges,
           {"organisation": "example-co", "name": "openai", "type": "openai", "base_url": "https://api.openai.com/v1",
            "api_key": "sk-provider-credential", "timeout_ms": 60000}, {"enabled": False}),
    *_crud("/admin/models", "models", ModelRecord, NewModel, ModelChanges,
           {"organisation": "example-co", "name": "chat", "provider": "openai", "slug": "gpt-4o-mini", "type": "chat",
            "pricing": {"input": 0.15, "output": 0.6}}, {"pricing": {"input": 0.1, "output": 0.4}}),
    Operation("GET", "/admin/keys", "List keys (never their secrets)", "keys", response=Page[KeyInfo],
              query=(ORG_SCOPE,), errors=()),
    Operation("POST", "/admin/keys", "Create a key; its secret is in this answer only", "keys", NewKey,
              CreatedKeyBody, 201, errors=(400, 404, 409),
              example={"organisation": "example-co", "name": "search-backend", "type": "TEAM", "team": "search",
                       "expires_at": NOW, "models": ["chat"], "policies": {"rateLimit": {"rpm": 600}}},
              response_example=CREATED_KEY),
    Operation("GET", "/admin/keys/{ref}", "Read a key", "keys", response=KeyInfo, query=(ORG_SCOPE,)),
    Operation("PATCH", "/admin/keys/{ref}", "Change a key (name, owner, expiry, policies, revoked)", "keys",
              KeyChanges, KeyInfo, query=(ORG_SCOPE,), example={"expires_at": NOW, "revoked": False}),
    Operation("DELETE", "/admin/keys/{ref}", "Delete a key", "keys", status=204, query=(ORG_SCOPE,)),
    Operation("POST", "/admin/keys/{ref}/rotate", "Rotate in place: same id, new secret (shown once)", "keys",
              KeyRotationInput, CreatedKeyBody, query=(ORG_SCOPE,), example={"expires_at": NOW}),
    Operation("POST", "/admin/keys/{ref}/revoke", "Revoke a key (its secret stops working)", "keys",
              response=KeyInfo, query=(ORG_SCOPE,)),
    Operation("GET", "/admin/keys/{ref}/rotations", "A key's rotation history", "keys",
              response=Page[KeyRotation], query=(ORG_SCOPE,)),
    Operation("GET", "/admin/keys/{ref}/grants", "The models a key may use", "keys", response=Page[ModelRecord],
              query=(ORG_SCOPE,)),
    Operation("POST", "/admin/keys/{ref}/grants", "Grant a model to a key", "keys", NewGrant,
              Page[ModelRecord], 201, query=(ORG_SCOPE,), example={"model": "chat"}),
    Operation("DELETE", "/admin/keys/{ref}/grants/{model}", "Take a model grant back", "keys",
              response=Page[ModelRecord], query=(ORG_SCOPE,)),
    Operation("GET", "/admin/usage", "Usage totals grouped by one dimension", "usage", response=UsageReport,
              errors=(400,), query=(Param("group_by", "The grouping (default: model).", GROUP_BY),
                                    Param("since", "ISO 8601 start (inclusive)."),
                                    Param("until", "ISO 8601 end (exclusive)."), ORG_SCOPE)),
    *_definitions("budgets", Budget, NewBudget, BudgetChanges,
                  {"name": "monthly", "organisation": "example-co", "team": "search", "period": "MONTHLY",
                   "amount_usd": "250.00", "thresholds": [50, 80, 100]}),
    *_definitions("quotas", Quota, NewQuota, QuotaChanges,
                  {"name": "daily-tokens", "organisation": "example-co", "key": "search-backend", "period": "DAILY",
                   "metric": "TOKENS", "limit": 2000000}),
    Operation("GET", "/admin/budget-events", "Budget threshold crossings and overspends, newest first",
              "budgets", response=list[BudgetEvent], errors=(400,),
              query=(Param("budget_id", "One budget's events."), Param("since", "ISO 8601 start."),
                     Param("limit", "At most this many (default 100)."))),
    *_crud("/admin/mcp-servers", "mcp-servers", McpServerInfo, NewMcpServer, McpServerChanges,
           {"organisation": "example-co", "name": "search-tools", "transport": "STREAMABLE_HTTP",
            "endpoint_url": "https://tools.example.com/mcp", "blocked_tools": ["delete_*"],
            "pricing": {"callNanosUsd": 1000000, "toolNanosUsd": {"search": 500000}}}, {"enabled": False}),
    Operation("GET", "/admin/keys/{ref}/mcp-grants", "The MCP servers a key may call", "keys",
              response=Page[McpServerInfo], query=(ORG_SCOPE,)),
    Operation("POST", "/admin/keys/{ref}/mcp-grants", "Grant an MCP server to a key (a model grant never does)",
              "keys", NewMcpGrant, Page[McpServerInfo], 201, query=(ORG_SCOPE,),
              example={"mcp_server": "search-tools"}),
    Operation("DELETE", "/admin/keys/{ref}/mcp-grants/{server}", "Take an MCP server grant back", "keys",
              response=Page[McpServerInfo], query=(ORG_SCOPE,)),
    Operation("GET", "/admin/mcp/usage", "MCP usage records (server, method, tool, bytes, latency, outcome, cost), "
              "newest first", "usage", response=McpUsagePage, errors=(400, 404),
              query=(Param("organisation", "One organisation (id or name)."),
                     Param("server", "One MCP server (id, or slug)."), Param("key", "One API key (id)."),
                     Param("method", "One JSON-RPC method (e.g. tools/call)."), Param("tool", "One tool name."),
                     Param("outcome", "success, failed, blocked or cancelled."),
                     Param("transport", "STREAMABLE_HTTP, SSE or STDIO."),
                     Param("since", "ISO 8601 start (inclusive)."), Param("until", "ISO 8601 end (exclusive)."),
                     Param("limit", "At most this many (default 100, at most 1000)."),
                     Param("before", "The `next` cursor of the previous page."))),
    Operation("POST", "/admin/cache/purge", "Drop cached answers of an organisation (by namespace, model, key)",
              "cache", CachePurge, PurgeCount, errors=(400, 404, 409),
              example={"organisation": "example-co", "namespace": "faq"}),
    Operation("GET", "/admin/openapi.json", "This document", "meta", response=dict[str, Any], errors=()),
]  # fmt: skip

_ERRORS = {
    400: "Invalid request (the message names the field)",
    401: "Missing or wrong admin token",
    404: "Not found",
    409: "Conflict (a name already taken, or a record still in use)",
}


@dataclass
class _Builder:
    types: list[Any] = field(default_factory=list)

    def ref(self, kind: Any) -> int:
        self.types.append(kind)
        return len(self.types) - 1


def _parameters(op: Operation) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", op.path)
    ]
    for param in op.query:
        schema: dict[str, Any] = {"type": "string"}
        if param.enum:
            schema["enum"] = list(param.enum)
        params.append({"name": param.name, "in": "query", "required": False, "schema": schema,
                       "description": param.description})  # fmt: skip
    return params


def _operation(op: Operation, builder: _Builder, slots: dict[int, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "summary": op.summary,
        "tags": [op.tag],
        "operationId": f"{op.method.lower()}_{re.sub(r'[^a-z0-9]+', '_', op.path.lower()).strip('_')}",
    }
    if op.description:
        doc["description"] = op.description
    parameters = _parameters(op)
    if parameters:
        doc["parameters"] = parameters
    if op.body is not None:
        media: dict[str, Any] = {"schema": slots.setdefault(builder.ref(op.body), {})}
        if op.example is not None:
            media["example"] = op.example
        doc["requestBody"] = {"required": True, "content": {"application/json": media}}
    responses: dict[str, Any] = {}
    if op.response is None:
        responses[str(op.status)] = {"description": "Done (no content)"}
    else:
        media = {"schema": slots.setdefault(builder.ref(op.response), {})}
        if op.response_example is not None:
            media["example"] = op.response_example
        responses[str(op.status)] = {"description": "OK", "content": {"application/json": media}}
    for status in sorted({401, *op.errors}):
        responses[str(status)] = {"$ref": f"#/components/responses/{status}"}
    doc["responses"] = responses
    return doc


def _registered(routes: Iterable[BaseRoute]) -> list[tuple[str, str]]:
    """(method, path) of every registered admin API route (HEAD, added by Starlette to GET routes, left out; pages
    served beside the API, such as the console, are not API routes)."""
    found = []
    for route in routes:
        if isinstance(route, Route) and route.path.startswith("/admin/"):
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    found.append((method, route.path))
    return found


def openapi_document(routes: Sequence[BaseRoute], operations: Sequence[Operation]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`, described by `operations`."""
    described = {(op.method, op.path): op for op in operations}
    builder = _Builder()
    slots: dict[int, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for method, path in _registered(routes):
        op = described.get((method, path))
        if op is None:
            entry: dict[str, Any] = {"summary": "undocumented route", "x-undocumented": True, "responses": {
                "default": {"description": "not described yet"}}}  # fmt: skip
        else:
            entry = _operation(op, builder, slots)
        paths.setdefault(path, {})[method.lower()] = entry
    schemas, components = msgspec.json.schema_components(
        [*builder.types, ErrorBody], ref_template="#/components/schemas/{name}"
    )
    for index, schema in enumerate(schemas[:-1]):
        slots[index].update(schema)  # fill each placeholder with its schema (a $ref, or inline for builtins)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Odock admin API",
            "version": "1",
            "description": "Catalogue, keys, budgets, quotas and usage of an Odock gateway. Every route needs "
            '`Authorization: Bearer <ODOCK_ADMIN_TOKEN>`; errors are `{"error": {"code", "message"}}`.',
        },
        "servers": [{"url": "/"}],
        "security": [{"adminToken": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
            "responses": {
                str(status): {
                    "description": text,
                    "content": {"application/json": {"schema": schemas[-1]}},
                }
                for status, text in _ERRORS.items()
            },
        },
    }


def document_json(routes: Sequence[BaseRoute], operations: Sequence[Operation]) -> bytes:
    """The document, encoded (datetimes in examples as ISO 8601)."""
    return msgspec.json.encode(openapi_document(routes, operations), enc_hook=_enc)


def _enc(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise NotImplementedError(type(value))
