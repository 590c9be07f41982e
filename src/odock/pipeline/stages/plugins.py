"""The plugin stages (reference §2.2 steps 9, 15, 18, 22; §8): thin hooks over `odock.plugins.Plugins`, each
placed in the stage list only when its phase has a plugin, so an empty phase costs nothing.

    pre_route slot:    post_response (registers the run for the call's end) · post_upstream (after-hook) · pre_route
    pre_upstream slot: pre_upstream · stream_chunk (each normalized delta)

post_upstream sits in the pre_route slot so that its after-hook runs after SafetySec's response phase (after-hooks
run in reverse list order: step 17, then 18); stream_chunk sits last so that it sees deltas SafetySec already
screened. A stage declares needs_request / needs_response only when one of its plugins does, so native routes
stay byte relays unless a plugin reads the call.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import msgspec

from odock.errors import GatewayError, PluginFailed
from odock.pipeline.call import estimate_tokens
from odock.pipeline.stage import Stage

if TYPE_CHECKING:
    from odock.model import GatewayRequest, GatewayResponse, StreamEvent
    from odock.pipeline.call import Call
    from odock.plugins import Plugins


class _PluginStage(Stage):
    def __init__(self, engine: Plugins) -> None:
        self.engine = engine


class PostResponsePlugins(_PluginStage):
    """Step 22: once the call is over and answered (however it ended), post_response runs, queued when async."""

    name = "plugins_post_response"

    async def before(self, call: Call) -> None:
        engine, ctx = self.engine, call.ctx

        async def at_end() -> None:
            await engine.after_response(ctx, call.request)

        call.defer(at_end)


class PostUpstreamPlugins(_PluginStage):
    """Step 18: the upstream answered. A unary answer can still be changed or blocked before it is written; a
    stream has been delivered by then (stream_chunk screens streams), so its run is recorded only."""

    name = "plugins_post_upstream"

    async def after(self, call: Call, response: GatewayResponse | None) -> None:
        if call.ctx.stream:
            with contextlib.suppress(GatewayError):  # the stream is out: nothing left to block
                await self.engine.run("post_upstream", call.ctx, call.request, None)
            return
        _, changed = await self.engine.run("post_upstream", call.ctx, call.request, response)
        if response is not None and changed is not None and changed is not response:
            # the route encodes the object it passed in: copy the replacement over it
            for field in response.__struct_fields__:
                setattr(response, field, getattr(changed, field))


class PreRoutePlugins(_PluginStage):
    """Step 9: after the body is decoded, before model access; a plugin may still change the model."""

    name = "plugins_pre_route"

    async def before(self, call: Call) -> None:
        was = _shape(call.request)
        request, _ = await self.engine.run("pre_route", call.ctx, call.request)
        adopt(call, request, was, before_access=True)
        if request is not None and modified(call, "pre_route"):
            remeasure(call, request)


class PreUpstreamPlugins(_PluginStage):
    """Step 15: after the reservations (a block releases them through their compensations), before routing."""

    name = "plugins_pre_upstream"

    async def before(self, call: Call) -> None:
        was = _shape(call.request)
        request, _ = await self.engine.run("pre_upstream", call.ctx, call.request)
        adopt(call, request, was, before_access=False)


class StreamChunkPlugins(_PluginStage):
    """Each normalized stream delta, in every dialect; a block ends the stream with the route's error event."""

    name = "plugins_stream_chunk"

    def on_delta(self, call: Call, event: StreamEvent) -> StreamEvent | list[StreamEvent] | None:
        return self.engine.chunk(call.ctx, event)


def _shape(request: GatewayRequest | None) -> tuple[str, bool, int | None] | None:
    """What the gates measured of a request: model, stream flag, output cap."""
    return None if request is None else (request.model, request.stream, request.max_tokens)


def adopt(
    call: Call,
    request: GatewayRequest | None,
    was: tuple[str, bool, int | None] | None,
    *,
    before_access: bool,
) -> None:
    """Make the plugins' request the call's, keeping what the gates measured consistent with what they changed."""
    if request is None:
        return
    ctx = call.ctx
    if request is not call.request:
        call.request = ctx.request = request
    model, stream, max_tokens = was or (ctx.requested_model, ctx.stream, ctx.max_tokens)
    if request.stream != stream:
        raise PluginFailed("a plugin changed the request's stream flag, which the route has already chosen")
    if request.model != model:
        if not before_access:
            raise PluginFailed("a pre_upstream plugin changed the model after the access check")
        ctx.requested_model = request.model
    if request.max_tokens is not None and request.max_tokens != max_tokens:
        if not before_access and ctx.max_tokens is not None and request.max_tokens > ctx.max_tokens:
            raise PluginFailed("a pre_upstream plugin raised max_tokens above what the call reserved")
        # every route sends a cap the gateway chose in its own field
        ctx.max_tokens, ctx.output_cap_added = request.max_tokens, True


def modified(call: Call, phase: str) -> bool:
    runs = call.ctx.plugin_runs or ()
    return any(run.phase == phase and run.outcome == "modify" for run in runs)


def remeasure(call: Call, request: GatewayRequest) -> None:
    """A pre_route plugin may have added input (a system prompt): the reservations that follow must bound it too.
    The normalized request's JSON size bounds its text bytes, as the body's size bounded the client's."""
    size = len(msgspec.json.encode(request))
    ctx = call.ctx
    if ctx.prompt is not None and size > ctx.prompt.size:
        ctx.prompt.size = size
    ctx.estimated_input_tokens = max(ctx.estimated_input_tokens, estimate_tokens(size))


def _declaring(cls: type[_PluginStage], engine: Plugins, phase: str) -> _PluginStage:
    """An instance of `cls` whose needs_request / needs_response are those of its phase's plugins (a stream is
    decoded for stream_chunk anyway: its plugins never make a unary answer decode)."""
    needs_request = engine.needs_request(phase)
    needs_response = engine.needs_response(phase) and phase != "stream_chunk"
    if needs_request == cls.needs_request and needs_response == cls.needs_response:
        return cls(engine)
    declared: type[_PluginStage] = type(
        cls.__name__, (cls,), {"needs_request": needs_request, "needs_response": needs_response}
    )
    return declared(engine)


def plugin_stages(engine: Plugins) -> tuple[list[Stage], list[Stage]]:
    """The stages of the configured phases: (pre_route slot, pre_upstream slot)."""
    pre_route: list[Stage] = []
    if engine.phase("post_response"):
        pre_route.append(_declaring(PostResponsePlugins, engine, "post_response"))
    if engine.phase("post_upstream"):
        pre_route.append(_declaring(PostUpstreamPlugins, engine, "post_upstream"))
    if engine.phase("pre_route"):
        pre_route.append(_declaring(PreRoutePlugins, engine, "pre_route"))
    pre_upstream: list[Stage] = []
    if engine.phase("pre_upstream"):
        pre_upstream.append(_declaring(PreUpstreamPlugins, engine, "pre_upstream"))
    if engine.phase("stream_chunk"):
        pre_upstream.append(_declaring(StreamChunkPlugins, engine, "stream_chunk"))
    return pre_route, pre_upstream
