"""SafetySec policies: `policies.safety` on an organisation, team, key or model, resolved into one effective
policy per call (reference §7.1, issue 12).

Shape (every field optional):

    {"enabled": true,                 # switch SafetySec on (or off, where no broader scope forbids it)
     "allow_disable": false,          # narrower scopes may not switch it off
     "request":  {"pii": "redact", "email": "block", "injection": "block", "default": "observe"},
     "response": {"secrets": "block", "pii": "redact"},
     "patterns": [{"name": "ticket", "regex": "TICKET-[0-9]{6}", "action": "redact",
                   "phases": ["request", "response"]}]}

A phase maps a detector — a category (`email`, `openai_key`, …), a module (`pii`, `secrets`, `injection`,
`jailbreak`), `custom` (the operator patterns) or `default` — to `off`, `observe`, `redact` or `block`.
Within one scope a category beats its module, which beats `default`. Across scopes (global → organisation →
team → key → model) the strictest action wins: block > redact > observe > off, so a narrower scope may only be
stricter. Detectors no scope names take the built-in defaults (personal data and secrets redacted, injection and
jailbreak observed and scored).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from odock.safety.detectors import CATEGORIES, MODULE_OF, MODULES

__all__ = [
    "ACTIONS",
    "CustomPattern",
    "SafetyPolicy",
    "resolve",
    "validate_safety",
]

ACTIONS = ("off", "observe", "redact", "block")
RANK = {action: i for i, action in enumerate(ACTIONS)}
PHASES = ("request", "response")
DETECTOR_NAMES = frozenset(CATEGORIES) | frozenset(MODULES) | {"custom", "default"}
# what a detector no scope names does
DEFAULTS: dict[str, dict[str, str]] = {
    "request": {"pii": "redact", "secrets": "redact", "injection": "observe", "jailbreak": "observe"},
    "response": {"pii": "redact", "secrets": "redact", "injection": "off", "jailbreak": "off"},
}
MAX_PATTERN_LENGTH = 1000
MAX_PATTERNS = 50
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


@dataclass(frozen=True, slots=True)
class CustomPattern:
    """An operator pattern: compiled with the linear-time engine (`odock.safety.patterns`)."""

    name: str
    source: str
    action: str
    phases: frozenset[str]


@dataclass(frozen=True, slots=True)
class SafetyPolicy:
    """The effective SafetySec policy of one call: per phase, each category's action."""

    enabled: bool
    request: Mapping[str, str] = field(default_factory=dict)  # category -> action (off left out)
    response: Mapping[str, str] = field(default_factory=dict)
    patterns: tuple[CustomPattern, ...] = ()
    # per phase (request, response), worked out once (a policy is resolved once per set of scopes and asked on
    # every call): whether it has anything to do, and its categories as the scanner takes them
    _active: tuple[bool, bool] = field(init=False, repr=False, compare=False)
    _categories: tuple[frozenset[str], frozenset[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_active", (self._phase_active("request"), self._phase_active("response")))
        object.__setattr__(self, "_categories", (frozenset(self.request), frozenset(self.response)))

    def actions(self, phase: str) -> Mapping[str, str]:
        return self.request if phase == "request" else self.response

    def categories(self, phase: str) -> frozenset[str]:
        return self._categories[0 if phase == "request" else 1]

    def active(self, phase: str) -> bool:
        return self._active[0 if phase == "request" else 1]

    def _phase_active(self, phase: str) -> bool:
        return self.enabled and (
            bool(self.actions(phase)) or any(phase in p.phases and p.action != "off" for p in self.patterns)
        )


OFF = SafetyPolicy(enabled=False)


# --- validation (admin API, CLI, YAML: every write of a policy envelope) ------------------------------------


def validate_safety(section: Any) -> list[str]:
    """Problems with a `policies.safety` section (empty: valid)."""
    if not isinstance(section, dict):
        return ["safety: expected an object"]
    problems: list[str] = []
    unknown = sorted(set(section) - {"enabled", "allow_disable", "request", "response", "patterns"})
    if unknown:
        problems.append(f"safety: unknown field(s) {', '.join(unknown)}")
    for flag in ("enabled", "allow_disable"):
        if flag in section and not isinstance(section[flag], bool):
            problems.append(f"safety.{flag}: expected true or false")
    for phase in PHASES:
        problems += _validate_phase(section.get(phase), phase)
    problems += _validate_patterns(section.get("patterns"))
    return problems


def _validate_phase(rules: Any, phase: str) -> list[str]:
    if rules is None:
        return []
    if not isinstance(rules, dict):
        return [f"safety.{phase}: expected an object of detector: action"]
    problems = []
    for name, action in rules.items():
        if name not in DETECTOR_NAMES:
            problems.append(
                f"safety.{phase}.{name}: unknown detector (a category, one of the modules "
                f"{', '.join(sorted(MODULES))}, custom or default)"
            )
        elif action not in RANK:
            problems.append(f"safety.{phase}.{name}: expected one of {', '.join(ACTIONS)}")
    return problems


def _validate_patterns(patterns: Any) -> list[str]:
    from odock.safety.patterns import compile_pattern

    if patterns is None:
        return []
    if not isinstance(patterns, list) or len(patterns) > MAX_PATTERNS:
        return [f"safety.patterns: expected a list of at most {MAX_PATTERNS} patterns"]
    problems = []
    for i, item in enumerate(patterns):
        where = f"safety.patterns[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("regex"), str):
            problems.append(f"{where}: expected an object with a regex")
            continue
        name = item.get("name", "custom")
        if not isinstance(name, str) or not _NAME.match(name):
            problems.append(f"{where}.name: expected a lowercase identifier of at most 40 characters")
        if item.get("action", "redact") not in RANK:
            problems.append(f"{where}.action: expected one of {', '.join(ACTIONS)}")
        phases = item.get("phases", list(PHASES))
        if not isinstance(phases, list) or not phases or any(p not in PHASES for p in phases):
            problems.append(f"{where}.phases: expected a non-empty list of request, response")
        if len(item["regex"]) > MAX_PATTERN_LENGTH:
            problems.append(f"{where}.regex: longer than {MAX_PATTERN_LENGTH} characters")
            continue
        error = compile_pattern(item["regex"])[1]
        if error is not None:
            problems.append(f"{where}.regex: {error}")
    return problems


# --- resolution -------------------------------------------------------------------------------------------


def _scope_actions(rules: Mapping[str, str], category: str) -> str | None:
    """One scope's action for `category`: the category's own, else its module's, else the scope's default."""
    action = rules.get(category)
    if action is None:
        action = rules.get(MODULE_OF.get(category, "custom"))
    if action is None:
        action = rules.get("default")
    return action


def _phase_actions(scopes: Sequence[Mapping[str, Any]], phase: str) -> dict[str, str]:
    resolved: dict[str, str] = {}
    for category in CATEGORIES:
        chosen: str | None = None
        for scope in scopes:
            rules = scope.get(phase)
            if isinstance(rules, dict):
                action = _scope_actions(rules, category)
                if action is not None and (chosen is None or RANK[action] > RANK[chosen]):
                    chosen = action
        if chosen is None:
            chosen = DEFAULTS[phase][MODULE_OF[category]]
        if chosen != "off":
            resolved[category] = chosen
    return resolved


def _patterns(scopes: Sequence[Mapping[str, Any]]) -> tuple[CustomPattern, ...]:
    found: list[CustomPattern] = []
    for scope in scopes:
        for item in scope.get("patterns") or ():
            phases = frozenset(item.get("phases") or PHASES)
            action = item.get("action", "redact")
            for phase in phases:  # a phase's `custom` entry may make every pattern stricter
                rules = scope.get(phase)
                if (
                    isinstance(rules, dict)
                    and rules.get("custom") in RANK
                    and RANK[rules["custom"]] > RANK[action]
                ):
                    action = rules["custom"]
            found.append(CustomPattern(item.get("name", "custom"), item["regex"], action, phases))
    return tuple(found)


def resolve(
    global_enabled: bool, global_allow_disable: bool, sections: Iterable[Mapping[str, Any] | None]
) -> SafetyPolicy:
    """The effective policy from the global switch and the scopes' `policies.safety`, broadest first."""
    scopes = [s for s in sections if isinstance(s, Mapping)]
    enabled = global_enabled
    locked = global_enabled and not global_allow_disable
    for scope in scopes:
        switch = scope.get("enabled")
        if switch is True:
            enabled = True
        elif switch is False and not locked:
            enabled = False
        if scope.get("allow_disable") is False and enabled:
            locked = True
    if not enabled:
        return OFF
    return SafetyPolicy(
        enabled=True,
        request=_phase_actions(scopes, "request"),
        response=_phase_actions(scopes, "response"),
        patterns=_patterns(scopes),
    )


def safety_section(policies: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    section = (policies or {}).get("safety")
    return section if isinstance(section, Mapping) else None


def any_enabled(sections: Iterable[Mapping[str, Any] | None]) -> bool:
    """Whether any scope switches SafetySec on (the gateway adds the stage only then, or when it is global)."""
    return any(isinstance(s, Mapping) and s.get("enabled") is True for s in sections)
