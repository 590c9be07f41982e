"""Catalogue commands: `odock orgs|teams|users|providers|models|keys|grants|apply|usage …`.

They open the store from the environment (ODOCK_DATABASE_URL, ODOCK_SECRET_KEY), go through the same
`CatalogueService` as the admin API, print a compact table (or `--json`), and report a failure as one line on
stderr with exit status 1. Provider credentials are read from an environment variable named by
`--api-key-env`, never from the command line (which would keep them in shell history).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from odock.config_file import ApplyReport, apply_config
from odock.errors import BadRequest, GatewayError
from odock.providers.registry import PROVIDER_TYPES
from odock.settings import load_settings
from odock.state.records import KeyType
from odock.state.service import GROUP_BY, MODEL_TYPES, CatalogueService, CreatedKey, to_json
from odock.state.sql import SqlStore

Action = Callable[[CatalogueService, argparse.Namespace], Awaitable[Any]]
_KEY_TYPES: tuple[KeyType, ...] = ("ORGANISATION", "TEAM", "USER")

ORG_COLUMNS = ("id", "name", "timezone")
TEAM_COLUMNS = ("id", "organisation_id", "name")
USER_COLUMNS = ("id", "organisation_id", "email", "name")
PROVIDER_COLUMNS = ("id", "organisation_id", "name", "type", "base_url", "has_api_key", "enabled")
MODEL_COLUMNS = ("id", "organisation_id", "name", "slug", "provider_id", "type")
KEY_COLUMNS = (
    "id",
    "organisation_id",
    "name",
    "type",
    "key_preview",
    "expires_at",
    "revoked",
    "rotation_count",
)
USAGE_COLUMNS = (
    "group",
    "requests",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "reasoning_tokens",
    "cost_nanos",
)


# ---------------------------------------------------------------------------------------------- output


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Render rows as an aligned text table with a header."""
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column)] + [len(line[i]) for line in cells]) for i, column in enumerate(columns)]
    lines = ["  ".join(column.upper().ljust(width) for column, width in zip(columns, widths, strict=True))]
    lines += [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in cells
    ]
    return "\n".join(line.rstrip() for line in lines)


def _emit(value: Any, args: argparse.Namespace, columns: Sequence[str]) -> None:
    data = to_json(value)
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    elif isinstance(data, list):
        print(format_table(data, columns) if data else "(none)")
    elif isinstance(data, dict):
        width = max((len(k) for k in data), default=0)
        for key_name, item in data.items():
            print(f"{key_name.ljust(width)}  {_cell(item)}")
    elif data is not None:
        print(data)


def _fail(message: str) -> int:
    print(f"odock: error: {message}", file=sys.stderr)
    return 1


async def _with_service(args: argparse.Namespace, action: Action) -> Any:
    settings = load_settings(database_url=args.database_url)
    store = await SqlStore.open(settings.database_url, settings)
    try:
        return await action(CatalogueService(store), args)
    finally:
        await store.close()


def _command(action: Action, columns: Sequence[str] = ()) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            result = asyncio.run(_with_service(args, action))
        except GatewayError as exc:
            return _fail(f"{exc.message} ({exc.code})")
        except SystemExit as exc:
            # configuration problems (bad URL, missing ODOCK_SECRET_KEY) arrive as SystemExit(message)
            if isinstance(exc.code, str):
                return _fail(exc.code)
            raise
        except KeyboardInterrupt:
            return 130
        if isinstance(result, CreatedKey):
            body = to_json(result.key)
            body["secret"] = result.secret
            _emit(body, args, columns)
            print("odock: store this secret now: it is shown only once", file=sys.stderr)
        elif isinstance(result, ApplyReport):
            _print_report(result, args)
        else:
            _emit(result, args, columns)
        return 0

    return run


def _print_report(report: ApplyReport, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps({**to_json(report), "changed": report.changed}, indent=2, sort_keys=True))
        return
    for line in report.created:
        print(f"created  {line}")
    for line in report.updated:
        print(f"updated  {line}")
    for label, secret in report.generated_secrets.items():
        print(f"secret   {label}  {secret}")
    if report.generated_secrets:
        print("odock: store the generated key secrets now: they are shown only once", file=sys.stderr)
    print(report.summary())


# ---------------------------------------------------------------------------------------------- inputs


