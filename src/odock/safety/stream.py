"""Response-phase screening while streaming, without buffering the answer.

`HeldText` is the streaming redactor (SafetySec's response phase and the `pii_mask` plugin both use it): each
text channel (a choice's text, the reasoning text) keeps a tail of at most `hold` characters unreleased: the
tail is where a match could still be growing. Once at least `MIN_RELEASE` characters could be released (and at
the end) the buffer is screened whole; a block anywhere in it ends the stream then (nothing of the match left the
gateway: it was all held), and text is released only up to a cut that is at least `hold` characters behind the
newest character and never inside a finding. Screening a delta that could release nothing would cost a scan per
delta for no earlier byte; a block is found no later than the first release that would have carried it. Every bounded detector's
match is shorter than `hold`, so a match whose start was released had its end in the buffer when it was
screened: a secret split across any number of deltas, at any boundary, is redacted or blocked before it leaves.
The cut also falls only at whitespace (keys, tokens, JWTs and e-mails hold none, whatever their length), and
unbounded matches (a PEM private key) hold their whole span until they end.

`StreamRedactor` applies it to normalized stream events: text deltas per choice, reasoning/thinking deltas
(OpenAI reasoning, Anthropic thinking, Gemini thought parts) as one more channel, released whole as soon as
anything else arrives (thinking precedes the answer; a signature closes it), and events that arrive while text
is held (usage, tool calls when not held) wait behind it, so the client sees them in their original order.
Tool-call arguments are held whole until the terminal event when `hold_tools` is set, then screened as one
string.

A redacted Anthropic thinking block keeps its signature, which no longer verifies: a client that sends that
block back in a later turn is refused by Anthropic. That is the price of not letting the secret out; a policy
that must keep thinking replayable blocks instead of redacting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from odock.model import StreamEvent, StreamStart, StreamStop, TextDelta, ThinkingDelta, ToolCallDelta
from odock.safety.detectors import Finding, marker
from odock.safety.engine import SafetyEngine, Screen, apply_redactions, blocked

__all__ = ["MIN_RELEASE", "Frame", "FramedText", "HeldText", "StreamGuard", "StreamRedactor", "guard_hits"]

# a run without whitespace longer than this is cut anyway (no secret or marker-worthy token is this long)
MAX_WORD = 4096
# the least text worth a scan of the held buffer (see the module docstring)
MIN_RELEASE = 32

Hits = Callable[[str], list[tuple[Finding, str]]]  # findings with their action; raises to block
Note = Callable[[Finding, str], None]  # a finding released to the client, with its action
THINKING = -1  # the reasoning channel's key among the text channels


def _boundary(buffer: str, cut: int) -> int:
    """Move a cut back to the start of the word it falls in: a secret (key, token, JWT, e-mail) holds no
    whitespace, so released text never ends inside one, whatever its length."""
    if cut == 0 or buffer[cut - 1].isspace() or buffer[cut].isspace():
        return cut
    start = max(buffer.rfind(" ", 0, cut), buffer.rfind("\n", 0, cut), buffer.rfind("\t", 0, cut)) + 1
    return start if cut - start < MAX_WORD else cut


class HeldText:
    """Text channels with bounded hold-back: `push` returns what is safe to release (redacted), `flush` the rest
    once the channel is complete."""

    __slots__ = ("hits", "hold", "note", "texts")

    def __init__(self, hold: int, hits: Hits, note: Note | None = None) -> None:
        self.hold = hold
        self.hits = hits
        self.note = note
        self.texts: dict[int, str] = {}

    def holding(self) -> bool:
        return any(self.texts.values())

    def push(self, channel: int, text: str) -> str:
        buffer = self.texts.get(channel, "") + text
        if len(buffer) < self.hold + MIN_RELEASE:
            self.texts[channel] = (
                buffer  # too little could be released to be worth a scan: held, unscreened yet
            )
            return ""
        released, kept = self._release(buffer, final=False)
        self.texts[channel] = kept
        return released

    def flush(self, channel: int) -> str:
        released, _ = self._release(self.texts.pop(channel, ""), final=True)
        return released

    def _release(self, buffer: str, *, final: bool) -> tuple[str, str]:
        """(text safe to send, text still held) of one channel's buffer."""
        if not buffer:
            return "", ""
        cut, redacted = screened_cut(buffer, self.hits(buffer), self.hold, final, self.note)
        return apply_redactions(buffer[:cut], redacted), buffer[cut:]


