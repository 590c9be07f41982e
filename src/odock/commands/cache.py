"""`odock cache purge --org acme [--namespace faq] [--model gpt-test] [--key ci]`.

The entries live in the running gateway (embedded mode: its memory) or Redis (cluster mode), so the command asks
a running gateway's admin API (`POST /admin/cache/purge`, `--url`, default http://127.0.0.1:$HTTP_PORT, with
ODOCK_ADMIN_TOKEN); in cluster mode any process purges for all.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any


def _purge(args: argparse.Namespace) -> int:
    from odock.settings import load_settings

    settings = load_settings()
    token = args.admin_token or settings.admin_token
    if not token:
        print("error: the admin token is needed (ODOCK_ADMIN_TOKEN or --admin-token)", file=sys.stderr)
        return 1
    url = (args.url or f"http://127.0.0.1:{settings.http_port}").rstrip("/") + "/admin/cache/purge"
    body: dict[str, Any] = {"organisation": args.org}
    for field in ("namespace", "model", "key"):
        if getattr(args, field):
            body[field] = getattr(args, field)
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as reply:
            purged = json.loads(reply.read())["purged"]
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {exc.code}"
        print(f"error: {message}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"error: cannot reach the gateway at {url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"purged": purged}) if args.json else f"purged {purged} cached answer(s)")
    return 0


def add_parsers(subparsers: Any) -> None:
    """Add `odock cache purge` to the `odock` sub-command parser."""
    group = subparsers.add_parser(
        "cache", help="manage the response cache", description="manage the response cache"
    )
    actions = group.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    purge = actions.add_parser(
        "purge",
        help="drop cached answers of an organisation",
        description="drop cached answers of an organisation",
    )
    purge.add_argument("--org", required=True, help="organisation id or name")
    purge.add_argument("--namespace", help="only this policy namespace")
    purge.add_argument("--model", help="only this model (id or name)")
    purge.add_argument("--key", help="only the entries scoped to this key (id or name)")
    purge.add_argument("--url", help="the gateway's base URL (default http://127.0.0.1:$HTTP_PORT)")
    purge.add_argument("--admin-token", help="default: ODOCK_ADMIN_TOKEN")
    purge.add_argument("--timeout", type=float, default=30.0)
    purge.add_argument("--json", action="store_true", help="print JSON")
    purge.set_defaults(func=_purge)
