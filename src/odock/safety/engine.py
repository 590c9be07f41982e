"""SafetySec's engine: screen one phase's texts under the call's policy and decide (reference §7.3).

The decision of a phase combines every finding: block > redact > observe (> allow). A block names the module and
the category, never the text; a redaction replaces the span by its marker; an observation is only recorded.
Every text surface of every dialect is reached by walking the body's JSON (`walk_json`): message and system
text, content blocks and parts, tool-call arguments and tool results, Responses input items, embeddings input.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from odock import metrics
from odock.errors import DependencyUnavailable, Forbidden, GatewayError
from odock.model import GatewayRequest, GatewayResponse
from odock.safety.detectors import Finding, marker, resolve_overlaps, scan
from odock.safety.patterns import find_spans
from odock.safety.policy import OFF, RANK, SafetyPolicy, resolve, safety_section

__all__ = ["SafetyConfig", "SafetyEngine", "Screen", "blocked", "walk_json"]

# session score added per request by each signal (reference §7.4 [INF]: injection +0.3, jailbreak +0.3)
SIGNAL_SCORES = {"injection": 0.3, "jailbreak": 0.3}


@dataclass(frozen=True, slots=True)
class SafetyConfig:
    enabled: bool = False  # SAFETY_ENGINE_MODE=security
    allow_disable: bool = True  # SAFETY_ALLOW_DISABLE: may a scope switch a global SafetySec off
    block_threshold: float = 0.85  # SAFETY_BLOCK_THRESHOLD
    session_ttl_s: float = 24 * 3600.0  # SAFETY_SESSION_TTL
    fail_status: int = 503  # SAFETY_FAIL_STATUS: a failing module in block/redact refuses with 503 or 403
    hold_chars: int = 128  # SAFETY_STREAM_HOLDBACK: what a stream holds back (the longest bounded detector)


def blocked(phase: str, module: str, category: str) -> Forbidden:
    metrics.child(metrics.SECURITY_BLOCKS, phase, module, category).inc()
    return Forbidden(
        f"blocked by SafetySec ({phase} phase): module {module}, category {category}",
        "safety_blocked",
        extra={"safety": {"phase": phase, "module": module, "category": category}},
    )


@dataclass(slots=True)
class Screen:
    """One call's SafetySec bookkeeping: its policy, and the decisions so far (for the usage record)."""

    policy: SafetyPolicy
    sink: Any = None  # where the evidence goes as it changes (the call context's `security`)
    # (phase, module, category) -> the strictest action taken
    decisions: dict[tuple[str, str, str], str] = field(default_factory=dict)
    signals: set[str] = field(default_factory=set)

    def note(self, phase: str, finding: Finding, action: str) -> None:
        key = (phase, finding.module, finding.category)
        if RANK[action] > RANK.get(self.decisions.get(key, "off"), 0):
            self.decisions[key] = action
            if self.sink is not None:
                self.sink.security = self.evidence()
        if finding.category in SIGNAL_SCORES:
            self.signals.add(finding.category)
        if action == "redact":
            metrics.TALLY.inc(metrics.SECURITY_REDACTIONS, (phase, finding.category))

    def outcome(self, phase: str) -> str:
        """The phase's decision: the strictest action taken, or allow."""
        best = "allow"
        for (p, _, _), action in self.decisions.items():
            if p == phase and (best == "allow" or RANK[action] > RANK[best]):
                best = action
        return best

    def evidence(self) -> list[dict[str, str]]:
        return [
            {"phase": phase, "module": module, "category": category, "action": action}
            for (phase, module, category), action in self.decisions.items()
        ]


Visit = Callable[[str], str]


