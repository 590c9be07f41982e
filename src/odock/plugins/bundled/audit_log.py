"""`audit_log`: one structured log event per phase it runs in (reference §8.5), through the `odock.audit` logger.

    {"level": "info",              the log level of the events
     "include_prompt": false}      add the request's message text (off by default: prompts are not logged)

Events carry the call's identity and outcome (request id, route, organisation, key id, model, stream, status,
outcome, tokens, latency), never the prompt or the answer unless `include_prompt` says so.
"""

from __future__ import annotations

import logging
from typing import Any

from odock.plugins.base import Plugin, PluginResult, PluginSetup, PluginView

audit = logging.getLogger("odock.audit")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class AuditLog(Plugin):
    def __init__(self, setup: PluginSetup) -> None:
        config = setup.config
        unknown = sorted(set(config) - {"level", "include_prompt"})
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}")
        level = config.get("level", "info")
        if level not in _LEVELS:
            raise ValueError(f"level: one of {', '.join(_LEVELS)}")
        self.level = _LEVELS[level]
        include = config.get("include_prompt", False)
        if not isinstance(include, bool):
            raise ValueError("include_prompt: expected a boolean")
        self.include_prompt = include
        # the prompt can only be read from the decoded request
        self.needs_request = include  # type: ignore[misc]

    def event(self, view: PluginView) -> dict[str, Any]:
        """The audit event of one phase (what gets logged)."""
        event: dict[str, Any] = {
            "audit_phase": view.phase,
            "request_id": view.request_id,
            "route": view.route,
            "organisation_id": view.organisation_id,
            "team_id": view.team_id,
            "api_key_id": view.api_key_id,
            "model": view.requested_model,
            "stream": view.stream,
        }
        if view.phase in ("post_upstream", "post_response"):
            event.update(
                provider=view.provider,
                status=view.status,
                outcome=view.outcome,
                error_code=view.error_code,
                input_tokens=view.input_tokens,
                output_tokens=view.output_tokens,
                latency_ms=view.elapsed_ms(),
            )
        if self.include_prompt and view.request is not None:
            event["prompt"] = [{"role": m.role, "text": m.text()} for m in view.request.messages]
        return event

    def _log(self, view: PluginView) -> None:
        if audit.isEnabledFor(self.level):
            event = self.event(view)
            audit.log(self.level, "audit %s %s", view.phase, view.request_id, extra={"audit": event})

    async def pre_route(self, view: PluginView) -> PluginResult | None:
        self._log(view)
        return None

    async def pre_upstream(self, view: PluginView) -> PluginResult | None:
        self._log(view)
        return None

    async def post_upstream(self, view: PluginView) -> PluginResult | None:
        self._log(view)
        return None

    async def post_response(self, view: PluginView) -> PluginResult | None:
        self._log(view)
        return None
