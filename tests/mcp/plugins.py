"""A plugin the MCP tests load by `module:attr` path: it reads the MCP call's normalized view."""

from __future__ import annotations

from odock.plugins import Plugin, PluginResult, PluginSetup, PluginView


class ArgumentGate(Plugin):
    """Blocks a tool call whose arguments hold `word` (409 `tool_refused`), with the tool's name in the message."""

    needs_request = True

    def __init__(self, setup: PluginSetup) -> None:
        self.word = setup.config.get("word", "forbidden")

    async def pre_upstream(self, view: PluginView) -> PluginResult | None:
        request = view.request
        for message in request.messages if request is not None else ():
            for call in message.tool_calls or ():
                if self.word in call.arguments:
                    return PluginResult.block(f"{call.name} refused", status=409, code="tool_refused")
        return None
