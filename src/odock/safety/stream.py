"""Response-phase SafetySec while streaming, without buffering the answer.

Each text channel (a choice's text) keeps a tail of at most `hold` characters unreleased: the tail is where a
match could still be growing. On every delta the buffer is screened whole; a block anywhere in it ends the
stream at once (nothing of the match left the gateway), and text is released only up to a cut that is at least
`hold` characters behind the newest character and never inside a finding. Every bounded detector's match is
shorter than `hold`, so a match whose start was released had its end in the buffer when it was screened: a
secret split across any number of deltas, at any boundary, is redacted or blocked before it leaves. The cut also
falls only at whitespace (keys, tokens, JWTs and e-mails hold none, whatever their length), and unbounded
matches (a PEM private key) hold their whole span until they end.

Events other than text and tool-call deltas that arrive while text is held (usage, thinking) wait behind it, so
the client sees them in their original order; tool-call arguments are held whole until the terminal event when
the response phase screens anything, then screened as one string.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from odock.model import StreamEvent, StreamStart, StreamStop, TextDelta, ToolCallDelta
from odock.safety.detectors import Finding
from odock.safety.engine import SafetyEngine, Screen, apply_redactions, blocked

# a run without whitespace longer than this is cut anyway (no secret or marker-worthy token is this long)
MAX_WORD = 4096


def _boundary(buffer: str, cut: int) -> int:
    """Move a cut back to the start of the word it falls in: a secret (key, token, JWT, e-mail) holds no
    whitespace, so released text never ends inside one, whatever its length."""
    if cut == 0 or buffer[cut - 1].isspace() or buffer[cut].isspace():
        return cut
    start = max(buffer.rfind(" ", 0, cut), buffer.rfind("\n", 0, cut), buffer.rfind("\t", 0, cut)) + 1
    return start if cut - start < MAX_WORD else cut


@dataclass(slots=True)
class _Tool:
    index: int
    id: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)


class StreamGuard:
    """One streamed answer's response-phase screening (lives in the call's stage state)."""

    __slots__ = ("engine", "hold", "pending", "screen", "texts", "tools")

    def __init__(self, engine: SafetyEngine, screen: Screen) -> None:
        self.engine = engine
        self.screen = screen
        self.hold = engine.config.hold_chars
        self.texts: dict[int, str] = {}  # choice index -> held text
        self.tools: dict[int, _Tool] = {}  # tool-call index -> held call
        self.pending: list[StreamEvent] = []  # other events waiting behind held text

    def feed(self, event: StreamEvent) -> StreamEvent | list[StreamEvent] | None:
        if isinstance(event, TextDelta):
            return self._text(event)
        if isinstance(event, ToolCallDelta):
            self._tool(event)
            return None
        if isinstance(event, StreamStop):
            return [*self.flush(), event]
        if isinstance(event, StreamStart) or not self._holding():
            return event
        self.pending.append(event)
        return None

    def _holding(self) -> bool:
        return bool(self.tools) or any(self.texts.values())

    def _text(self, event: TextDelta) -> TextDelta | None:
        buffer = self.texts.get(event.index, "") + event.text
        released, kept = self._release(buffer, final=False)
        self.texts[event.index] = kept
        return TextDelta(text=released, index=event.index) if released else None

    def _tool(self, event: ToolCallDelta) -> None:
        tool = self.tools.get(event.index)
        if tool is None:
            tool = self.tools[event.index] = _Tool(event.index)
        tool.id = tool.id or event.id
        tool.name = tool.name or event.name
        if event.arguments:
            tool.arguments.append(event.arguments)

    def _release(self, buffer: str, *, final: bool) -> tuple[str, str]:
        """(text safe to send, text still held) of one channel's buffer; raises on a block."""
        if not buffer:
            return "", ""
        screen = self.screen
        hits = self.engine.guarded(
            lambda: self.engine.findings(buffer, screen.policy, "response"), screen.policy, "response"
        )
        for finding, action in hits:
            if action == "block":
                screen.note("response", finding, action)
                raise blocked("response", finding.module, finding.category)
        cut = len(buffer) if final else _boundary(buffer, max(0, len(buffer) - self.hold))
        for finding, _ in hits:
            if finding.start < cut < finding.end:
                cut = finding.start
                break  # findings are sorted and disjoint: no later one starts before this cut
        redacted: list[Finding] = []
        for finding, action in hits:
            if finding.end > cut:
                break
            screen.note("response", finding, action)
            if action == "redact":
                redacted.append(finding)
        return apply_redactions(buffer[:cut], redacted), buffer[cut:]

    def flush(self) -> list[StreamEvent]:
        """Everything held, screened as complete text, in order: text, tool calls, then the waiting events."""
        out: list[StreamEvent] = []
        for index, buffer in self.texts.items():
            released, _ = self._release(buffer, final=True)
            if released:
                out.append(TextDelta(text=released, index=index))
        self.texts = {}
        for tool in self.tools.values():
            arguments = self.engine.screen_text("".join(tool.arguments), self.screen, "response")
            out.append(ToolCallDelta(index=tool.index, id=tool.id, name=tool.name, arguments=arguments))
        self.tools = {}
        out += self.pending
        self.pending = []
        return out
