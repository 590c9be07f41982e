"""The declarative catalogue file (`odock apply FILE`, `odock serve --config FILE`): idempotent upsert by name.

Order: organisations (with their teams and users) → providers → models → keys (with grants set exactly to
`models`). Objects absent from the file are left alone. `${VAR}` is expanded from the environment; provider
`api_key` and key `secret` must be such references, never literals, so the file can live in version control.
The whole file is validated (shape, environment) before the first change.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml

from odock.errors import BadRequest, NotFound
from odock.mcp.service import McpCatalogueService
from odock.mcp.validation import check_auth
from odock.plugins.config import PluginConfigError, parse_plugins_config
from odock.state.service import CatalogueService, parse_datetime

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ONLY_REF = re.compile(r"^\s*\$\{[A-Za-z_][A-Za-z0-9_]*\}\s*$")

# `plugins` is process configuration (reference §8.2), not catalogue: `odock serve --config` runs it, `apply` skips it
_SECTIONS = {"organisations", "providers", "models", "mcp_servers", "keys", "budgets", "quotas", "plugins"}
_ORG = {"name", "timezone", "policies", "teams", "users"}
_TEAM = {"name", "policies"}
_USER = {"email", "name"}
_PROVIDER = {"organisation", "name", "type", "base_url", "api_key", "timeout_ms", "enabled", "config"}
_MODEL = {"organisation", "name", "provider", "slug", "type", "capabilities", "pricing", "policies", "config"}
_KEY = {
    "organisation",
    "name",
    "type",
    "team",
    "user",
    "secret",
    "expires_at",
    "timezone",
    "policies",
    "models",
    "mcp_servers",
}
_MCP_SERVER = {
    "organisation",
    "name",
    "slug",
    "transport",
    "endpoint_url",
    "stdio_command",
    "stdio_args",
    "stdio_env",
    "description",
    "team",
    "api_key",
    "auth",
    "enabled",
    "allowed_tools",
    "blocked_tools",
    "semantic_filter",
    "pricing",
    "policies",
    "config",
}
# upstream auth fields that hold secrets: only `${VAR}` references in a file
_MCP_AUTH_SECRETS = ("token", "value", "password", "client_secret", "clientSecret")


class ConfigFileError(BadRequest):
    """The catalogue file is invalid; the message names the place."""

    code = "invalid_config"


class ApplyReport(msgspec.Struct, kw_only=True):
    """What `apply_config` did; `changed` is false when the catalogue already matched the file."""

    created: list[str] = []
    updated: list[str] = []
    unchanged: list[str] = []
    # secrets of keys created here without a fixed `secret`: shown once, to the operator who applied the file
    generated_secrets: dict[str, str] = {}

    @property
    def changed(self) -> bool:
        """Tell whether anything was created or updated."""
        return bool(self.created or self.updated)

    def __repr__(self) -> str:
        # reports get logged: never let the generated secrets ride along
        hidden = ", ".join(self.generated_secrets) or "none"
        return f"ApplyReport({self.summary()}; generated secrets for: {hidden})"

    __str__ = __repr__

    def summary(self) -> str:
        """Return a one-line summary."""
        if not self.changed:
            return f"no changes ({len(self.unchanged)} objects already up to date)"
        return f"{len(self.created)} created, {len(self.updated)} updated, {len(self.unchanged)} unchanged"


def _expand(value: Any, where: str, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                raise ConfigFileError(f"{where}: environment variable {name} is not set")
            return env[name]

        return _REF.sub(substitute, value)
    if isinstance(value, list):
        return [_expand(item, f"{where}[{i}]", env) for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {key: _expand(item, f"{where}.{key}", env) for key, item in value.items()}
    return value


def _entries(document: Mapping[str, Any], section: str) -> list[dict[str, Any]]:
    items = document.get(section) or []
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ConfigFileError(f"{section}: expected a list of objects")
    return items


def _check_fields(item: Mapping[str, Any], allowed: set[str], where: str, required: tuple[str, ...]) -> None:
    unknown = sorted(set(item) - allowed)
    if unknown:
        raise ConfigFileError(f"{where}: unknown field(s) {', '.join(unknown)}")
    for field in required:
        if item.get(field) in (None, ""):
            raise ConfigFileError(f"{where}: {field} is required")


def _secret_reference(item: Mapping[str, Any], field: str, where: str) -> None:
    value = item.get(field)
    if value is None:
        return
    if not isinstance(value, str) or not _ONLY_REF.match(value):
        raise ConfigFileError(
            f"{where}.{field}: inline secrets are refused; reference an environment variable, e.g. ${{MY_SECRET}}"
        )


def _check_mcp_servers(document: Mapping[str, Any]) -> None:
    for i, server in enumerate(_entries(document, "mcp_servers")):
        where = f"mcp_servers[{i}]"
        _check_fields(server, _MCP_SERVER, where, ("organisation", "name"))
        auth = server.get("auth")
        if auth is not None and not isinstance(auth, dict):
            raise ConfigFileError(f"{where}.auth: expected a mapping")
        for field in _MCP_AUTH_SECRETS:
            _secret_reference(auth or {}, field, f"{where}.auth")


def _check_plugins(document: Mapping[str, Any], path: str | Path) -> None:
    if document.get("plugins") is not None:
        try:
            parse_plugins_config(document["plugins"], f"{path}: plugins")
        except PluginConfigError as exc:
            raise ConfigFileError(exc.message) from None


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Read, check and expand a catalogue file (no database access)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read the file ({exc.strerror})") from None
    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(document, dict):
        raise ConfigFileError(f"{path}: the top level must be a mapping")
    unknown = sorted(set(document) - _SECTIONS)
    if unknown:
        raise ConfigFileError(f"{path}: unknown section(s) {', '.join(unknown)}")
    for i, org in enumerate(_entries(document, "organisations")):
        where = f"organisations[{i}]"
        _check_fields(org, _ORG, where, ("name",))
        for j, team in enumerate(org.get("teams") or []):
            _check_fields(team, _TEAM, f"{where}.teams[{j}]", ("name",))
        for j, user in enumerate(org.get("users") or []):
            _check_fields(user, _USER, f"{where}.users[{j}]", ("email",))
    for i, provider in enumerate(_entries(document, "providers")):
        _check_fields(provider, _PROVIDER, f"providers[{i}]", ("organisation", "name", "type", "base_url"))
        _secret_reference(provider, "api_key", f"providers[{i}]")
    for i, model in enumerate(_entries(document, "models")):
        _check_fields(model, _MODEL, f"models[{i}]", ("organisation", "name", "provider", "slug"))
    _check_mcp_servers(document)
    for i, key in enumerate(_entries(document, "keys")):
        _check_fields(key, _KEY, f"keys[{i}]", ("organisation", "name"))
        _secret_reference(key, "secret", f"keys[{i}]")
    _check_plugins(document, path)
    expanded: dict[str, Any] = _expand(document, str(path), os.environ if env is None else env)
    return expanded


def has_plugins(path: str | Path) -> bool:
    """Whether a catalogue file carries a `plugins:` section (which `odock serve --config` runs)."""
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False  # load_config reports it
    return isinstance(document, dict) and document.get("plugins") is not None


def _differs(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    return {field: value for field, value in desired.items() if current.get(field) != value}


async def apply_config(  # noqa: C901
    service: CatalogueService, path: str | Path, env: Mapping[str, str] | None = None
) -> ApplyReport:
    """Upsert the file's catalogue by name; applying the same file twice changes nothing the second time."""
    document = load_config(path, env)
    report = ApplyReport()

    def record(kind: str, label: str, changes: Mapping[str, Any] | None) -> None:
        if changes is None:
            report.created.append(f"{kind} {label}")
        elif changes:
            report.updated.append(f"{kind} {label} ({', '.join(sorted(changes))})")
        else:
            report.unchanged.append(f"{kind} {label}")

    for org_entry in _entries(document, "organisations"):
        name = org_entry["name"]
        desired: dict[str, Any] = {k: org_entry[k] for k in ("timezone", "policies") if k in org_entry}
        changes: dict[str, Any]
        try:
            org = await service.get_organisation(name)
        except NotFound:
            org = await service.create_organisation({"name": name, **desired})
            record("organisation", name, None)
        else:
            changes = _differs(msgspec.to_builtins(org), desired)
            if changes:
                await service.update_organisation(org.id, changes)
            record("organisation", name, changes)
        for team_entry in org_entry.get("teams") or []:
            label = f"{name}/{team_entry['name']}"
            desired = {"policies": team_entry.get("policies") or {}}
            try:
                team = await service.get_team(team_entry["name"], org.id)
            except NotFound:
                await service.create_team({"organisation": org.id, "name": team_entry["name"], **desired})
                record("team", label, None)
            else:
                changes = _differs(msgspec.to_builtins(team), desired)
                if changes:
                    await service.update_team(team.id, changes)
                record("team", label, changes)
        for user_entry in org_entry.get("users") or []:
            label = f"{name}/{user_entry['email']}"
            desired = {"name": user_entry.get("name") or ""}
            try:
                user = await service.get_user(user_entry["email"], org.id)
            except NotFound:
                await service.create_user({"organisation": org.id, "email": user_entry["email"], **desired})
                record("user", label, None)
            else:
                changes = _differs(msgspec.to_builtins(user), desired)
                if changes:
                    await service.update_user(user.id, changes)
                record("user", label, changes)

    for entry in _entries(document, "providers"):
        label = f"{entry['organisation']}/{entry['name']}"
        desired = {k: v for k, v in entry.items() if k not in ("organisation", "name", "api_key")}
        if isinstance(desired.get("timeout_ms"), str) and desired["timeout_ms"].isdigit():
            desired["timeout_ms"] = int(desired["timeout_ms"])
        try:
            provider = await service.get_provider(entry["name"], entry["organisation"])
        except NotFound:
            await service.create_provider(entry)
            record("provider", label, None)
            continue
        current = msgspec.to_builtins(provider)
        changes = _differs(current, desired)
        if "base_url" in changes and str(changes["base_url"]).rstrip("/") == current["base_url"]:
            del changes["base_url"]
        if "api_key" in entry and await service.provider_api_key(provider.id) != (entry["api_key"] or None):
            changes["api_key"] = entry["api_key"]
        if changes:
            await service.update_provider(provider.id, changes)
        record("provider", label, {k: "…" if k == "api_key" else v for k, v in changes.items()})

    for entry in _entries(document, "models"):
        label = f"{entry['organisation']}/{entry['name']}"
        try:
            model = await service.get_model(entry["name"], entry["organisation"])
        except NotFound:
            await service.create_model(entry)
            record("model", label, None)
            continue
        desired = {k: v for k, v in entry.items() if k not in ("organisation", "name", "provider")}
        changes = _differs(msgspec.to_builtins(model), desired)
        provider = await service.get_provider(entry["provider"], model.organisation_id)
        if provider.id != model.provider_id:
            changes["provider"] = provider.id
        if changes:
            await service.update_model(model.id, changes)
        record("model", label, changes)

    await _apply_mcp_servers(service, _entries(document, "mcp_servers"), record)
    for entry in _entries(document, "keys"):
        label = f"{entry['organisation']}/{entry['name']}"
        models = entry.get("models")
        data = {k: v for k, v in entry.items() if k not in ("models", "mcp_servers")}
        try:
            key = await service.get_key(entry["name"], entry["organisation"])
        except NotFound:
            created = await service.create_key({**data, "models": models or []})
            if not entry.get("secret"):
                report.generated_secrets[label] = created.secret
            if entry.get("mcp_servers"):
                await McpCatalogueService(service.store).set_mcp_grants(
                    created.key.id, list(entry["mcp_servers"])
                )
            record("key", label, None)
            continue
        changes = {}
        current = msgspec.to_builtins(key)
        if "type" in entry and entry["type"] != key.type:
            changes["type"] = entry["type"]
        org_id = key.organisation_id
        if "team" in entry or "type" in entry:
            team_id = (await service.get_team(entry["team"], org_id)).id if entry.get("team") else None
            if team_id != key.team_id:
                changes["team"] = entry.get("team")
        if "user" in entry or "type" in entry:
            user_id = (await service.get_user(entry["user"], org_id)).id if entry.get("user") else None
            if user_id != key.user_id:
                changes["user"] = entry.get("user")
        if (
            "expires_at" in entry
            and parse_datetime(entry["expires_at"], f"keys {label}.expires_at") != key.expires_at
        ):
            changes["expires_at"] = entry["expires_at"]
        for field in ("timezone", "policies"):
            if field in entry and entry[field] != current[field]:
                changes[field] = entry[field]
        if changes:
            await service.update_key(key.id, changes)
        secret = entry.get("secret")
        if secret and not await service.key_matches_secret(key.id, secret):
            # the file fixes the secret: move the key onto it (a rotation, so history is kept)
            await service.rotate_key(
                key.id, expires_at=key.expires_at, secret=secret, rotated_by="odock apply"
            )
            changes["secret"] = "…"
        if models is not None and await service.set_grants(key.id, list(models)):
            changes["models"] = models
        servers = entry.get("mcp_servers")
        if servers is not None and await McpCatalogueService(service.store).set_mcp_grants(
            key.id, list(servers)
        ):
            changes["mcp_servers"] = servers
        record("key", label, changes)
    if document.get("budgets") or document.get("quotas"):
        from odock.admin.governance import admin_for, apply_governance

        governed = await apply_governance(document, service=admin_for(service.store))
        report.created += governed["created"]
        report.updated += governed["updated"]
        report.unchanged += governed["unchanged"]
    return report


