"""SafetySec and plugins on MCP calls (reference §2.3 leaves them out: off by default, a server opts in).

- SafetySec: a server whose own `policies.safety` says `enabled: true` has its calls screened under the policy
  resolved from the organisation's, team's, key's and server's sections (strictest wins, as for a model). The
  request phase screens `tools/call` and `prompts/get` arguments before the upstream (block: 403
  safety_blocked; redact: the upstream receives the redacted arguments); the response phase screens the
  results (`odock.mcp.screening`) in JSON and SSE bodies (block: an error for that request; redact: the result
  rewritten). The built-in detectors and the operator's patterns run, then, as for LLM calls, the session score
  and the external guard: the arguments' injection and jailbreak signals raise the caller's session score (same
  fingerprint), and a call carrying `tools/call`, `prompts/get` or `resources/read` from a session at the
  threshold is refused (403 safety_blocked); with `SAFETY_GUARD_URL` the guard sees the arguments' strings, then
  each answer's result texts (a whole JSON-RPC message, in JSON or in one SSE event), and may allow, modify (the
  new texts go back into the body) or block; its failures follow `SAFETY_GUARD_FAIL`. The session's script is
  its own Redis round trip in cluster mode (it does not ride the MCP gate's, as the LLM calls' does).
- Plugins: a server with `config.plugins: true` runs the configured pre_upstream, post_upstream and
  post_response phases on a normalized view: the request is an assistant message whose tool calls are the
  arguments (JSON text; `name` the tool or prompt), the answer a list of text parts (every result text, in
  order). What a plugin changes goes back into the JSON-RPC body; a block is the plugin's error.

The stage is in the MCP pipeline only while some server opts in (`Gateway.rewire`), and stands aside on the calls
of servers that do not: zero cost when off. Decisions go to the usage record as for LLM calls, never the text.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from odock import metrics
from odock.errors import GatewayError, PluginFailed
from odock.mcp.protocol import encode_messages, error_body, sse_payload, sse_with_payload
from odock.mcp.screening import (
    ARGUMENT_METHODS,
    SCREENED_METHODS,
    answered_results,
    walk_arguments,
    walk_result,
)
from odock.model import ContentPart, GatewayRequest, GatewayResponse, Message, ToolCall
from odock.pipeline.stage import Stage
from odock.pipeline.stages.mcp import mcp_request
from odock.pipeline.stages.safety import count_decisions
from odock.safety.engine import Screen

if TYPE_CHECKING:
    from odock.mcp.call import McpRequest
    from odock.mcp.protocol import Message as McpMessage
    from odock.pipeline.call import Call
    from odock.pipeline.stages.safety import SafetySec
    from odock.plugins import Plugins

T = TypeVar("T")
Walk = Callable[[T, Callable[[str], str]], None]  # a walk over the texts of one item, replacing each

_encode = msgspec.json.encode
_decode = msgspec.json.decode


class McpScreening(Stage):
    """The request phase of SafetySec, then plugins' pre_upstream, on a call whose server opted in; the
    response phase is handed to the relay (`McpRequest.screen`)."""

    name = "mcp_screen"

    def __init__(self, safety: SafetySec | None, plugins: Plugins | None) -> None:
        self.safety = safety  # the LLM calls' SafetySec: its engine, sessions and external guard
        self.plugins = plugins

    async def before(self, call: Call) -> None:
        state, ctx = mcp_request(call), call.ctx
        plan, server = state.plan, state.server
        assert plan is not None and server is not None
        screen = None
        if plan.safety and self.safety is not None:
            policy = self.safety.engine.policy(
                ctx.organisation.policies if ctx.organisation else None,
                ctx.team.policies if ctx.team else None,
                ctx.key.policies if ctx.key else None,
                server.policies,
            )
            if policy.enabled:
                screen = Screen(policy, sink=ctx)
                call.defer(partial(count_decisions, screen))
        plugins = self.plugins if plan.plugins else None
        if screen is None and plugins is None:
            return
        get = call.exchange.method == "GET"
        ids = None if get else frozenset(m.id for m in state.messages if m.method in SCREENED_METHODS)
        guard = McpGuard(call, state, self.safety, screen, plugins, ids)
        if ids is None or ids:
            state.screen = guard
        try:
            await guard.request()
        except GatewayError:
            state.outcome = "blocked"
            raise
        if plugins is not None and plugins.phase("post_response"):
            view = guard.view

            async def at_end() -> None:
                await plugins.after_response(ctx, view)

            call.defer(at_end)


class McpGuard:
    """One call's SafetySec screen and plugin view, across the request and the response phases."""

    __slots__ = ("call", "ctx", "ids", "plugins", "safety", "screen", "state", "view")

    def __init__(
        self,
        call: Call,
        state: McpRequest,
        safety: SafetySec | None,
        screen: Screen | None,
        plugins: Plugins | None,
        ids: frozenset[Any] | None,
    ) -> None:
        self.call, self.ctx, self.state, self.safety = call, call.ctx, state, safety
        self.screen, self.plugins, self.ids = screen, plugins, ids
        self.view: GatewayRequest | None = None

    # --- request phase ------------------------------------------------------------------------------------------

    async def request(self) -> None:
        state = self.state
        carriers = [m for m in state.messages if m.method in ARGUMENT_METHODS]
        changed = await self._safety_request(carriers) if self.screen is not None else False
        if self.plugins is not None and state.messages:
            sent = [_encode(m.params.get("arguments") or {}).decode() for m in carriers]
            calls = [
                ToolCall(id=str(m.id), name=m.name or "", arguments=text)
                for m, text in zip(carriers, sent, strict=True)
            ]
            server = state.server
            assert server is not None
            self.view = GatewayRequest(
                model=server.slug, messages=[Message(role="assistant", tool_calls=calls or None)]
            )
            if self.plugins.phase("pre_upstream"):
                request, _ = await self.plugins.run("pre_upstream", self.ctx, self.view)
                changed = _adopt_arguments(request or self.view, carriers, sent) or changed
        if changed:
            state.body = encode_messages(state.messages, state.batch)
            self.ctx.body_bytes = len(state.body)

    async def _safety_request(self, carriers: list[McpMessage]) -> bool:
        """SafetySec's request phase in the LLM calls' order (`odock.pipeline.stages.safety`): the built-in
        detectors, the session score, the external guard; returns whether the arguments changed."""
        safety, screen = self.safety, self.screen
        assert safety is not None and screen is not None
        changed = False
        if carriers and screen.policy.active("request"):
            changed = self._builtin("request", carriers, walk_arguments)
        if any(m.method in SCREENED_METHODS for m in self.state.messages):
            # only calls that carry text in or out: listings, pings and the handshake do not pay a session look-up
            pending = safety.session_score(self.call, screen)
            if pending is not None:
                await pending
        if safety.guard is not None and carriers:
            changed = await self._guarded("request", carriers, walk_arguments) or changed
        return changed

    def _about(self) -> dict[str, Any]:
        """What the guard is told of an MCP call besides its texts: the server, and the tools called."""
        state = self.state
        server = state.server
        return {"mcp": {"server": server.slug if server is not None else state.ref, "tools": state.tools}}

    def _builtin(self, phase: str, items: list[T], walk: Walk[T]) -> bool:
        """SafetySec's detectors over one phase's texts in `items` (each distinct text screened once), in place;
        returns whether any changed (raises on a block)."""
        safety, screen = self.safety, self.screen
        assert safety is not None and screen is not None
        engine = safety.engine
        done: dict[str, str] = {}
        changed = False

        def visit(text: str) -> str:
            nonlocal changed
            out = done.get(text)
            if out is None:
                out = done[text] = engine.screen_text(text, screen, phase)
                changed = changed or out != text
            return out

        for item in items:
            walk(item, visit)
        metrics.TALLY.inc(metrics.SECURITY_MODULE_RUNS, (phase, "builtin"))
        return changed

    async def _guarded(self, phase: str, items: list[T], walk: Walk[T]) -> bool:
        """The external guard's verdict on one phase's texts in `items`, applied in place; returns whether it
        changed them (raises on a block)."""
        safety, screen = self.safety, self.screen
        assert safety is not None and screen is not None
        texts = _guard_texts(items, walk)
        swap = await safety.guard_verdict(self.call, screen, phase, texts, self._about())
        if swap is None:
            return False
        for item in items:
            walk(item, swap)
        return True

    # --- response phase -----------------------------------------------------------------------------------------

    async def answer_json(self, body: bytes) -> bytes:
        """A JSON answer after the response phase (raises on a block: the client gets the error instead)."""
        try:
            payload = _decode(body)
        except msgspec.DecodeError:
            return body
        try:
            changed = await self._answer(payload)
        except GatewayError:
            self.state.outcome = "blocked"
            raise
        return _encode(payload) if changed else body

    async def answer_event(self, event: bytes) -> bytes:
        """One SSE event after the response phase; a blocked answer becomes a JSON-RPC error for its request (the
        stream goes on: its other answers are not the block's business)."""
        parsed = sse_payload(event)
        if parsed is None:
            return event
        lines, payload = parsed
        try:
            changed = await self._answer(payload)
        except GatewayError as err:
            self.state.outcome = "blocked"
            answered = next(answered_results(payload, self.ids), None)
            rid = answered[0] if answered is not None else None
            return b"event: message\ndata: " + error_body(err, rid) + b"\n\n"
        return sse_with_payload(lines, payload) if changed else event

    async def _answer(self, payload: Any) -> bool:
        """Screen the results in `payload` in place; return whether any changed."""
        results = [result for _, result in answered_results(payload, self.ids)]
        if not results:
            return False
        changed = False
        screen = self.screen
        if screen is not None and screen.policy.active("response"):
            changed = self._builtin("response", results, walk_result)
        safety = self.safety
        if screen is not None and safety is not None and safety.guard is not None:
            # every answer is a whole JSON-RPC message (one SSE event at most): the guard sees complete results
            changed = await self._guarded("response", results, walk_result) or changed
        if self.plugins is not None and self.plugins.phase("post_upstream"):
            changed = await self._post_upstream(results) or changed
        return changed

    async def _post_upstream(self, results: list[dict[str, Any]]) -> bool:
        plugins = self.plugins
        assert plugins is not None
        texts = _texts(results, walk_result)
        server = self.state.server
        assert server is not None
        answer = GatewayResponse(
            provider="mcp",
            model=server.slug,
            content_blocks=[ContentPart(type="text", text=text) for text in texts],
        )
        _, changed = await plugins.run("post_upstream", self.ctx, self.view, answer)
        parts = (changed or answer).content_blocks or []
        after = [part.text or "" for part in parts]
        if len(after) != len(texts):
            raise PluginFailed("a post_upstream plugin changed how many texts an MCP result holds")
        if after == texts:
            return False
        replacements = iter(after)
        for result in results:
            walk_result(result, lambda _: next(replacements))
        return True