class SafetyEngine:
    """The configured SafetySec: policy resolution, screening and the decision of each phase."""

    def __init__(self, config: SafetyConfig) -> None:
        self.config = config
        self._policies: dict[tuple[int, ...], tuple[tuple[Any, ...], SafetyPolicy]] = {}

    # --- policy -------------------------------------------------------------------------------------------

    def policy(self, *policies: Mapping[str, Any] | None) -> SafetyPolicy:
        """The effective policy of the scopes' policy envelopes (broadest first); resolved once per set of
        envelopes (records are replaced, never mutated, when the catalogue changes)."""
        key = tuple(map(id, policies))
        hit = self._policies.get(key)
        if hit is not None and all(map(operator.is_, hit[0], policies)):
            return hit[1]
        sections = tuple(safety_section(p) for p in policies)
        if not self.config.enabled and all(s is None for s in sections):
            policy = OFF  # the common case: nothing anywhere turns SafetySec on
        else:
            policy = resolve(self.config.enabled, self.config.allow_disable, sections)
        if len(self._policies) > 4096:
            self._policies.clear()
        self._policies[key] = (policies, policy)
        return policy

    # --- screening ----------------------------------------------------------------------------------------

    def findings(self, text: str, policy: SafetyPolicy, phase: str) -> list[tuple[Finding, str]]:
        """Every finding of the phase's active detectors in `text`, with the action the policy gives it."""
        actions = policy.actions(phase)
        found = scan(text, policy.categories(phase)) if actions else []
        if not policy.patterns:
            return [(f, actions[f.category]) for f in found]
        custom = [p for p in policy.patterns if phase in p.phases and p.action != "off"]
        if custom:
            found += [
                Finding(start, end, pattern.name, "custom")
                for pattern in custom
                for start, end in find_spans(pattern.source, text)
            ]
            found = resolve_overlaps(found)
        by_name = {p.name: p.action for p in custom}
        return [(f, by_name[f.category] if f.module == "custom" else actions[f.category]) for f in found]

    def screen_text(self, text: str, screen: Screen, phase: str) -> str:
        """`text` after the phase's decision: redacted where the policy redacts; raises on a block."""
        if not text:
            return text
        hits = self.guarded(lambda: self.findings(text, screen.policy, phase), screen.policy, phase)
        if not hits:
            return text
        redacted: list[Finding] = []
        for finding, action in hits:
            screen.note(phase, finding, action)
            if action == "block":
                raise blocked(phase, finding.module, finding.category)
            if action == "redact":
                redacted.append(finding)
        return apply_redactions(text, redacted)

    def guarded(
        self, run: Callable[[], list[tuple[Finding, str]]], policy: SafetyPolicy, phase: str
    ) -> list[tuple[Finding, str]]:
        """Run the detectors; a failure fails closed when the phase can block or redact, open when it only
        observes (both counted)."""
        try:
            return run()
        except Exception:
            strict = any(a in ("block", "redact") for a in policy.actions(phase).values()) or any(
                p.action in ("block", "redact") for p in policy.patterns if phase in p.phases
            )
            metrics.child(metrics.SECURITY_ERRORS, phase, "builtin", "closed" if strict else "open").inc()
            if strict:
                raise self.failure("builtin") from None
            return []

    def failure(self, module: str) -> GatewayError:
        if self.config.fail_status == 403:
            return Forbidden(f"SafetySec module {module} failed; the call is refused", "safety_blocked")
        return DependencyUnavailable(
            f"SafetySec module {module} failed; the call is refused", "safety_unavailable"
        )

    # --- request phase ------------------------------------------------------------------------------------

    def screen_request(
        self, body: dict[str, Any] | None, request: GatewayRequest | None, screen: Screen
    ) -> None:
        """Screen every text surface of the request: the client's JSON (native routes forward it), and the
        normalized request when the route translates from it (the unified route)."""
        if request is None:  # one walk (a native route): a text it meets twice is scanned twice, not hashed
            if body is not None:
                walk_json(body, lambda text: self.screen_text(text, screen, "request"))
        else:
            visit = self._screen_once(screen, "request")
            if body is not None:
                walk_json(body, visit)
            walk_request(request, visit)
        metrics.TALLY.inc(metrics.SECURITY_MODULE_RUNS, ("request", "builtin"))

    # --- response phase (unary) ---------------------------------------------------------------------------

    def screen_response(self, response: GatewayResponse, screen: Screen) -> None:
        walk_response(response, self._screen_once(screen, "response"))
        metrics.TALLY.inc(metrics.SECURITY_MODULE_RUNS, ("response", "builtin"))

    def _screen_once(self, screen: Screen, phase: str) -> Visit:
        """`screen_text` for one phase that scans a text met twice once (a decoded answer holds its text both
        as content and as a text block; a request both as JSON and normalized)."""
        done: dict[str, str] = {}

        def visit(text: str) -> str:
            out = done.get(text)
            if out is None:
                out = done[text] = self.screen_text(text, screen, phase)
            return out

        return visit


def apply_redactions(text: str, findings: list[Finding]) -> str:
    if not findings:
        return text
    out: list[str] = []
    pos = 0
    for f in findings:
        out.append(text[pos : f.start])
        out.append(marker(f.category))
        pos = f.end
    out.append(text[pos:])
    return "".join(out)


# --- every text surface --------------------------------------------------------------------------------------