def screened_cut(
    buffer: str, hits: list[tuple[Finding, str]], hold: int, final: bool, note: Note | None
) -> tuple[int, list[Finding]]:
    """Where a screened buffer may be cut (everything at the end; else `hold` characters behind its newest
    character, at a word boundary, never inside a finding), and the findings before the cut that are redacted
    (each finding before the cut is noted)."""
    cut = len(buffer) if final else _boundary(buffer, max(0, len(buffer) - hold))
    for finding, _ in hits:
        if finding.start < cut < finding.end:
            cut = finding.start
            break  # findings are sorted and disjoint: no later one starts before this cut
    redacted: list[Finding] = []
    for finding, action in hits:
        if finding.end > cut:
            break
        if note is not None:
            note(finding, action)
        if action == "redact":
            redacted.append(finding)
    return cut, redacted


@dataclass(slots=True)
class _Tool:
    index: int
    id: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)


class StreamRedactor:
    """One streamed answer's screening over normalized events (see the module docstring)."""

    __slots__ = ("hold_tools", "pending", "screen_whole", "text", "tools")

    def __init__(
        self, hold: int, hits: Hits, screen_whole: Callable[[str], str], note: Note | None = None
    ) -> None:
        self.text = HeldText(hold, hits, note)
        self.screen_whole = screen_whole  # a complete string (tool arguments) screened at once
        self.hold_tools = True
        self.tools: dict[int, _Tool] = {}  # tool-call index -> held call
        self.pending: list[StreamEvent] = []  # other events waiting behind held text

    def feed(self, event: StreamEvent) -> StreamEvent | list[StreamEvent] | None:
        if isinstance(event, ThinkingDelta):
            return self._thinking(event)
        if isinstance(event, StreamStart):
            return event
        out = self._end_thinking()
        if isinstance(event, TextDelta):
            released = self.text.push(event.index, event.text)
            if released:
                out.append(TextDelta(text=released, index=event.index))
        elif isinstance(event, ToolCallDelta) and self.hold_tools:
            self._tool(event)
        elif isinstance(event, StreamStop):
            out += [*self.flush(), event]
        elif self._holding():
            self.pending.append(event)
        else:
            out.append(event)
        return out[0] if len(out) == 1 else out or None

    def _thinking(self, event: ThinkingDelta) -> ThinkingDelta | None:
        if event.signature is None:
            released = self.text.push(THINKING, event.text)
            return ThinkingDelta(text=released) if released else None
        # a signature closes the block: everything held is released with it
        self.text.texts[THINKING] = self.text.texts.get(THINKING, "") + event.text
        return ThinkingDelta(text=self.text.flush(THINKING), signature=event.signature)

    def _end_thinking(self) -> list[StreamEvent]:
        if THINKING not in self.text.texts:
            return []
        released = self.text.flush(THINKING)
        return [ThinkingDelta(text=released)] if released else []

    def _holding(self) -> bool:
        return bool(self.tools) or self.text.holding()

    def _tool(self, event: ToolCallDelta) -> None:
        tool = self.tools.get(event.index)
        if tool is None:
            tool = self.tools[event.index] = _Tool(event.index)
        tool.id = tool.id or event.id
        tool.name = tool.name or event.name
        if event.arguments:
            tool.arguments.append(event.arguments)

    def flush(self) -> list[StreamEvent]:
        """Everything held, screened as complete text, in order: text, tool calls, then the waiting events."""
        out: list[StreamEvent] = self._end_thinking()
        for index in list(self.text.texts):
            released = self.text.flush(index)
            if released:
                out.append(TextDelta(text=released, index=index))
        for tool in self.tools.values():
            arguments = self.screen_whole("".join(tool.arguments))
            out.append(ToolCallDelta(index=tool.index, id=tool.id, name=tool.name, arguments=arguments))
        self.tools = {}
        out += self.pending
        self.pending = []
        return out


class StreamGuard(StreamRedactor):
    """SafetySec's response phase over one streamed answer (lives in the call's stage state): a block anywhere
    in the held text ends the stream before the match leaves."""

    __slots__ = ()

    def __init__(self, engine: SafetyEngine, screen: Screen) -> None:
        super().__init__(
            engine.config.hold_chars,
            guard_hits(engine, screen),
            lambda text: engine.screen_text(text, screen, "response"),
            lambda finding, action: screen.note("response", finding, action),
        )


def guard_hits(engine: SafetyEngine, screen: Screen) -> Hits:
    """SafetySec's response-phase findings of a held buffer; a block raises (and is noted) at once."""

    def hits(buffer: str) -> list[tuple[Finding, str]]:
        found = engine.guarded(
            lambda: engine.findings(buffer, screen.policy, "response"), screen.policy, "response"
        )
        for finding, action in found:
            if action == "block":
                screen.note("response", finding, action)
                raise blocked("response", finding.module, finding.category)
        return found

    return hits