def _json_arg(text: str | None, flag: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise BadRequest(f"{flag} must be JSON, e.g. '{{}}'") from None


def _env_secret(name: str | None) -> str | None:
    if name is None:
        return None
    value = os.environ.get(name)
    if not value:
        raise BadRequest(f"--api-key-env: environment variable {name} is not set or empty")
    return value


def _put(target: dict[str, Any], **values: Any) -> dict[str, Any]:
    target.update({k: v for k, v in values.items() if v is not None})
    return target


# ---------------------------------------------------------------------------------------------- actions


async def _orgs_create(s: CatalogueService, a: argparse.Namespace) -> Any:
    return await s.create_organisation(
        _put({"name": a.name}, timezone=a.timezone, policies=_json_arg(a.policies, "--policies"))
    )


async def _orgs_list(s: CatalogueService, a: argparse.Namespace) -> Any:
    return await s.list_organisations()


async def _teams_create(s: CatalogueService, a: argparse.Namespace) -> Any:
    return await s.create_team(
        _put({"organisation": a.org, "name": a.name}, policies=_json_arg(a.policies, "--policies"))
    )


async def _teams_list(s: CatalogueService, a: argparse.Namespace) -> Any:
    return await s.list_teams(a.org)


async def _users_create(s: CatalogueService, a: argparse.Namespace) -> Any:
    return await s.create_user(_put({"organisation": a.org, "email": a.email}, name=a.name))


async def _users_list(s: CatalogueService, a: argparse.Namespace) -> Any:
    return await s.list_users(a.org)


async def _providers_create(s: CatalogueService, a: argparse.Namespace) -> Any:
    data = _put(
        {"organisation": a.org, "name": a.name, "type": a.type, "base_url": a.base_url},
        api_key=_env_secret(a.api_key_env),
        timeout_ms=a.timeout_ms,
        config=_json_arg(a.config, "--config"),
    )
    if a.disabled:
        data["enabled"] = False
    return await s.create_provider(data)


async def _providers_list(s: CatalogueService, a: argparse.Namespace) -> Any:
    return await s.list_providers(a.org)


async def _providers_update(s: CatalogueService, a: argparse.Namespace) -> Any:
    changes = _put(
        {},
        name=a.name,
        base_url=a.base_url,
        timeout_ms=a.timeout_ms,
        enabled=a.enabled,
        api_key=_env_secret(a.api_key_env),
        config=_json_arg(a.config, "--config"),
    )
    if a.clear_api_key:
        changes["api_key"] = None
    if not changes:
        raise BadRequest("nothing to update: give at least one option")
    return await s.update_provider(a.ref, changes, a.org)


async def _providers_delete(s: CatalogueService, a: argparse.Namespace) -> Any:
    await s.delete_provider(a.ref, a.org)
    return f"deleted provider {a.ref}"


def _capabilities(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


async def _models_create(s: CatalogueService, a: argparse.Namespace) -> Any:
    return await s.create_model(
        _put(
            {"organisation": a.org, "name": a.name, "provider": a.provider, "slug": a.slug},
            type=a.type,
            capabilities=_capabilities(a.capability),
            pricing=_json_arg(a.pricing, "--pricing"),
            policies=_json_arg(a.policies, "--policies"),
        )
    )


async def _models_list(s: CatalogueService, a: argparse.Namespace) -> Any:
    return await s.list_models(a.org)


async def _models_update(s: CatalogueService, a: argparse.Namespace) -> Any:
    changes = _put(
        {},
        name=a.name,
        provider=a.provider,
        slug=a.slug,
        type=a.type,
        capabilities=_capabilities(a.capability),
        pricing=_json_arg(a.pricing, "--pricing"),
        policies=_json_arg(a.policies, "--policies"),
    )
    if not changes:
        raise BadRequest("nothing to update: give at least one option")
    return await s.update_model(a.ref, changes, a.org)


async def _models_delete(s: CatalogueService, a: argparse.Namespace) -> Any:
    await s.delete_model(a.ref, a.org)
    return f"deleted model {a.ref}"


async def _keys_create(s: CatalogueService, a: argparse.Namespace) -> Any:
    return await s.create_key(
        _put(
            {"organisation": a.org, "name": a.name, "type": a.type},
            team=a.team,
            user=a.user,
            expires_at=a.expires_at,
            timezone=a.timezone,
            policies=_json_arg(a.policies, "--policies"),
            models=a.model,
        )
    )


async def _keys_list(s: CatalogueService, a: argparse.Namespace) -> Any:
    return await s.list_keys(a.org)


async def _keys_revoke(s: CatalogueService, a: argparse.Namespace) -> Any:
    return await s.revoke_key(a.ref, a.org)


async def _keys_rotate(s: CatalogueService, a: argparse.Namespace) -> Any:
    return await s.rotate_key(a.ref, expires_at=a.expires_at, organisation=a.org, rotated_by="odock cli")


async def _grants_add(s: CatalogueService, a: argparse.Namespace) -> Any:
    return await s.add_grant(a.key, a.model, a.org)


async def _grants_remove(s: CatalogueService, a: argparse.Namespace) -> Any:
    return await s.remove_grant(a.key, a.model, a.org)


async def _grants_list(s: CatalogueService, a: argparse.Namespace) -> Any:
    return await s.list_grants(a.key, a.org)


async def _apply(s: CatalogueService, a: argparse.Namespace) -> Any:
    return await apply_config(s, a.file)


async def _usage(s: CatalogueService, a: argparse.Namespace) -> Any:
    return await s.usage_summary(a.group_by, since=a.since, until=a.until, organisation=a.org)


# ---------------------------------------------------------------------------------------------- parsers


def _common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--database-url", help="override ODOCK_DATABASE_URL (sqlite:///file.db or postgresql://…)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _group(subparsers: Any, name: str, help_text: str) -> Any:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="ACTION")


def _leaf(
    group: Any, name: str, help_text: str, action: Action, columns: Sequence[str]
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _common(group.add_parser(name, help=help_text, description=help_text))
    parser.set_defaults(func=_command(action, columns))
    return parser


def _org_option(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument(
        "--org",
        required=required,
        help="organisation id or name" + ("" if required else " (to refer by name)"),
    )


def add_parsers(subparsers: Any) -> None:
    """Add the catalogue commands to the `odock` sub-command parser."""
    orgs = _group(subparsers, "orgs", "manage organisations")
    p = _leaf(orgs, "create", "create an organisation", _orgs_create, ORG_COLUMNS)
    p.add_argument("name")
    p.add_argument("--timezone")
    p.add_argument("--policies", help="policy envelope as JSON")
    _leaf(orgs, "list", "list organisations", _orgs_list, ORG_COLUMNS)

    teams = _group(subparsers, "teams", "manage teams")
    p = _leaf(teams, "create", "create a team", _teams_create, TEAM_COLUMNS)
    p.add_argument("name")
    _org_option(p, required=True)
    p.add_argument("--policies", help="policy envelope as JSON")
    _org_option(_leaf(teams, "list", "list teams", _teams_list, TEAM_COLUMNS))

    users = _group(subparsers, "users", "manage users")
    p = _leaf(users, "create", "create a user", _users_create, USER_COLUMNS)
    p.add_argument("email")
    _org_option(p, required=True)
    p.add_argument("--name")
    _org_option(_leaf(users, "list", "list users", _users_list, USER_COLUMNS))

    providers = _group(subparsers, "providers", "manage upstream providers")
    p = _leaf(providers, "create", "create a provider", _providers_create, PROVIDER_COLUMNS)
    p.add_argument("name")
    _org_option(p, required=True)
    p.add_argument("--type", required=True, choices=PROVIDER_TYPES)
    p.add_argument("--base-url", required=True)
    p.add_argument(
        "--api-key-env", metavar="VAR", help="name of the environment variable holding the credential"
    )
    p.add_argument("--timeout-ms", type=int)
    p.add_argument("--config", help="provider config as JSON")
    p.add_argument("--disabled", action="store_true")
    _org_option(_leaf(providers, "list", "list providers", _providers_list, PROVIDER_COLUMNS))
    p = _leaf(providers, "update", "change a provider", _providers_update, PROVIDER_COLUMNS)
    p.add_argument("ref", help="provider id (or name with --org)")
    _org_option(p)
    p.add_argument("--name")
    p.add_argument("--base-url")
    p.add_argument(
        "--api-key-env", metavar="VAR", help="name of the environment variable holding the credential"
    )
    p.add_argument("--clear-api-key", action="store_true")
    p.add_argument("--timeout-ms", type=int)
    p.add_argument("--config", help="provider config as JSON")
    enabled = p.add_mutually_exclusive_group()
    enabled.add_argument("--enable", dest="enabled", action="store_const", const=True)
    enabled.add_argument("--disable", dest="enabled", action="store_const", const=False)
    p = _leaf(providers, "delete", "delete a provider", _providers_delete, PROVIDER_COLUMNS)
    p.add_argument("ref", help="provider id (or name with --org)")
    _org_option(p)

    models = _group(subparsers, "models", "manage models")
    p = _leaf(models, "create", "create a model", _models_create, MODEL_COLUMNS)
    p.add_argument("name", help="client-facing model name")
    _org_option(p, required=True)
    p.add_argument("--provider", required=True, help="provider name or id")
    p.add_argument("--slug", required=True, help="upstream model id")
    p.add_argument("--type", choices=MODEL_TYPES)
    p.add_argument("--capability", action="append", help="capability (repeat, or comma-separated)")
    p.add_argument("--pricing", help='USD per 1M tokens as JSON, e.g. \'{"input":0.15,"output":0.6}\'')
    p.add_argument("--policies", help="policy envelope as JSON")
    _org_option(_leaf(models, "list", "list models", _models_list, MODEL_COLUMNS))
    p = _leaf(models, "update", "change a model", _models_update, MODEL_COLUMNS)
    p.add_argument("ref", help="model id (or name with --org)")
    _org_option(p)
    p.add_argument("--name")
    p.add_argument("--provider")
    p.add_argument("--slug")
    p.add_argument("--type", choices=MODEL_TYPES)
    p.add_argument("--capability", action="append")
    p.add_argument("--pricing")
    p.add_argument("--policies")
    p = _leaf(models, "delete", "delete a model", _models_delete, MODEL_COLUMNS)
    p.add_argument("ref", help="model id (or name with --org)")
    _org_option(p)

    keys = _group(subparsers, "keys", "manage API keys")
    p = _leaf(
        keys,
        "create",
        "create an API key (the secret is printed once)",
        _keys_create,
        (*KEY_COLUMNS, "secret"),
    )
    p.add_argument("name")
    _org_option(p, required=True)
    p.add_argument("--type", choices=_KEY_TYPES, default="ORGANISATION")
    p.add_argument("--team", help="team name or id (TEAM keys)")
    p.add_argument("--user", help="user e-mail or id (USER keys)")
    p.add_argument("--expires-at", help="ISO 8601 instant, e.g. 2027-01-01T00:00:00Z")
    p.add_argument("--timezone")
    p.add_argument("--policies", help="policy envelope as JSON")
    p.add_argument("--model", action="append", help="grant this model (repeatable)")
    _org_option(_leaf(keys, "list", "list API keys", _keys_list, KEY_COLUMNS))
    p = _leaf(keys, "revoke", "revoke an API key", _keys_revoke, KEY_COLUMNS)
    p.add_argument("ref", help="key id (or name with --org)")
    _org_option(p)
    p = _leaf(keys, "rotate", "rotate a key in place (new secret printed once)", _keys_rotate, KEY_COLUMNS)
    p.add_argument("ref", help="key id (or name with --org)")
    _org_option(p)
    p.add_argument("--expires-at", help="new expiry (omit for none)")

    grants = _group(subparsers, "grants", "manage key → model grants")
    for name, action, text in (
        ("add", _grants_add, "grant a key access to a model"),
        ("remove", _grants_remove, "withdraw a key's access to a model"),
    ):
        p = _leaf(grants, name, text, action, MODEL_COLUMNS)
        p.add_argument("key", help="key id (or name with --org)")
        p.add_argument("model", help="model name or id")
        _org_option(p)
    p = _leaf(grants, "list", "list the models a key may call", _grants_list, MODEL_COLUMNS)
    p.add_argument("key", help="key id (or name with --org)")
    _org_option(p)

    p = _common(subparsers.add_parser("apply", help="apply a declarative catalogue file (idempotent)"))
    p.add_argument("file")
    p.set_defaults(func=_command(_apply))

    p = _common(subparsers.add_parser("usage", help="summarise usage records"))
    p.add_argument("--group-by", choices=GROUP_BY, default="model")
    p.add_argument("--since", help="ISO 8601 start (inclusive)")
    p.add_argument("--until", help="ISO 8601 end (exclusive)")
    _org_option(p)
    p.set_defaults(func=_command(_usage, USAGE_COLUMNS))
