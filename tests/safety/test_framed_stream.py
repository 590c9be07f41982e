"""SafetySec over whole upstream events on the native OpenAI chat route (`odock.safety.stream.FramedText`,
`odock.edge.endpoints.framed`): the upstream's bytes go out as they came unless a redaction touches them, a
secret split across events and across TCP reads at any byte never leaves, the hold-back stays bounded, a block
ends the stream before the match leaves, and a chunk the framed path cannot screen as it is hands the rest of the
stream to the decoded path without losing or repeating anything."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionChunk

from odock.dialects import openai_chat
from odock.edge.endpoints.framed import _frames
from odock.errors import Forbidden, UpstreamError
from odock.safety.engine import SafetyConfig, SafetyEngine, Screen
from odock.safety.policy import resolve
from odock.safety.stream import MIN_RELEASE, Frame, FramedText, guard_hits
from tests.inprocess import in_process_gateway
from tests.safety.test_safety_routes import RESPONSE_REDACT, keys, oai

SECRETS = {
    "email": "jane.doe@example.com",
    "openai_key": "sk-proj-Abc123Def456Ghi789Jkl012Mno345",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "card": "4111 1111 1111 1111",
}
ENGINE = SafetyEngine(SafetyConfig(enabled=True))
REDACT = resolve(True, True, [{"response": {"pii": "redact", "secrets": "redact"}}])
BLOCK = resolve(True, True, [{"response": {"pii": "block", "secrets": "block"}}])
HEAD = {
    "id": "chatcmpl-upstream-1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "gpt-4o",
    "system_fingerprint": "fp_up",
}


def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return b"data: " + json.dumps({**HEAD, "choices": [choice], **extra}).encode() + b"\n\n"


def wire(pieces: list[str], tail: list[bytes] | None = None) -> bytes:
    """An upstream stream as OpenAI sends it: a role chunk, one chunk per piece, the finish, usage, [DONE]."""
    usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    events = [event({"role": "assistant", "content": ""}), *(event({"content": p}) for p in pieces)]
    events += tail or []
    events += [event({}, "stop"), b"data: " + json.dumps({**HEAD, "choices": [], "usage": usage}).encode()]
    return b"".join(events) + b"\n\ndata: [DONE]\n\n"


def framed(policy: Any = REDACT) -> FramedText:
    screen = Screen(policy)
    return FramedText(ENGINE.config.hold_chars, guard_hits(ENGINE, screen), openai_chat.with_content, None)


async def _chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def relay(parts: list[bytes], policy: Any = REDACT) -> tuple[bytes, Any]:
    """What the framed path sends for an upstream body read in `parts`, and the call's context (usage)."""
    ctx = SimpleNamespace(usage=None, raw_usage=None)
    call: Any = SimpleNamespace(ctx=ctx)
    out = b"".join([chunk async for chunk in _frames(call, _chunks(parts), framed(policy), True)])
    return out, ctx


def client_text(body: bytes) -> str:
    """The answer a client reads, each event checked against the openai SDK's chunk type."""
    text = ""
    for block in body.split(b"\n\n"):
        if not block or block == b"data: [DONE]" or block.startswith(b":"):
            continue  # an SSE comment is not an event
        chunk = ChatCompletionChunk.model_validate_json(block.removeprefix(b"data: "))
        text += "".join(c.delta.content or "" for c in chunk.choices)
    return text


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points) if b > a]


async def test_nothing_to_redact_goes_out_as_the_upstreams_bytes() -> None:
    body = wire(["Hello", " there, ", "how can I help?"])
    out, ctx = await relay([body])
    assert out == body
    assert ctx.usage is not None and ctx.usage.output_tokens == 5


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    category=st.sampled_from(sorted(SECRETS)),
    cuts=st.lists(st.integers(min_value=0, max_value=500), max_size=30),
    reads=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
    lead=st.text(alphabet="abc de\n", max_size=300),
)
async def test_a_secret_split_across_events_and_reads_never_leaves(
    category: str, cuts: list[int], reads: list[int], lead: str
) -> None:
    secret = SECRETS[category]
    text = f"{lead} {secret} tail"
    body = wire(split(text, cuts))
    points = sorted({r % (len(body) + 1) for r in reads} | {0, len(body)})
    out, _ = await relay([body[a:b] for a, b in itertools.pairwise(points)])
    marker = f"[REDACTED_{category.upper()}]"
    assert secret.encode() not in out
    answer = client_text(out)
    assert answer.replace(marker, secret) == text  # nothing lost, nothing repeated, in order
    assert b'"system_fingerprint":"fp_up"' in out.replace(b" ", b"")  # the upstream's own frames


async def test_hold_back_is_bounded() -> None:
    guard = framed()
    words = ("lorem ipsum dolor sit amet " * 60).split(" ")
    sent = released = 0
    for word in words:
        piece = word + " "
        sent += len(piece)
        out = guard.push(Frame(event({"content": piece}), piece, event({"content": piece})[6:-2]))
        released += len(client_text(out))
        assert sent - released <= ENGINE.config.hold_chars + MIN_RELEASE + 16


