"""`pii_mask`: personal data (and, if asked, credentials) masked in requests and answers, in every dialect, with
SafetySec's detectors (`odock.safety.detectors`): an email becomes `[REDACTED_EMAIL]`, a Luhn-valid card number
`[REDACTED_CARD]`, and so on.

    {"categories": ["pii"],     detector categories or modules (pii, secrets, email, card, …); default pii
     "request": true,           mask the request (pre_route / pre_upstream): messages, content parts, tool calls
     "response": true,          mask the answer (post_upstream) and the streamed text (stream_chunk)
     "hold_chars": 128}         what a stream holds back (at least the longest value to mask)

stream_chunk masks streams with SafetySec's streaming redactor (`odock.safety.stream`): each text channel (a
choice's text, the reasoning text) holds back at most `hold_chars` characters (default 128, the longest bounded
detector's span) and releases at word boundaries, so a value split across any number of deltas is masked before
it leaves; tool-call arguments are held whole and masked at the end. Findings (the categories seen, never the
text) go to the usage record.
"""

from __future__ import annotations

from odock.model import (
    ContentPart,
    GatewayRequest,
    GatewayResponse,
    Message,
    StreamEvent,
    ToolCall,
)
from odock.plugins.base import Plugin, PluginResult, PluginSetup, PluginView
from odock.safety.detectors import CATEGORIES, MODULES, Finding, redact, scan
from odock.safety.engine import SafetyConfig
from odock.safety.stream import StreamRedactor

_FIELDS = {"categories", "request", "response", "hold_chars"}
_STATE = "pii_mask.stream"


class Masker:
    """Masks text and remembers the categories it found."""

    __slots__ = ("categories", "found")

    def __init__(self, categories: frozenset[str]) -> None:
        self.categories = categories
        self.found: set[str] = set()

    def text(self, value: str) -> str:
        findings = scan(value, self.categories)
        if not findings:
            return value
        self.found.update(f.category for f in findings)
        return redact(value, findings)

    def hits(self, value: str) -> list[tuple[Finding, str]]:
        """The stream redactor's view: every finding is redacted."""
        findings = scan(value, self.categories)
        self.found.update(f.category for f in findings)
        return [(f, "redact") for f in findings]

    def parts(self, parts: list[ContentPart]) -> None:
        for part in parts:
            if part.text is not None and part.type in ("text", "refusal", "thinking"):
                part.text = self.text(part.text)

    def tool_calls(self, calls: list[ToolCall] | None) -> None:
        for call in calls or ():
            call.arguments = self.text(call.arguments)

    def message(self, message: Message) -> None:
        if isinstance(message.content, str):
            message.content = self.text(message.content)
        elif message.content:
            self.parts(message.content)
        self.tool_calls(message.tool_calls)

    def request(self, request: GatewayRequest) -> None:
        for message in request.messages:
            self.message(message)

    def response(self, response: GatewayResponse) -> None:
        response.content = self.text(response.content)
        if response.content_blocks:
            self.parts(response.content_blocks)
        self.tool_calls(response.tool_calls)

    def result(self) -> PluginResult | None:
        return PluginResult.modify(findings=tuple(sorted(self.found))) if self.found else None


class PiiMask(Plugin):
    needs_request = True
    needs_response = True

    def __init__(self, setup: PluginSetup) -> None:
        config = setup.config
        unknown = sorted(set(config) - _FIELDS)
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}")
        categories = config.get("categories", ["pii"])
        if not isinstance(categories, list) or not categories:
            raise ValueError("categories: expected a non-empty list")
        bad = sorted(c for c in categories if c not in CATEGORIES and c not in MODULES)
        if bad:
            raise ValueError(
                f"categories: unknown {', '.join(map(str, bad))} (modules: {', '.join(sorted(MODULES))}; "
                f"categories: {', '.join(sorted(CATEGORIES))})"
            )
        self.categories = frozenset(categories)
        hold = config.get("hold_chars", SafetyConfig().hold_chars)
        if not isinstance(hold, int) or isinstance(hold, bool) or not 16 <= hold <= 65536:
            raise ValueError("hold_chars: expected an integer from 16 to 65536")
        self.hold = hold
        self.mask_request = bool(config.get("request", True))
        self.mask_response = bool(config.get("response", True))
        # a side it does not mask need not be decoded
        self.needs_request = self.mask_request  # type: ignore[misc]
        self.needs_response = self.mask_response  # type: ignore[misc]

    def _request(self, view: PluginView) -> PluginResult | None:
        if not self.mask_request or view.request is None:
            return None
        masker = Masker(self.categories)
        masker.request(view.request)
        return masker.result()

    async def pre_route(self, view: PluginView) -> PluginResult | None:
        return self._request(view)

    async def pre_upstream(self, view: PluginView) -> PluginResult | None:
        return self._request(view)

    async def post_upstream(self, view: PluginView) -> PluginResult | None:
        if not self.mask_response or view.response is None:
            return None
        masker = Masker(self.categories)
        masker.response(view.response)
        return masker.result()

    def stream_chunk(self, view: PluginView, event: StreamEvent) -> PluginResult | None:
        if not self.mask_response:
            return None
        slot = view.state.get(_STATE)
        if slot is None:
            masker = Masker(self.categories)
            slot = view.state[_STATE] = (masker, StreamRedactor(self.hold, masker.hits, masker.text))
        masker, redactor = slot
        seen = len(masker.found)
        out = redactor.feed(event)
        if out is event:
            return None
        findings = tuple(sorted(masker.found)) if len(masker.found) > seen else ()
        events = [] if out is None else out if isinstance(out, list) else [out]
        return PluginResult.modify(events=events, findings=findings)
