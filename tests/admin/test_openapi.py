"""`GET /admin/openapi.json`: an OpenAPI 3.1 document covering every registered admin route, generated from the
msgspec types that decode the requests; every example decodes with the type that validates that request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from odock.admin.openapi import OPERATIONS
from odock.app import admin_app_for
from odock.state.validation import decode
from tests.inprocess import InProcessGateway, in_process_gateway

TOKEN = "admin-openapi-token"


@pytest.fixture()
async def gw(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    async with in_process_gateway(tmp_path, admin_token=TOKEN, request_log="off") as gateway:
        yield gateway


def admin_client(gw: InProcessGateway) -> httpx.AsyncClient:
    app = admin_app_for(gw.gateway)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://admin",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )


def registered(gw: InProcessGateway) -> set[tuple[str, str]]:
    """(method, path) of every route the admin app serves."""
    side: Any = admin_app_for(gw.gateway)
    guard = getattr(side, "admin", side)  # behind the console's dispatch when the console is on
    return {
        (method, route.path) for route in guard.app.routes for method in route.methods if method != "HEAD"
    }


async def test_every_admin_route_is_documented(gw: InProcessGateway) -> None:
    """Every registered admin route and method is in the document, described (none marked undocumented), with
    its request body schema where it takes one; the document is OpenAPI 3.1 and needs the admin token."""
    async with admin_client(gw) as http:
        assert (await http.get("/admin/openapi.json", headers={"Authorization": ""})).status_code == 401
        reply = await http.get("/admin/openapi.json")
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    doc = reply.json()
    assert doc["openapi"] == "3.1.0"
    documented = {(method.upper(), path) for path, methods in doc["paths"].items() for method in methods}
    routes = registered(gw)
    assert routes == documented
    assert len(routes) > 40  # the catalogue, keys, usage, budgets, quotas, events, and this document
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            assert not operation.get("x-undocumented"), f"{method.upper()} {path} is not described"
            assert operation["summary"] and operation["responses"]
    create_key = doc["paths"]["/admin/keys"]["post"]
    schema = create_key["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/NewKey"}
    new_key = doc["components"]["schemas"]["NewKey"]
    assert new_key["additionalProperties"] is False and {"organisation", "name"} <= set(new_key["required"])
    assert doc["components"]["schemas"]["KeyInfo"]["properties"].keys().isdisjoint({"key_hash", "secret"})


def test_every_request_body_has_an_example() -> None:
    """Each operation that takes a body shows one."""
    assert [f"{op.method} {op.path}" for op in OPERATIONS if op.body is not None and op.example is None] == []


def examples() -> list[tuple[str, Any, Any]]:
    """(operation, type, example) for every example in the table."""
    found = []
    for op in OPERATIONS:
        if op.example is not None:
            found.append((f"{op.method} {op.path}", op.body, op.example))
        if op.response_example is not None:
            found.append((f"{op.method} {op.path} (response)", op.response, op.response_example))
    return found


@pytest.mark.parametrize(("operation", "kind", "example"), examples(), ids=[e[0] for e in examples()])
def test_every_example_validates(operation: str, kind: Any, example: Any) -> None:
    """Each example decodes with the very type that validates that request (constraints and checks included)."""
    if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
        decode(kind, example, operation)
    else:
        msgspec.convert(example, kind)


async def test_the_documented_examples_are_accepted_by_the_api(gw: InProcessGateway) -> None:
    """The create examples, sent in order, are accepted by the live admin API (201), so they are real."""
    async with admin_client(gw) as http:
        for op in OPERATIONS:
            if op.method == "POST" and op.status == 201 and "{" not in op.path and op.example is not None:
                reply = await http.post(op.path, json=op.example)
                assert reply.status_code == 201, (op.path, reply.text)
        key = (await http.get("/admin/keys/search-backend", params={"organisation": "example-co"})).json()
        assert key["type"] == "TEAM"
