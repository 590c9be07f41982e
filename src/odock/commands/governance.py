"""`odock budgets create|list|delete` and `odock quotas create|list|delete`.

They open the database from ODOCK_DATABASE_URL (or --database-url), resolve owners by name through the catalogue
(`--org acme [--team ml | --user a@b.c | --key ci]`) or take `--owner-type/--owner-id`, print a table or `--json`,
and report a failure as one line on stderr with exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from odock.admin.governance import GovernanceAdmin
from odock.errors import GatewayError
from odock.governance.periods import PERIODS
from odock.governance.store import METRICS, OWNER_TYPES, GovernanceStore

Action = Callable[[GovernanceAdmin, argparse.Namespace], Awaitable[Any]]
BUDGET_COLUMNS = ("id", "name", "owner_type", "owner_id", "period", "amount_nanos", "timezone", "active")
QUOTA_COLUMNS = ("id", "name", "owner_type", "owner_id", "period", "metric", "limit", "active")


async def _with_admin(args: argparse.Namespace, action: Action) -> Any:
    from odock.settings import load_settings
    from odock.state.service import CatalogueService
    from odock.state.sql import SqlStore

    settings = load_settings(database_url=args.database_url)
    # the catalogue store runs the migrations (0002_governance included) and resolves owner names
    catalogue_store = await SqlStore.open(settings.database_url, settings)
    store = GovernanceStore(catalogue_store)
    try:
        return await action(GovernanceAdmin(store, catalogue=CatalogueService(catalogue_store)), args)
    finally:
        await catalogue_store.close()


def _print(value: Any, args: argparse.Namespace, columns: tuple[str, ...]) -> None:
    data = msgspec.to_builtins(value)
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return
    rows = data if isinstance(data, list) else [data] if isinstance(data, dict) else []
    if not rows:
        print("(none)" if isinstance(data, list) else "ok")
        return
    cells = [[("-" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for line in cells:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def _command(action: Action, columns: tuple[str, ...]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            result = asyncio.run(_with_admin(args, action))
        except GatewayError as exc:
            print(f"odock: error: {exc.message} ({exc.code})", file=sys.stderr)
            return 1
        except SystemExit as exc:
            if isinstance(exc.code, str):
                print(f"odock: error: {exc.code}", file=sys.stderr)
                return 1
            raise
        _print(result, args, columns)
        return 0

    return run


def _owner(args: argparse.Namespace) -> dict[str, Any]:
    if args.owner_type or args.owner_id:
        return {"owner_type": args.owner_type, "owner_id": args.owner_id}
    owner = {"organisation": args.org, "team": args.team, "user": args.user, "key": args.key}
    return {k: v for k, v in owner.items() if v}


def _schedule(args: argparse.Namespace) -> dict[str, Any]:
    data: dict[str, Any] = {"name": args.name, "period": args.period, **_owner(args)}
    for field in ("timezone", "start_at", "end_at"):
        if getattr(args, field):
            data[field] = getattr(args, field)
    return data


async def _budgets_create(s: GovernanceAdmin, a: argparse.Namespace) -> Any:
    data = _schedule(a)
    if a.amount_nanos is not None:
        data["amount_nanos"] = a.amount_nanos
    if a.amount_usd is not None:
        data["amount_usd"] = a.amount_usd
    if a.thresholds:
        data["thresholds"] = [int(t) for t in a.thresholds.split(",") if t.strip()]
    return await s.create_budget(data)


async def _quotas_create(s: GovernanceAdmin, a: argparse.Namespace) -> Any:
    return await s.create_quota({**_schedule(a), "metric": a.metric, "limit": a.limit})


async def _list(s: GovernanceAdmin, a: argparse.Namespace, kind: str) -> Any:
    filters: dict[str, Any] = {}
    if a.owner_type:
        filters["owner_type"] = a.owner_type
    if a.owner_id:
        filters["owner_id"] = a.owner_id
    if a.org:
        filters["organisation_id"] = (await s.catalogue.get_organisation(a.org)).id if s.catalogue else a.org
    return await (s.list_budgets if kind == "budget" else s.list_quotas)(**filters)


async def _budgets_list(s: GovernanceAdmin, a: argparse.Namespace) -> Any:
    return await _list(s, a, "budget")


async def _quotas_list(s: GovernanceAdmin, a: argparse.Namespace) -> Any:
    return await _list(s, a, "quota")


async def _budgets_delete(s: GovernanceAdmin, a: argparse.Namespace) -> Any:
    await s.delete_budget(a.id)
    return {"deleted": a.id}


async def _quotas_delete(s: GovernanceAdmin, a: argparse.Namespace) -> Any:
    await s.delete_quota(a.id)
    return {"deleted": a.id}


def _common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--database-url", help="override ODOCK_DATABASE_URL (sqlite:///file.db or postgresql://…)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _owner_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--org", help="owner organisation (name or id)")
    parser.add_argument("--team", help="owner team name (with --org)")
    parser.add_argument("--user", help="owner user email (with --org)")
    parser.add_argument("--key", help="owner API key name (with --org)")
    parser.add_argument(
        "--owner-type", choices=OWNER_TYPES, help="owner type, with --owner-id (instead of names)"
    )
    parser.add_argument("--owner-id", help="owner id, with --owner-type")


def _create_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True)
    _owner_options(parser)
    parser.add_argument("--period", choices=PERIODS, default="MONTHLY")
    parser.add_argument("--timezone", help="IANA time zone (default: the owner's)")
    parser.add_argument(
        "--start-at", dest="start_at", help="ISO 8601 start (weekly windows start on its weekday)"
    )
    parser.add_argument("--end-at", dest="end_at", help="ISO 8601 end")


def add_parsers(subparsers: Any) -> None:
    """Add `budgets` and `quotas` to the `odock` sub-command parser."""
    for kind, columns in (("budgets", BUDGET_COLUMNS), ("quotas", QUOTA_COLUMNS)):
        top = subparsers.add_parser(kind, help=f"manage {kind}", description=f"manage {kind}")
        group = top.add_subparsers(dest=f"{kind}_command", required=True, metavar="ACTION")
        create = _common(group.add_parser("create", help=f"create a {kind[:-1]}"))
        _create_options(create)
        if kind == "budgets":
            amount = create.add_mutually_exclusive_group(required=True)
            amount.add_argument("--amount-usd", dest="amount_usd", help="amount in USD (decimal, exact)")
            amount.add_argument("--amount-nanos", dest="amount_nanos", type=int, help="amount in nanos USD")
            create.add_argument(
                "--thresholds", help="comma-separated warning percentages (default 50,80,90,100)"
            )
            create.set_defaults(func=_command(_budgets_create, columns))
        else:
            create.add_argument("--metric", required=True, choices=METRICS)
            create.add_argument("--limit", required=True, type=int)
            create.set_defaults(func=_command(_quotas_create, columns))
        listing = _common(group.add_parser("list", help=f"list {kind}"))
        listing.add_argument("--org", help="only this organisation's (name or id)")
        listing.add_argument("--owner-type", choices=OWNER_TYPES)
        listing.add_argument("--owner-id")
        listing.set_defaults(func=_command(_budgets_list if kind == "budgets" else _quotas_list, columns))
        delete = _common(group.add_parser("delete", help=f"delete a {kind[:-1]}"))
        delete.add_argument("id")
        delete.set_defaults(
            func=_command(_budgets_delete if kind == "budgets" else _quotas_delete, ("deleted",))
        )
