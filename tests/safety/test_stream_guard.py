"""Streaming redaction and blocking: a secret or e-mail split across deltas at any boundary never reaches the
client, in any dialect (events re-encoded by the dialect's stream encoder and read back by its decoder), and the
guard holds back no more than its bound."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from odock.dialects.contract import StreamOptions
from odock.dialects.registry import DIALECTS
from odock.dialects.sse import SSEParser
from odock.errors import Forbidden
from odock.model import StreamEvent, StreamStart, StreamStop, TextDelta, ToolCallDelta, UsageEvent
from odock.model import Usage as UsageModel
from odock.safety.engine import SafetyConfig, SafetyEngine, Screen
from odock.safety.policy import resolve
from odock.safety.stream import MIN_RELEASE, StreamGuard

SECRETS = {
    "email": "jane.doe@example.com",
    "openai_key": "sk-proj-Abc123Def456Ghi789Jkl012Mno345",
    "aws_access_key": "AKIAIOSFODNN7EXAMPLE",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "card": "4111 1111 1111 1111",
    "github_token": "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
}
DIALECT_NAMES = ["openai_chat", "anthropic", "gemini", "openai_responses"]
ENGINE = SafetyEngine(SafetyConfig(enabled=True))
REDACT = resolve(True, True, [{"response": {"pii": "redact", "secrets": "redact"}}])
BLOCK = resolve(True, True, [{"response": {"pii": "block", "secrets": "block"}}])


def guarded(pieces: list[str], policy: object = REDACT) -> list[StreamEvent]:
    guard = StreamGuard(ENGINE, Screen(policy))  # type: ignore[arg-type]
    out: list[StreamEvent] = []
    events: list[StreamEvent] = [StreamStart(id="r1", model="m")]
    events += [TextDelta(text=p) for p in pieces]
    events += [UsageEvent(usage=UsageModel(input_tokens=3, output_tokens=5)), StreamStop(stop_reason="stop")]
    for event in events:
        passed = guard.feed(event)
        if isinstance(passed, list):
            out += passed
        elif passed is not None:
            out.append(passed)
    return out


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def round_trip(dialect: str, events: list[StreamEvent]) -> str:
    """The text a client of `dialect` reads: encoded as that dialect streams, decoded back."""
    d = DIALECTS[dialect]
    encoder = d.client.stream_encoder(model="m", request_id="r1", options=StreamOptions())
    wire = b"".join(encoder.event(e) for e in events) + encoder.finish()
    decoder = d.upstream.stream_decoder()
    parser = SSEParser()
    decoded = [e for sse in [*parser.feed(wire), *parser.flush()] for e in decoder.feed(sse)]
    return text_of(decoded)


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points) if b > a]


@pytest.mark.parametrize("category", sorted(SECRETS))
def test_every_two_piece_split_and_one_character_deltas(category: str) -> None:
    """Exhaustive over one boundary, and every boundary at once (one-character deltas)."""
    secret = SECRETS[category]
    text = f"Sure. The value is {secret} and that is all."
    for cut in range(len(text) + 1):
        released = text_of(guarded([text[:cut], text[cut:]]))
        assert secret not in released and f"[REDACTED_{category.upper()}]" in released
        assert released.replace(f"[REDACTED_{category.upper()}]", secret) == text
    assert secret not in text_of(guarded(list(text)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    category=st.sampled_from(sorted(SECRETS)),
    dialect=st.sampled_from(DIALECT_NAMES),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=30),
    lead=st.text(alphabet="abc de\n", max_size=300),
)
def test_split_secrets_never_reach_any_dialect(
    category: str, dialect: str, cuts: list[int], lead: str
) -> None:
    secret = SECRETS[category]
    text = f"{lead} {secret} tail"
    events = guarded(split(text, cuts))
    client_text = round_trip(dialect, events)
    assert secret not in client_text
    assert f"[REDACTED_{category.upper()}]" in client_text


@pytest.mark.parametrize("category", ["email", "openai_key"])
def test_a_block_mid_stream_raises_before_the_secret_leaves(category: str) -> None:
    secret = SECRETS[category]
    text = "x " * 200 + secret + " y"
    guard = StreamGuard(ENGINE, Screen(BLOCK))
    released = ""
    with pytest.raises(Forbidden) as caught:
        for i in range(0, len(text), 7):
            out = guard.feed(TextDelta(text=text[i : i + 7]))
            released += out.text if isinstance(out, TextDelta) else ""
        guard.feed(
            StreamStop(stop_reason="stop")
        )  # a secret near the end is found by the last screen at latest
    assert caught.value.code == "safety_blocked" and secret not in released
    assert released  # the stream was flowing before the block (no whole-answer buffering)


def test_hold_back_is_bounded() -> None:
    """Released text trails the newest character by at most the hold-back, plus what is too little to be worth a
    scan (MIN_RELEASE) and the word it falls in."""
    guard = StreamGuard(ENGINE, Screen(REDACT))
    words = ("lorem ipsum dolor sit amet " * 60).split(" ")
    sent = released = 0
    for word in words:
        piece = word + " "
        sent += len(piece)
        out = guard.feed(TextDelta(text=piece))
        released += len(out.text) if isinstance(out, TextDelta) else 0
        assert sent - released <= ENGINE.config.hold_chars + MIN_RELEASE + 16


def test_tool_arguments_are_held_whole_and_screened() -> None:
    guard = StreamGuard(ENGINE, Screen(REDACT))
    args = '{"to": "jane.doe@example.com", "body": "hi"}'
    assert guard.feed(ToolCallDelta(index=0, id="c1", name="send", arguments=args[:12])) is None
    assert guard.feed(ToolCallDelta(index=0, arguments=args[12:])) is None
    out = guard.feed(StreamStop(stop_reason="tool_calls"))
    assert isinstance(out, list) and isinstance(out[0], ToolCallDelta) and isinstance(out[-1], StreamStop)
    assert out[0].id == "c1" and out[0].name == "send"
    assert out[0].arguments == '{"to": "[REDACTED_EMAIL]", "body": "hi"}'


@pytest.mark.parametrize("dialect", DIALECT_NAMES)
def test_upstream_bytes_cut_at_any_byte_never_leak(dialect: str) -> None:
    """The path of an inspected stream from the upstream's bytes (the SSE parser reads whole events without its
    line loop): the secret split across deltas, the bytes cut at every boundary, still never leaves."""
    secret = SECRETS["openai_key"]
    d = DIALECTS[dialect]
    encoder = d.client.stream_encoder(model="m", request_id="r1", options=StreamOptions())
    pieces = ["Sure. The key is ", secret[:9], secret[9:20], secret[20:] + " and that is all."]
    upstream = [StreamStart(id="r1", model="m"), *(TextDelta(text=p) for p in pieces)]
    wire = b"".join(encoder.event(e) for e in upstream) + encoder.finish()
    for cut in range(len(wire) + 1):
        parser, decoder = SSEParser(), d.upstream.stream_decoder()
        guard = StreamGuard(ENGINE, Screen(REDACT))
        out: list[StreamEvent] = []
        sse = [*parser.feed(wire[:cut]), *parser.feed(wire[cut:]), *parser.flush()]
        for event in [e for s in sse for e in decoder.feed(s)]:
            passed = guard.feed(event)
            out += passed if isinstance(passed, list) else [passed] if passed is not None else []
        released = text_of(out)
        assert secret not in released and "[REDACTED_OPENAI_KEY]" in released, cut