# --- whole upstream events (native routes) ------------------------------------------------------------------


class Frame(msgspec.Struct):
    """One upstream event of a native route: its bytes, and the text it adds to the answer ("" for an event
    without any: a role, a finish, usage, a comment)."""

    raw: bytes | None  # None for the held rest of a split event: re-encoded from `template` when released
    text: str
    template: Any  # what the dialect re-encodes the event from, with other text (its payload)
    continuation: bool = False  # the rest of a split event (its role, say, already went out)


Reframe = Callable[[Any, str, bool], bytes]  # (template, text, continuation) -> the event's bytes


class FramedText:
    """Bounded hold-back over whole upstream events: what `HeldText` does for one text channel, with the
    upstream's own events as the unit of release, so a native route forwards the upstream's bytes (ids,
    fingerprints, field order, every field the gateway does not model) instead of decoding and re-encoding each
    event.

    Events queue while any text is held; once at least `MIN_RELEASE` characters could be released (and at the
    end) the held text is screened whole and cut as `HeldText` cuts it. The events before the cut leave as they
    came unless a redaction touches their text (then they are re-encoded with their share of the redacted text:
    a finding's marker goes where it starts); an event the cut falls inside is split, its first part released
    re-encoded and the rest held. An event without text (a role, usage, a keep-alive) keeps its place in the
    queue and leaves with the text before it: the first bytes a client gets are the first screened text, as on
    the decoded path, in one write. The caller decides which events are plain enough to frame."""

    __slots__ = ("frames", "held", "hits", "hold", "note", "reframe")

    def __init__(self, hold: int, hits: Hits, reframe: Reframe, note: Note | None = None) -> None:
        self.hold = hold
        self.hits = hits
        self.reframe = reframe
        self.note = note
        self.frames: list[Frame] = []  # held, in order
        self.held = ""  # their text

    def push(self, frame: Frame) -> bytes:
        """Queue one event; return what may be released now."""
        self.frames.append(frame)
        self.held += frame.text
        if len(self.held) < self.hold + MIN_RELEASE:
            return b""
        return self._release(final=False)

    def flush(self) -> bytes:
        """Everything held, screened as complete text (the answer's end)."""
        return self._release(final=True) if self.frames else b""

    def take(self) -> list[Frame]:
        """Hand the held events over unscreened (the stream leaves this path; their text is screened there)."""
        frames, self.frames, self.held = self.frames, [], ""
        return frames

    def _release(self, *, final: bool) -> bytes:
        buffer = self.held
        hits = self.hits(buffer) if buffer else []
        cut, redacted = screened_cut(buffer, hits, self.hold, final, self.note)
        frames = self.frames
        if cut == len(buffer) and not redacted and all(frame.raw is not None for frame in frames):
            self.frames, self.held = [], ""  # everything goes as it came (the usual end of an answer)
            return b"".join([frame.raw for frame in frames if frame.raw is not None])
        out: list[bytes] = []
        pos = 0
        for i, frame in enumerate(self.frames):
            end = pos + len(frame.text)
            if end > cut or (pos == cut and frame.text):
                if pos < cut:  # the cut falls inside this event: its first part goes, the rest is held
                    out.append(self._emit(frame, buffer, pos, cut, redacted))
                    rest = Frame(None, buffer[cut:end], frame.template, True)
                    self.frames = [rest, *self.frames[i + 1 :]]
                else:
                    self.frames = self.frames[i:]
                self.held = buffer[cut:]
                return b"".join(out)
            out.append(self._emit(frame, buffer, pos, end, redacted))
            pos = end
        self.frames, self.held = [], ""
        return b"".join(out)

    def _emit(self, frame: Frame, buffer: str, start: int, end: int, redacted: list[Finding]) -> bytes:
        """The event for buffer[start:end] (its text), redacted: its own bytes when nothing changed it."""
        text = _redacted_span(buffer, start, end, redacted) if redacted else buffer[start:end]
        if frame.raw is not None and end - start == len(frame.text) and text == frame.text:
            return frame.raw
        return self.reframe(frame.template, text, frame.continuation)


def _redacted_span(buffer: str, start: int, end: int, redacted: list[Finding]) -> str:
    """buffer[start:end] with the redacted findings' text removed, and the marker of each finding that starts in
    the span put where it starts (a finding spread over several events is marked once, in the first)."""
    out: list[str] = []
    pos = start
    for f in redacted:
        if f.end <= start or f.start >= end:
            continue
        if f.start >= start:
            out.append(buffer[pos : f.start])
            out.append(marker(f.category))
        pos = max(pos, min(f.end, end))
    out.append(buffer[pos:end])
    return "".join(out)