async def test_an_event_longer_than_the_hold_back_is_cut_without_repeating_its_role() -> None:
    long = "word " * 400
    role_event = event({"role": "assistant", "content": "Sure: "})
    guard = framed()
    first = guard.push(Frame(role_event, "Sure: ", role_event[6:-2]))
    body = event({"content": long})
    out = first + guard.push(Frame(body, long, body[6:-2]))
    assert out  # released while the event's end is still held
    assert len(client_text(out)) >= len("Sure: " + long) - ENGINE.config.hold_chars - MIN_RELEASE - 5
    rest = guard.flush()
    assert client_text(out + rest) == "Sure: " + long
    assert b'"role"' not in rest  # the held rest of a split event does not announce the role again


@pytest.mark.parametrize("category", ["email", "openai_key"])
async def test_a_block_ends_the_stream_before_the_secret_leaves(category: str) -> None:
    secret = SECRETS[category]
    text = "x " * 200 + secret + " y"
    pieces = [text[i : i + 7] for i in range(0, len(text), 7)]
    sent: list[bytes] = []
    ctx = SimpleNamespace(usage=None, raw_usage=None)
    with pytest.raises(Forbidden) as caught:
        async for chunk in _frames(
            SimpleNamespace(ctx=ctx),  # type: ignore[arg-type]
            _chunks([wire(pieces)]),
            framed(BLOCK),
            True,
        ):
            sent.append(chunk)
    assert caught.value.code == "safety_blocked"
    assert secret.encode() not in b"".join(sent)


async def test_a_chunk_the_framed_path_cannot_read_hands_over_to_the_decoded_path(tmp_path: Path) -> None:
    """Tool calls (and reasoning, log probabilities, several choices) leave the framed path mid-stream: the
    held text is screened on the decoded path, and the client reads one consistent stream with the SDK."""
    async with in_process_gateway(tmp_path) as gw:
        k = await keys(gw)
        client = oai(gw, k["response_redact"])
        stream = await client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "write to jane.doe@example.com [[mock tool=send_mail]]"}],
            stream=True,
        )
        calls = ""
        roles = []
        async for chunk in stream:
            for choice in chunk.choices:
                roles += [choice.delta.role] if choice.delta.role else []
                for call in choice.delta.tool_calls or ():
                    calls += call.function.arguments if call.function and call.function.arguments else ""
        assert "jane.doe@example.com" not in calls and "[REDACTED_EMAIL]" in calls
        assert roles == ["assistant"]  # announced once, by the upstream's own first chunk


async def test_the_native_route_keeps_the_upstreams_frames(tmp_path: Path) -> None:
    """With SafetySec's response phase on, a streamed answer still carries what the upstream sent (its
    fingerprint and service tier, which the gateway's own encoder does not write), redacted where needed."""
    assert RESPONSE_REDACT["safety"]["response"]
    async with in_process_gateway(tmp_path) as gw:
        k = await keys(gw)
        stream = await oai(gw, k["response_redact"]).chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "say jane.doe@example.com back [[mock chunks=9]]"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert "[REDACTED_EMAIL]" in text and "jane.doe@example.com" not in text
        assert {c.system_fingerprint for c in chunks} == {"fp_mock"}
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


async def test_a_keep_alive_comment_keeps_its_place_and_the_answer_is_intact() -> None:
    """A read that is not all plain chunks (an SSE comment here) is queued event by event, in order."""
    body = wire(["Mail jane.doe", "@example.com now"], tail=[b": keep-alive\n\n"])
    out, _ = await relay([body])
    assert client_text(out) == "Mail [REDACTED_EMAIL] now"
    assert out.index(b": keep-alive") > out.index(b"[REDACTED_EMAIL]")
    assert b"jane.doe" not in out


async def test_a_stream_cut_before_done_is_an_error_not_an_end() -> None:
    """The body ends without [DONE]: the framed path raises (the route ends the stream with its error event),
    and nothing it held leaves."""
    body = wire(["The key is sk-proj-Abc123Def456Ghi789Jkl012Mno345 and", " that is all."])
    cut = body[: body.index(b"data: [DONE]")]
    sent: list[bytes] = []
    with pytest.raises(UpstreamError):
        ctx = SimpleNamespace(usage=None, raw_usage=None)
        async for chunk in _frames(SimpleNamespace(ctx=ctx), _chunks([cut]), framed(), True):  # type: ignore[arg-type]
            sent.append(chunk)
    assert b"sk-proj-" not in b"".join(sent)


@pytest.mark.parametrize("directive", ["error_after=3", "cut_after=3"])
async def test_an_upstream_failing_mid_stream_ends_with_an_error_the_sdk_raises(
    tmp_path: Path, directive: str
) -> None:
    """An upstream error event (not a plain chunk: the decoded path takes over and raises) or a cut connection
    mid-answer: the client's SDK raises on the gateway's error event; no clean end, no held text."""
    async with in_process_gateway(tmp_path) as gw:
        k = await keys(gw)
        stream = await oai(gw, k["response_redact"]).chat.completions.create(
            model="gpt-test",
            messages=[
                {"role": "user", "content": f"say jane.doe@example.com back [[mock chunks=8 {directive}]]"}
            ],
            stream=True,
        )
        seen = ""
        with pytest.raises(openai.APIError):
            async for chunk in stream:
                seen += "".join(c.delta.content or "" for c in chunk.choices)
        assert "jane.doe@example.com" not in seen