async def _apply_mcp_servers(
    service: CatalogueService,
    entries: list[dict[str, Any]],
    record: Callable[[str, str, Mapping[str, Any] | None], None],
) -> None:
    """Upsert MCP servers by slug (default: the name) within their organisation; secrets compared decrypted."""
    mcp = McpCatalogueService(service.store)
    for entry in entries:
        slug = entry.get("slug") or entry["name"]
        label = f"{entry['organisation']}/{slug}"
        try:
            info = await mcp.get_mcp_server(slug, entry["organisation"])
        except NotFound:
            await mcp.create_mcp_server(entry)
            record("mcp server", label, None)
            continue
        server = await mcp.find_server(info.organisation_id, info.id)
        assert server is not None
        current = msgspec.to_builtins(info)
        secret_fields = ("auth", "stdio_env", "team", "api_key", "organisation")
        desired = {k: v for k, v in entry.items() if k not in secret_fields}
        changes = _differs(current, desired)
        if "endpoint_url" in changes and str(changes["endpoint_url"]).rstrip("/") == current["endpoint_url"]:
            del changes["endpoint_url"]
        if "auth" in entry:
            kind, wanted = check_auth(entry["auth"])
            if kind != server.auth_type or (wanted or {}) != server.auth:
                changes["auth"] = entry["auth"]
        if "stdio_env" in entry and (entry["stdio_env"] or {}) != server.stdio_env:
            changes["stdio_env"] = entry["stdio_env"]
        if changes:
            await mcp.update_mcp_server(info.id, changes)
        record("mcp server", label, {k: "…" if k in ("auth", "stdio_env") else v for k, v in changes.items()})
