"""Plugin implementations are found by the name configuration gives them, and only then: a bundled plugin, an
entry point of the `odock.plugins` group, or a `module:attr` path. Installing a package enables nothing (the
peer lesson of the credential-stealing release): the group is only searched for a name a phase lists."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

from odock.plugins.base import Plugin, PluginSetup
from odock.plugins.config import PluginConfigError, PluginEntry

ENTRY_POINT_GROUP = "odock.plugins"
BUNDLED = {
    "audit_log": "odock.plugins.bundled.audit_log:AuditLog",
    "pii_mask": "odock.plugins.bundled.pii_mask:PiiMask",
    "request_transform": "odock.plugins.bundled.request_transform:RequestTransform",
    "webhook": "odock.plugins.bundled.webhook:Webhook",
}

Factory = Callable[[PluginSetup], Plugin]


def _import(path: str, where: str) -> Any:
    module_name, _, attr = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise PluginConfigError(f"{where}: cannot load {path!r} ({exc})") from None
    return target


def find_factory(kind: str, where: str) -> Factory:
    """The factory `kind` names: bundled, `module:attr`, or an `odock.plugins` entry point."""
    if kind in BUNDLED:
        return _import(BUNDLED[kind], where)  # type: ignore[no-any-return]
    if ":" in kind:
        return _import(kind, where)  # type: ignore[no-any-return]
    found = entry_points(group=ENTRY_POINT_GROUP, name=kind)
    if not found:
        raise PluginConfigError(
            f"{where}: no plugin type {kind!r} (bundled: {', '.join(sorted(BUNDLED))}; or an "
            f"{ENTRY_POINT_GROUP} entry point; or module:attr)"
        )
    try:
        return next(iter(found)).load()  # type: ignore[no-any-return]
    except Exception as exc:
        raise PluginConfigError(f"{where}: entry point {kind!r} failed to load ({exc})") from None


def build_plugin(
    entry: PluginEntry, phases: set[str], env: Mapping[str, str], transport: Any = None
) -> Plugin:
    """Create one configured plugin and check it implements every phase that lists it."""
    where = f"plugin {entry.name!r}"
    factory = find_factory(entry.type, where)
    try:
        plugin = factory(PluginSetup(entry.name, entry.config, env, transport))
    except PluginConfigError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise PluginConfigError(f"{where}: invalid config ({exc})") from None
    if not isinstance(plugin, Plugin):
        raise PluginConfigError(f"{where}: {entry.type!r} did not build an odock.plugins.Plugin")
    missing = sorted(phases - plugin.phases())
    if missing:
        raise PluginConfigError(f"{where}: listed in {', '.join(missing)} but does not implement it")
    return plugin
