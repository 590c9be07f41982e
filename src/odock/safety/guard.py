"""The external guard: an HTTP webhook an operator points at Presidio, a classifier service or their own code.

The gateway POSTs, for each screened request (after the built-in detectors, so it sees redacted text):

    {"phase": "request", "request_id": "...", "route": "openai.chat", "model": "gpt-x", "texts": ["...", ...]}

(for an MCP call `route` is "mcp", `model` null, and `"mcp": {"server": "<slug>", "tools": ["<tool>", ...]}`
says which server and tools the texts are the arguments or results of)

signed with HMAC-SHA256 over `{timestamp}.{body}` (headers `X-Odock-Timestamp`, `X-Odock-Signature:
sha256=<hex>`), and expects `{"action": "allow"}`, `{"action": "block", "category": "..."}` or
`{"action": "modify", "texts": [...]}` (the same number of texts, each replacing its original). A timeout, a
non-2xx answer or an unreadable one is a guard failure: `SAFETY_GUARD_FAIL=closed` (default) refuses the call,
`open` lets it through; both are counted.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any

import msgspec

from odock.transport.base import Timeouts, Transport, UpstreamRequest

__all__ = ["GuardConfig", "GuardFailed", "GuardVerdict", "WebhookGuard", "sign"]


@dataclass(frozen=True, slots=True)
class GuardConfig:
    url: str
    secret: str = ""
    timeout_s: float = 2.0
    fail_open: bool = False


@dataclass(frozen=True, slots=True)
class GuardVerdict:
    action: str  # allow | modify | block
    texts: list[str] | None = None
    category: str = "external"


class GuardFailed(Exception):
    """The guard could not give a verdict (timeout, transport error, bad answer)."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class WebhookGuard:
    def __init__(self, config: GuardConfig, transport: Transport) -> None:
        self.config = config
        self.transport = transport
        t = config.timeout_s
        self.timeouts = Timeouts(connect_s=t, first_byte_s=t, total_s=t)

    async def check(self, payload: dict[str, Any]) -> GuardVerdict:
        body = msgspec.json.encode(payload)
        timestamp = str(int(time.time()))
        headers = {"content-type": "application/json", "x-odock-timestamp": timestamp}
        if self.config.secret:
            headers["x-odock-signature"] = sign(self.config.secret, timestamp, body)
        try:
            resp = await self.transport.send(
                UpstreamRequest("POST", self.config.url, headers, body, self.timeouts)
            )
            data = await resp.read()
        except Exception as exc:  # the transport's own errors, timeouts included
            raise GuardFailed(type(exc).__name__) from None
        if not 200 <= resp.status < 300:
            raise GuardFailed(f"status {resp.status}")
        return _verdict(data, len(payload.get("texts") or ()))


def _verdict(data: bytes, expected_texts: int) -> GuardVerdict:
    try:
        answer = msgspec.json.decode(data)
    except msgspec.DecodeError:
        raise GuardFailed("invalid JSON") from None
    if not isinstance(answer, dict) or answer.get("action") not in ("allow", "modify", "block"):
        raise GuardFailed("no action")
    action = answer["action"]
    category = answer.get("category")
    category = (
        category
        if isinstance(category, str) and category.isidentifier() and len(category) <= 40
        else "external"
    )
    if action == "modify":
        texts = answer.get("texts")
        if (
            not isinstance(texts, list)
            or len(texts) != expected_texts
            or not all(isinstance(t, str) for t in texts)
        ):
            raise GuardFailed("modify without one text per text sent")
        return GuardVerdict("modify", texts, category)
    return GuardVerdict(action, None, category)
