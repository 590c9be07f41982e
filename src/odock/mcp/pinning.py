"""Tool-definition pinning (`config.pin_tools`: `alert` or `block`): the first definition of each tool this process
sees in a `tools/list` answer (a hash of its name, description and input schema) is pinned; a later, different
definition is counted and logged (`alert`), or also dropped from the list and its calls refused with
`403 mcp_guardrail_block` (`block`) — a tool quietly rewritten upstream ("rug pull") does not reach the model.

Pins live in this process (each process pins what it first sees); they reset when the gateway restarts.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import msgspec

from odock import metrics

log = logging.getLogger("odock.mcp")
MAX_PINS = 100_000


def fingerprint(tool: dict[str, Any]) -> str:
    material = msgspec.json.encode(
        [tool.get("name"), tool.get("description"), tool.get("inputSchema")], order="sorted"
    )
    return hashlib.sha256(material).hexdigest()


class ToolPins:
    def __init__(self) -> None:
        self._pins: dict[tuple[str, str], str] = {}
        self._changed: set[tuple[str, str]] = set()

    def admit(self, server_id: str, tool: dict[str, Any], mode: str) -> bool:
        """Whether a listed tool may stay in the list (pins it when first seen)."""
        key = (server_id, str(tool.get("name", "")))
        digest = fingerprint(tool)
        pinned = self._pins.get(key)
        if pinned is None:
            if len(self._pins) < MAX_PINS:
                self._pins[key] = digest
            return True
        if pinned == digest:
            return True
        if key not in self._changed:
            log.warning("MCP tool definition changed since it was pinned: server %s, tool %s", key[0], key[1])
        self._changed.add(key)
        metrics.child(metrics.MCP_BLOCKS, "pin_changed").inc()
        return mode != "block"

    def refused(self, server_id: str, name: str) -> bool:
        """Whether calls to this tool are refused (its definition changed, in `block` mode)."""
        return (server_id, name) in self._changed
