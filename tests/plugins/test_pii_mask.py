"""pii_mask on every route with the official SDKs, unary and streamed: a card number is masked before it reaches
the upstream, and an email the upstream echoes is masked in the answer (whole, and in each streamed delta)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from odock.plugins import PluginSetup
from odock.plugins.bundled.pii_mask import PiiMask
from odock.plugins.config import PluginConfigError, parse_plugins_config
from odock.plugins.loader import build_plugin
from odock.transport.base import UpstreamRequest
from tests.harness import wait_usage
from tests.inprocess import InProcessGateway, in_process_gateway
from tests.plugins.test_plugins_routes import ROUTES, _openai

pytestmark = pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")

CONFIG = {
    "plugins": [
        {"name": "mask_in", "type": "pii_mask", "config": {"categories": ["card"], "response": False}},
        {"name": "mask_out", "type": "pii_mask", "config": {"categories": ["email"], "request": False}},
    ],
    "phases": {
        "pre_upstream": {"sequential": ["mask_in"]},
        "post_upstream": {"sequential": ["mask_out"]},
        "stream_chunk": {"sequential": ["mask_out"]},
    },
}
CARD = "4111 1111 1111 1111"
EMAIL = "bob@example.com"


@pytest.fixture(scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcessGateway]:
    tmp = tmp_path_factory.mktemp("pii")
    path = tmp / "plugins.json"
    path.write_text(json.dumps(CONFIG))
    async with in_process_gateway(tmp, plugins_config_path=str(path)) as gateway:
        yield gateway


@pytest.mark.parametrize("route", list(ROUTES))
async def test_pii_is_masked_both_ways_on_every_route(gw: InProcessGateway, route: str) -> None:
    """The card never reaches the upstream; the echoed email never reaches the client; the markers do."""
    bodies: list[bytes] = []
    transport = gw.gateway.transport
    send = transport.send

    async def capture(request: UpstreamRequest) -> Any:
        bodies.append(request.body or b"")
        return await send(request)

    transport.send = capture  # type: ignore[method-assign]
    try:
        ask = ROUTES[route](gw)
        for stream in (False, True):
            bodies.clear()
            answer = await ask(f"mail {EMAIL} card {CARD}", stream)
            sent = bodies[0].decode()
            assert CARD not in sent and "[REDACTED_CARD]" in sent and EMAIL in sent, (route, sent)
            assert EMAIL not in answer and "[REDACTED_EMAIL]" in answer, (route, stream, answer)
    finally:
        del transport.send  # type: ignore[method-assign]


async def test_findings_name_categories_never_text(gw: InProcessGateway) -> None:
    """The usage record says which categories were masked, not what they were."""
    reply = await _openai(gw).chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": f"mail {EMAIL} card {CARD}"}]
    )
    record = await wait_usage(gw.service, reply.headers["x-request-id"])
    runs = {(r["plugin"], r["phase"]): r for r in record["metadata"]["plugins"]}
    assert runs["mask_in", "pre_upstream"]["findings"] == ["card"]
    assert runs["mask_out", "post_upstream"]["findings"] == ["email"]
    stored = json.dumps(record, default=str)
    assert EMAIL not in stored and "4111" not in stored


def test_unknown_categories_are_refused() -> None:
    """A category the detectors do not have is a configuration error naming it."""
    config = parse_plugins_config(
        {
            "plugins": [{"name": "m", "type": "pii_mask", "config": {"categories": ["emails"]}}],
            "phases": {"pre_route": {"sequential": ["m"]}},
        }
    )
    with pytest.raises(PluginConfigError, match="unknown emails"):
        build_plugin(config.entries["m"], {"pre_route"}, {})
    assert PiiMask(PluginSetup("m", {"categories": ["secrets", "email"]})).categories == {"secrets", "email"}
