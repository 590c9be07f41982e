"""The plugin configuration (reference §8.2): which plugins exist, with what settings, and which phases call them.

    {"plugins": [{"name": "audit_log", "enabled": true, "storage_access": ["usage"], "config": {"level": "info"},
                  "type": "audit_log", "timeout_ms": 1000, "on_error": "open"}],
     "phases": {"pre_route": {"sequential": [], "parallel": ["audit_log"]},
                "post_response": {"sequential": ["audit_log"], "parallel": [], "async": true}}}

Read from `PLUGINS_CONFIG_PATH` (JSON or YAML) or from the `plugins:` section of the YAML catalogue. `type` names
the implementation: a bundled plugin, an entry point of the `odock.plugins` group, or a `module:attr` path; it
defaults to `name`. Nothing runs unless a phase names it: an installed package never enables itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from odock.errors import BadRequest
from odock.plugins.base import PHASES

# §8.2 scopes; "all"/"*" grants every one of them
STORAGE_SCOPES = frozenset(
    {"organisations", "users", "teams", "api_keys", "models", "model_access", "budgets", "usage", "policies"}
)
ALL_SCOPES = frozenset({"all", "*"})
# raw store handles would give a plugin write access to everything: the read API offers none
RAW_SCOPES = frozenset({"postgres", "redis"})
_ENTRY_FIELDS = frozenset({"name", "enabled", "type", "storage_access", "config", "timeout_ms", "on_error"})
_PHASE_FIELDS = frozenset({"sequential", "parallel", "async"})
DEFAULT_TIMEOUT_MS = 1000
MAX_TIMEOUT_MS = 60_000


class PluginConfigError(BadRequest):
    """The plugin configuration is invalid; the message names the place."""

    code = "invalid_config"


@dataclass(frozen=True, slots=True)
class PluginEntry:
    name: str
    type: str
    storage_access: frozenset[str] = frozenset()
    config: Mapping[str, Any] = field(default_factory=dict)
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    # None: closed in a sequential list (the call cannot go on without it), open in a parallel one (findings)
    on_error: Literal["open", "closed"] | None = None


@dataclass(frozen=True, slots=True)
class PhasePlan:
    sequential: tuple[str, ...] = ()
    parallel: tuple[str, ...] = ()
    # post_response only: run on a bounded queue off the request path (None: PLUGINS_ASYNC_POST_RESPONSE)
    run_async: bool | None = None

    def names(self) -> tuple[str, ...]:
        return self.sequential + self.parallel


@dataclass(frozen=True, slots=True)
class PluginsConfig:
    entries: Mapping[str, PluginEntry] = field(default_factory=dict)
    phases: Mapping[str, PhasePlan] = field(default_factory=dict)

    def empty(self) -> bool:
        return not any(plan.names() for plan in self.phases.values())


def _names(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PluginConfigError(f"{where}: expected a list of plugin names")
    if len(set(value)) != len(value):
        raise PluginConfigError(f"{where}: a plugin is listed twice")
    return tuple(value)


def _scopes(value: Any, where: str) -> frozenset[str]:
    scopes = value or []
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise PluginConfigError(f"{where}: expected a list of scopes")
    raw = sorted(RAW_SCOPES & set(scopes))
    if raw:
        raise PluginConfigError(
            f"{where}: {', '.join(raw)} is not offered (plugins get a read API, not store handles)"
        )
    unknown = sorted(set(scopes) - STORAGE_SCOPES - ALL_SCOPES)
    if unknown:
        raise PluginConfigError(
            f"{where}: unknown scope(s) {', '.join(unknown)} (one of: {', '.join(sorted(STORAGE_SCOPES))}, all)"
        )
    return STORAGE_SCOPES if ALL_SCOPES & set(scopes) else frozenset(scopes)


def _entry(item: Any, where: str) -> PluginEntry | None:
    if not isinstance(item, dict):
        raise PluginConfigError(f"{where}: expected an object")
    unknown = sorted(set(item) - _ENTRY_FIELDS)
    if unknown:
        raise PluginConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise PluginConfigError(f"{where}.name: required")
    enabled = item.get("enabled", True)
    if not isinstance(enabled, bool):
        raise PluginConfigError(f"{where}.enabled: expected a boolean")
    kind = item.get("type", name)
    if not isinstance(kind, str) or not kind:
        raise PluginConfigError(
            f"{where}.type: expected a plugin type (bundled name, entry point or module:attr)"
        )
    granted = _scopes(item.get("storage_access"), f"{where}.storage_access")
    config = item.get("config") or {}
    if not isinstance(config, dict):
        raise PluginConfigError(f"{where}.config: expected an object")
    timeout = item.get("timeout_ms", DEFAULT_TIMEOUT_MS)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or not 0 < timeout <= MAX_TIMEOUT_MS:
        raise PluginConfigError(f"{where}.timeout_ms: expected an integer in 1..{MAX_TIMEOUT_MS}")
    on_error = item.get("on_error")
    if on_error not in (None, "open", "closed"):
        raise PluginConfigError(f"{where}.on_error: expected open or closed")
    if not enabled:
        return None
    return PluginEntry(name, kind, granted, config, timeout, on_error)


def _phase(name: str, value: Any, where: str) -> PhasePlan:
    if not isinstance(value, dict):
        raise PluginConfigError(f"{where}: expected an object with sequential/parallel lists")
    unknown = sorted(set(value) - _PHASE_FIELDS)
    if unknown:
        raise PluginConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    sequential = _names(value.get("sequential"), f"{where}.sequential")
    parallel = _names(value.get("parallel"), f"{where}.parallel")
    if set(sequential) & set(parallel):
        raise PluginConfigError(f"{where}: a plugin is both sequential and parallel")
    if name == "stream_chunk" and parallel:
        raise PluginConfigError(f"{where}.parallel: stream_chunk plugins run in sequence on each delta")
    run_async = value.get("async")
    if run_async is not None and (name != "post_response" or not isinstance(run_async, bool)):
        raise PluginConfigError(f"{where}.async: a boolean, for post_response only")
    return PhasePlan(sequential, parallel, run_async)


def parse_plugins_config(document: Any, where: str = "plugins config") -> PluginsConfig:
    """Check a §8.2 document; disabled plugins are dropped from every phase."""
    if not isinstance(document, dict):
        raise PluginConfigError(f"{where}: expected an object with `plugins` and `phases`")
    unknown = sorted(set(document) - {"plugins", "phases"})
    if unknown:
        raise PluginConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    items = document.get("plugins") or []
    if not isinstance(items, list):
        raise PluginConfigError(f"{where}.plugins: expected a list")
    entries: dict[str, PluginEntry] = {}
    declared: set[str] = set()
    for i, item in enumerate(items):
        entry = _entry(item, f"{where}.plugins[{i}]")
        name = item["name"]
        if name in declared:
            raise PluginConfigError(f"{where}.plugins[{i}]: plugin {name!r} is declared twice")
        declared.add(name)
        if entry is not None:
            entries[name] = entry
    phases_doc = document.get("phases") or {}
    if not isinstance(phases_doc, dict):
        raise PluginConfigError(f"{where}.phases: expected an object keyed by phase")
    phases: dict[str, PhasePlan] = {}
    for phase, value in phases_doc.items():
        if phase not in PHASES:
            raise PluginConfigError(f"{where}.phases.{phase}: unknown phase (one of: {', '.join(PHASES)})")
        plan = _phase(phase, value, f"{where}.phases.{phase}")
        for name in plan.names():
            if name not in declared:
                raise PluginConfigError(f"{where}.phases.{phase}: plugin {name!r} is not declared in plugins")
        # a disabled plugin stays declared but runs nowhere
        phases[phase] = PhasePlan(
            tuple(n for n in plan.sequential if n in entries),
            tuple(n for n in plan.parallel if n in entries),
            plan.run_async,
        )
    return PluginsConfig(entries, phases)


def read_plugins_file(path: str | Path) -> PluginsConfig:
    """Read a plugin configuration file: a §8.2 document (JSON or YAML), or a catalogue YAML with a `plugins:`
    section holding one."""
    import yaml  # only when a file is read: the hot path's import stays lean

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PluginConfigError(f"{path}: cannot read the file ({exc.strerror})") from None
    try:
        document = yaml.safe_load(text)  # JSON is YAML
    except yaml.YAMLError as exc:
        raise PluginConfigError(f"{path}: neither JSON nor YAML ({exc})") from None
    if isinstance(document, dict) and isinstance(document.get("plugins"), dict):
        return parse_plugins_config(document["plugins"], f"{path}: plugins")
    return parse_plugins_config(document, str(path))
