"""`request_transform`: the operator's edits to every request, in any dialect (reference §8.5).

    {"system_prompt": "Answer in English.",     a system message placed before the conversation
     "defaults": {"temperature": 0.2},          fields set when the request leaves them out
     "max_tokens_cap": 512}                     the output cap lowered to this (set when the request has none)

Runs in pre_route (before the reservations, which then reserve the capped amount) or pre_upstream.
"""

from __future__ import annotations

from typing import Any

from odock.model import Message
from odock.plugins.base import Plugin, PluginResult, PluginSetup, PluginView

_DEFAULTABLE = {
    "temperature": (int, float),
    "top_p": (int, float),
    "top_k": (int,),
    "max_tokens": (int,),
    "seed": (int,),
    "presence_penalty": (int, float),
    "frequency_penalty": (int, float),
}
_FIELDS = {"system_prompt", "defaults", "max_tokens_cap"}


def _positive(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{where}: expected a positive integer")
    return value


class RequestTransform(Plugin):
    needs_request = True

    def __init__(self, setup: PluginSetup) -> None:
        config = setup.config
        unknown = sorted(set(config) - _FIELDS)
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}")
        prompt = config.get("system_prompt")
        if prompt is not None and (not isinstance(prompt, str) or not prompt):
            raise ValueError("system_prompt: expected a non-empty string")
        self.system_prompt: str | None = prompt
        defaults = config.get("defaults") or {}
        if not isinstance(defaults, dict):
            raise ValueError("defaults: expected an object")
        for name, value in defaults.items():
            kinds = _DEFAULTABLE.get(name)
            if kinds is None:
                raise ValueError(
                    f"defaults.{name}: not a defaultable field ({', '.join(sorted(_DEFAULTABLE))})"
                )
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise ValueError(f"defaults.{name}: expected a number")
        if "max_tokens" in defaults:
            _positive(defaults["max_tokens"], "defaults.max_tokens")
        self.defaults: dict[str, Any] = dict(defaults)
        cap = config.get("max_tokens_cap")
        self.cap = _positive(cap, "max_tokens_cap") if cap is not None else None
        if self.system_prompt is None and not self.defaults and self.cap is None:
            raise ValueError("nothing to do: set system_prompt, defaults or max_tokens_cap")

    def _apply(self, view: PluginView) -> PluginResult | None:
        request = view.request
        if request is None:
            return None
        changed: list[str] = []
        if self.system_prompt is not None:
            request.messages = [Message(role="system", content=self.system_prompt), *request.messages]
            changed.append("system_prompt")
        for name, value in self.defaults.items():
            if getattr(request, name) is None:
                setattr(request, name, value)
                changed.append(f"default:{name}")
        if self.cap is not None and (request.max_tokens is None or request.max_tokens > self.cap):
            request.max_tokens = self.cap
            changed.append("max_tokens_cap")
        return PluginResult.modify(findings=tuple(changed)) if changed else None

    async def pre_route(self, view: PluginView) -> PluginResult | None:
        return self._apply(view)

    async def pre_upstream(self, view: PluginView) -> PluginResult | None:
        return self._apply(view)
