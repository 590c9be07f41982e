"""The OpenAI same-dialect relay: malformed upstream events are relayed, never a crash mid-stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from odock.edge.endpoints.passthrough import openai_sse
from odock.model import Usage


class _Upstream:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


async def _relay(chunks: list[bytes]) -> tuple[bytes, Any]:
    call: Any = SimpleNamespace(ctx=SimpleNamespace(raw_usage=None, usage=Usage()))
    out = b"".join([c async for c in openai_sse(call, _Upstream(chunks), show_usage_chunk=False)])  # type: ignore[arg-type]
    return out, call.ctx


async def test_a_malformed_usage_event_is_relayed_and_the_stream_goes_on() -> None:
    bad = b'data: {"usage":{"prompt_tokens": 1,\n\n'  # cut JSON
    listed = b'data: ["usage":{}]\n\n'  # not an object
    good = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
    out, ctx = await _relay([bad, listed, b'data: {"choices":[{"delta":{}}]}\n\n', good, b"data: [DONE]\n\n"])
    assert bad in out and listed in out and b"[DONE]" in out
    assert good not in out  # the usage-only chunk the client did not ask for is still hidden
    assert (ctx.usage.input_tokens, ctx.usage.output_tokens) == (3, 2)


async def test_a_usage_event_split_across_reads_is_decoded() -> None:
    event = b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7}}\n\n'
    _, ctx = await _relay([event[:17], event[17:40], event[40:], b"data: [DONE]\n\n"])
    assert (ctx.usage.input_tokens, ctx.usage.output_tokens) == (5, 7)
