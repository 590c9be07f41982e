"""Plugins the tests load by `module:attr` path, as an operator's own plugin would be."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from odock.model import StreamEvent, TextDelta
from odock.plugins import Plugin, PluginResult, PluginSetup, PluginView


def request_text(view: PluginView) -> str:
    request = view.request
    return " ".join(m.text() for m in request.messages) if request is not None else ""


class Gate(Plugin):
    """Blocks a request whose text holds `word`; with `status`/`code`/`message` it blocks with its own."""

    needs_request = True

    def __init__(self, setup: PluginSetup) -> None:
        self.word = setup.config.get("word", "forbidden")
        self.status = setup.config.get("status", 403)
        self.code = setup.config.get("code", "plugin_blocked")
        self.message = setup.config.get("message", "")

    def decide(self, view: PluginView) -> PluginResult | None:
        if self.word in request_text(view):
            return PluginResult.block(self.message, status=self.status, code=self.code, findings=("word",))
        return None

    async def pre_route(self, view: PluginView) -> PluginResult | None:
        return self.decide(view)

    async def pre_upstream(self, view: PluginView) -> PluginResult | None:
        return self.decide(view)


class Upper(Plugin):
    """When the request says "shout": upper-cases the unary answer and every streamed text delta; a request that
    says "explode" is blocked on its third text delta (mid-stream)."""

    needs_request = True
    needs_response = True

    async def post_upstream(self, view: PluginView) -> PluginResult | None:
        response = view.response
        if response is None or "shout" not in request_text(view):
            return None
        response.content = response.content.upper()
        for block in response.content_blocks or ():
            if block.text is not None:
                block.text = block.text.upper()
        return PluginResult.modify(findings=("upper",))

    def stream_chunk(self, view: PluginView, event: StreamEvent) -> PluginResult | None:
        if "mode" not in view.state:
            text = request_text(view)
            view.state["mode"] = "explode" if "explode" in text else "shout" if "shout" in text else ""
            view.state["deltas"] = 0
        if not isinstance(event, TextDelta) or not view.state["mode"]:
            return None
        view.state["deltas"] += 1
        if view.state["mode"] == "explode" and view.state["deltas"] >= 3:
            return PluginResult.block("stopped mid-stream")
        return PluginResult.modify(event=TextDelta(event.text.upper(), event.index))


class Slow(Plugin):
    """Sleeps longer than any sane timeout."""

    def __init__(self, setup: PluginSetup) -> None:
        self.seconds = float(setup.config.get("seconds", 5))

    async def pre_route(self, view: PluginView) -> PluginResult | None:
        await asyncio.sleep(self.seconds)
        return None

    async def pre_upstream(self, view: PluginView) -> PluginResult | None:
        await asyncio.sleep(self.seconds)
        return None


class Broken(Plugin):
    """Raises in every phase it runs in."""

    def __init__(self, setup: PluginSetup) -> None:
        pass

    async def pre_route(self, view: PluginView) -> PluginResult | None:
        raise RuntimeError("broken plugin")

    async def pre_upstream(self, view: PluginView) -> PluginResult | None:
        raise RuntimeError("broken plugin")

    def stream_chunk(self, view: PluginView, event: StreamEvent) -> PluginResult | None:
        raise RuntimeError("broken plugin")


class Recorder(Plugin):
    """Remembers what each run saw (class-level, for the tests to read)."""

    seen: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, setup: PluginSetup) -> None:
        self.reads = list(setup.config.get("reads", []))

    async def _note(self, view: PluginView) -> PluginResult | None:
        entry: dict[str, Any] = {"phase": view.phase, "request_id": view.request_id, "status": view.status}
        for read in self.reads:
            try:
                entry[read] = await getattr(view.storage, read)()
            except PermissionError as exc:
                entry[read] = f"denied: {exc}"
        Recorder.seen.append(entry)
        return PluginResult.allow("seen")

    async def pre_route(self, view: PluginView) -> PluginResult | None:
        return await self._note(view)

    async def post_response(self, view: PluginView) -> PluginResult | None:
        return await self._note(view)


class Concurrent(Plugin):
    """Counts how many of its runs overlap (class-level), holding each run for a moment."""

    running = 0
    peak = 0

    async def pre_route(self, view: PluginView) -> PluginResult | None:
        Concurrent.running += 1
        Concurrent.peak = max(Concurrent.peak, Concurrent.running)
        await asyncio.sleep(0.01)
        Concurrent.running -= 1
        return PluginResult.allow("counted")


class Held(Plugin):
    """A post_response plugin that waits until the test releases it."""

    release: asyncio.Event | None = None
    done: ClassVar[list[str]] = []

    async def post_response(self, view: PluginView) -> PluginResult | None:
        assert Held.release is not None
        await Held.release.wait()
        Held.done.append(view.request_id)
        return None