# keys whose string value is text a person or a tool wrote (every dialect's names for it)
TEXT_KEYS = frozenset(
    {
        "content",
        "text",
        "system",
        "instructions",
        "input",
        "prompt",
        "arguments",
        "output",
        "query",
        "documents",
        "refusal",
    }
)
# keys whose value is structure, identifiers or binary: never screened
SKIP_KEYS = frozenset(
    {
        "model",
        "role",
        "type",
        "id",
        "tool_call_id",
        "tool_use_id",
        "call_id",
        "name",
        "signature",
        "thinking",  # a thinking block's text is signed: changing it breaks the signature
        "redacted_thinking",
        "encrypted_content",
        "data",
        "url",
        "image_url",
        "file_id",
        "fileUri",
        "file_uri",
        "mime_type",
        "mimeType",
        "media_type",
        "cache_control",
        "metadata",
        "tools",
        "tool_choice",
        "response_format",
        "generationConfig",
        "generation_config",
        "safetySettings",
        "stop",
        "stop_sequences",
        "stream_options",
        "provider_options",
    }
)
# keys whose object or array value is free-form (tool arguments, tool results): every string inside is screened
FREE_FORM_KEYS = frozenset({"args", "input", "response", "arguments", "output", "content", "result"})


def walk_json(node: dict[str, Any], visit: Visit, free: bool = False) -> None:
    """Screen, in place, every text string of a decoded JSON object (see TEXT_KEYS, SKIP_KEYS, FREE_FORM_KEYS);
    `free`: every string value is text (tool arguments and results, whatever their keys)."""
    for key, value in node.items():
        if not free and key in SKIP_KEYS:
            continue
        if isinstance(value, str):
            if free or key in TEXT_KEYS:
                node[key] = visit(value)
        elif isinstance(value, dict):
            walk_json(value, visit, free or key in FREE_FORM_KEYS)
        elif isinstance(value, list):
            _walk_list(value, visit, free or key in TEXT_KEYS or key in FREE_FORM_KEYS)


def _walk_list(items: list[Any], visit: Visit, text: bool) -> None:
    for i, item in enumerate(items):
        if isinstance(item, str):
            if text:
                items[i] = visit(item)
        elif isinstance(item, dict):
            # a typed block or a message is structure again; anything else in a text array is free-form
            walk_json(item, visit, text and "type" not in item and "role" not in item)
        elif isinstance(item, list):
            _walk_list(item, visit, text)


def walk_request(request: GatewayRequest, visit: Visit) -> None:
    """Screen the normalized request's text surfaces in place."""
    for message in request.messages:
        if isinstance(message.content, str):
            message.content = visit(message.content)
        elif message.content:
            for part in message.content:
                if part.type == "text" and part.text:
                    part.text = visit(part.text)
        for tool_call in message.tool_calls or ():
            tool_call.arguments = visit(tool_call.arguments)


def walk_response(response: GatewayResponse, visit: Visit) -> None:
    """Screen a decoded answer's text surfaces in place: its text; its text, reasoning and refusal blocks
    (OpenAI reasoning, Anthropic thinking, Gemini thought parts are text the client reads), tool arguments."""
    if response.content:
        response.content = visit(response.content)
    for block in response.content_blocks or ():
        if block.type in ("text", "thinking", "refusal") and block.text:
            block.text = visit(block.text)
    for tool_call in response.tool_calls or ():
        if tool_call.arguments:
            tool_call.arguments = visit(tool_call.arguments)


def response_texts(response: GatewayResponse) -> list[str]:
    """Every text `walk_response` would screen, once each (for the external guard)."""
    found: dict[str, None] = {}

    def collect(text: str) -> str:
        found[text] = None
        return text

    walk_response(response, collect)
    return list(found)


def texts_of(node: dict[str, Any]) -> Iterator[str]:
    """Every text string `walk_json` would screen (for the external guard)."""
    found: list[str] = []

    def collect(text: str) -> str:
        found.append(text)
        return text

    walk_json(node, collect)
    yield from found


def fingerprint(client_ip: str, key_id: str | None, user_agent: str | None) -> str:
    """The session fingerprint (reference §7.5): the client IP, the key once known, and the user agent (a
    client's calls repeat all three: each triple is hashed once while it stays among the recent ones)."""
    triple = (client_ip, key_id, user_agent)
    known = _FINGERPRINTS.get(triple)
    if known is None:
        raw = f"{client_ip}\x00{key_id or ''}\x00{user_agent or ''}".encode()
        known = hashlib.sha256(raw).hexdigest()[:32]
        if len(_FINGERPRINTS) >= 4096:
            _FINGERPRINTS.clear()
        _FINGERPRINTS[triple] = known
    return known


_FINGERPRINTS: dict[tuple[str, str | None, str | None], str] = {}
