"""pii_mask on every route with the official SDKs, unary and streamed: a card number is masked before it reaches
the upstream, and an email the upstream echoes is masked in the answer (whole, and in each streamed delta)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from odock.model import StreamStop, TextDelta, ThinkingDelta, ToolCallDelta, Usage, UsageEvent
from odock.plugins import PluginSetup
from odock.plugins.base import PluginView
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


def _stream_through(plugin: PiiMask, events: list[Any]) -> list[Any]:
    """The events a client would get: each event through the plugin's stream_chunk (one view per stream)."""
    view = PluginView("stream_chunk", None, None, None, {}, None, {})  # type: ignore[arg-type]
    out: list[Any] = []
    for event in events:
        result = plugin.stream_chunk(view, event)
        if result is None:
            out.append(event)
        else:
            assert result.events is not None
            out += result.events
    return out


def _text(events: list[Any], kind: type) -> str:
    return "".join(e.text for e in events if isinstance(e, kind))


@pytest.mark.parametrize("kind", [TextDelta, ThinkingDelta])
def test_stream_masks_values_split_at_every_boundary(kind: type) -> None:
    """An email and a card split across two deltas at every character boundary (and one character per delta)
    never reach the client: the masked stream equals the whole text masked, with nothing else changed."""
    plugin = PiiMask(PluginSetup("m", {"categories": ["email", "card"]}))
    text = f"Write to {EMAIL} or pay with {CARD} by Friday; thanks!"
    expected = "Write to [REDACTED_EMAIL] or pay with [REDACTED_CARD] by Friday; thanks!"
    stop = StreamStop(stop_reason="stop")
    for cut in range(len(text) + 1):
        pieces = [kind(text=text[:cut]), kind(text=text[cut:])]
        out = _stream_through(plugin, [*pieces, stop])
        assert _text(out, kind) == expected, cut
        assert out[-1] == stop
    out = _stream_through(plugin, [*(kind(text=c) for c in text), stop])
    assert _text(out, kind) == expected
    assert any(e.text for e in out[: len(out) // 2] if isinstance(e, kind))  # released while streaming


def test_stream_keeps_event_order_and_masks_tool_arguments() -> None:
    """Thinking is released before the answer starts; a usage event waits behind held text; tool arguments are
    held whole and masked."""
    plugin = PiiMask(PluginSetup("m", {"categories": ["email"]}))
    usage = UsageEvent(usage=Usage(input_tokens=1, output_tokens=2))
    out = _stream_through(
        plugin,
        [
            ThinkingDelta(text=f"reach {EMAIL[:5]}"),
            ThinkingDelta(text=f"{EMAIL[5:]} soon"),
            TextDelta(text=f"mail {EMAIL[:7]}"),
            usage,
            TextDelta(text=f"{EMAIL[7:]} now"),
            ToolCallDelta(index=0, id="c1", name="send", arguments='{"to": "' + EMAIL[:4]),
            ToolCallDelta(index=0, arguments=EMAIL[4:] + '"}'),
            StreamStop(stop_reason="tool_calls"),
        ],
    )
    kinds = [type(e).__name__ for e in out]
    assert kinds.index("ThinkingDelta") < kinds.index("TextDelta") < kinds.index("UsageEvent")
    assert _text(out, ThinkingDelta) == "reach [REDACTED_EMAIL] soon"
    assert _text(out, TextDelta) == "mail [REDACTED_EMAIL] now"
    calls = [e for e in out if isinstance(e, ToolCallDelta)]
    assert calls[0].arguments == '{"to": "[REDACTED_EMAIL]"}' and calls[0].name == "send"
    assert EMAIL not in repr(out)