def _adopt_arguments(request: GatewayRequest, carriers: list[Any], sent: list[str]) -> bool:
    """Write the arguments a pre_upstream plugin changed back into the JSON-RPC messages."""
    calls = request.messages[0].tool_calls if len(request.messages) == 1 else None
    if len(calls or ()) != len(carriers):
        raise PluginFailed("a pre_upstream plugin changed the MCP call's tool calls")
    changed = False
    for message, call, before in zip(carriers, calls or (), sent, strict=True):
        if call.arguments == before:
            continue
        try:
            arguments = _decode(call.arguments)
        except msgspec.DecodeError:
            arguments = None
        if not isinstance(arguments, dict):
            raise PluginFailed("a pre_upstream plugin left MCP arguments that are not a JSON object")
        message.params["arguments"] = arguments
        changed = True
    return changed


def _texts(items: list[T], walk: Walk[T]) -> list[str]:
    """Every text `walk` visits in `items`, in order."""
    texts: list[str] = []

    def collect(text: str) -> str:
        texts.append(text)
        return text

    for item in items:
        walk(item, collect)
    return texts


def _guard_texts(items: list[T], walk: Walk[T]) -> list[str]:
    """The texts the external guard is sent: each distinct non-empty one, once."""
    return list(dict.fromkeys(text for text in _texts(items, walk) if text))
