"""The last-resort 500 (a bug, not a bad input) is shaped for the route's SDK, on the admin API too.

A bug has to be injected to reach it (a healthy gateway has none to find), so the real app runs in-process over
ASGI with one step of the call replaced by a failing one; the official SDKs talk to it through their own HTTP
clients' ASGI transports.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import os
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
from google.genai import errors as genai_errors

from odock.app import admin_app_for, create_app
from odock.dialects import anthropic as anthropic_dialect
from odock.dialects import openai_chat
from odock.edge.app import Edge
from odock.gateway import Gateway
from odock.pipeline.stages.access import Authenticate
from odock.settings import Settings
from odock.state.service import CatalogueService
from odock.state.sql import SqlStore
from tests.harness import seed_basic

ADMIN_TOKEN = "admin-last-resort"


async def simulated_bug(*_args: Any, **_kwargs: Any) -> None:
    raise RuntimeError("simulated bug")


@pytest.fixture(scope="module")
async def seeded(tmp_path_factory: pytest.TempPathFactory, mock: Any) -> AsyncIterator[tuple[Edge, str]]:
    """The gateway's ASGI app over a fresh SQLite store seeded with models on the mock provider (lifespan steps
    done by hand: no background tasks), and a granted key."""
    path = tmp_path_factory.mktemp("last-resort") / "odock.db"
    settings = Settings(
        database_url=f"sqlite:///{path}",
        admin_token=ADMIN_TOKEN,
        secret_key=base64.b64encode(os.urandom(32)).decode(),
    )
    store = await SqlStore.open(settings.database_url, settings)
    seed = await seed_basic(CatalogueService(store), mock.base_url)
    gw = Gateway(settings, store)
    edge = create_app(settings, gateway=gw)
    edge.gw = gw
    edge.admin = admin_app_for(gw)
    yield edge, seed["secret"]
    await gw.transport.close()
    await asyncio.sleep(0.01)  # the closed upstream sockets are released on the loop's next turns
    await store.close()


@pytest.fixture
def app(seeded: tuple[Edge, str]) -> Edge:
    return seeded[0]


@pytest.fixture
def broken_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every LLM call fails with a non-gateway exception at its first stage after the pre-auth gate."""
    monkeypatch.setattr(Authenticate, "before", simulated_bug)


@pytest.mark.usefixtures("broken_call")
async def test_sdk_routes_500_is_shaped_for_their_sdk(app: Edge) -> None:
    """The anthropic SDK raises its InternalServerError with our message on /v1/messages (it got an OpenAI-shaped
    body before), and the openai SDK its own on the chat and responses routes."""
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
    async with anthropic.AsyncAnthropic(
        base_url="http://gw", api_key="k", http_client=http, max_retries=0
    ) as ac:
        with pytest.raises(anthropic.InternalServerError) as info:
            await ac.messages.create(
                model="claude-test", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
            )
    assert info.value.status_code == 500
    assert info.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": "internal gateway error", "code": "internal_error"},
    }
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
    async with openai.AsyncOpenAI(
        base_url="http://gw/v1", api_key="k", http_client=http, max_retries=0
    ) as oc:
        with pytest.raises(openai.InternalServerError) as chat:
            await oc.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.InternalServerError) as responses:
            await oc.responses.create(model="gpt-test", input="hi")
    for failed in (chat, responses):
        assert failed.value.status_code == 500 and failed.value.code == "internal_error"
        assert "internal gateway error" in failed.value.message


@pytest.mark.usefixtures("broken_call")
async def test_gemini_route_500_is_google_shaped(app: Edge) -> None:
    """google-genai reads the Gemini route's 500 as its ServerError with our message."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        resp = await http.post("/v1beta/models/gemini-test:generateContent", json={"contents": []})
    assert resp.status_code == 500
    with pytest.raises(genai_errors.ServerError) as info:
        genai_errors.APIError.raise_error(resp.status_code, resp.json(), None)
    assert info.value.message == "internal gateway error" and info.value.status == "INTERNAL"


async def test_admin_500_is_json(app: Edge, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug behind an admin route is the admin API's JSON 500, not Starlette's plain text, and does not escape
    the app (the server would drop the connection with the answer)."""
    monkeypatch.setattr(CatalogueService, "list_organisations", simulated_bug)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://gw",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as http:
        resp = await http.get("/admin/organisations")
        assert resp.status_code == 500
        assert resp.json() == {"error": {"code": "internal_error", "message": "internal admin API error"}}
        assert (await http.get("/admin/teams")).status_code == 200


def broken_usage(_raw: Any) -> Any:
    raise RuntimeError("simulated bug")


async def test_a_bug_mid_stream_ends_with_the_routes_error_event(
    seeded: tuple[Edge, str], caplog: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the head went out a bug cannot be a 500: the stream ends with the route's error event, which the SDK
    raises with our message (it ended like a complete answer before)."""
    app, key = seeded
    monkeypatch.setattr(openai_chat, "usage_from", broken_usage)
    monkeypatch.setattr(anthropic_dialect, "usage_from", broken_usage)
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
    async with openai.AsyncOpenAI(
        base_url="http://gw/v1", api_key=key, http_client=http, max_retries=0
    ) as oc:
        stream = await oc.chat.completions.create(
            model="gpt-test", stream=True, messages=[{"role": "user", "content": "hi"}]
        )
        with pytest.raises(openai.APIError, match="internal gateway error"):
            async for _ in stream:
                pass
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
    async with anthropic.AsyncAnthropic(
        base_url="http://gw", api_key=key, http_client=http, max_retries=0
    ) as ac:
        with pytest.raises(anthropic.APIStatusError, match="internal gateway error"):
            async with ac.messages.stream(
                model="claude-test", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
            ) as events:
                async for _ in events:
                    pass
    assert caplog.text.count("unhandled error mid-stream") == 2
    # the logged tracebacks keep the broken relays' frames, and with them their upstream connections, alive:
    # drop them while the loop still runs, so that those connections are closed rather than garbage-collected
    caplog.clear()
    gc.collect()
    await asyncio.sleep(0.01)
