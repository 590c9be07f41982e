"""`odock serve`: apply an optional catalogue file, then serve the gateway with uvicorn (uvloop + httptools)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import Any

from odock import logs
from odock.settings import load_settings

log = logging.getLogger("odock.serve")


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "serve", help="run the gateway (embedded SQLite default; cluster with Redis)"
    )
    parser.add_argument("--config", metavar="FILE", help="catalogue YAML applied before serving")
    parser.add_argument("--host", help="listen address (HTTP_HOST, default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="listen port (HTTP_PORT, default 8080)")
    parser.add_argument(
        "--console-port",
        type=int,
        help="serve the console and the admin API on this port of HTTP_HOST too, and /console on the main port "
        "answers 404 (ODOCK_CONSOLE_PORT; default: the console at /console on the main port)",
    )
    parser.add_argument("--workers", type=int, help="worker processes (cluster mode only; ODOCK_WORKERS)")
    parser.set_defaults(func=run)


async def _apply(settings: Any, path: str) -> None:
    from odock.config_file import apply_config
    from odock.state.service import CatalogueService
    from odock.state.sql import SqlStore

    store = await SqlStore.open(settings.database_url, settings)
    try:
        report = await apply_config(CatalogueService(store), path)
        log.info("applied %s: %s", path, report.summary())
        # keys created without a `secret:` reference get a generated secret, shown this once on stdout
        for name, secret in report.generated_secrets.items():
            print(f"new key {name}: {secret}", flush=True)
    finally:
        await store.close()


def _plugins_from(path: str) -> None:
    """A catalogue file's `plugins:` section becomes the plugin configuration of every worker."""
    from odock.config_file import has_plugins

    if not has_plugins(path):
        return
    named = os.environ.get("PLUGINS_CONFIG_PATH")
    if named and os.path.abspath(named) != os.path.abspath(path):
        raise SystemExit(
            f"plugins are configured twice: PLUGINS_CONFIG_PATH={named} and the plugins: section of {path}"
        )
    os.environ["PLUGINS_CONFIG_PATH"] = os.path.abspath(path)


def _check_plugins(path: str) -> None:
    """Refuse a broken plugin file before any worker starts: its shape, and that every named type loads (each
    plugin's own `config` is checked when the workers build it)."""
    from odock.plugins import PluginConfigError, read_plugins_file
    from odock.plugins.loader import find_factory

    try:
        config = read_plugins_file(path)
        for name in sorted({n for plan in config.phases.values() for n in plan.names()}):
            find_factory(config.entries[name].type, f"plugin {name!r}")
    except PluginConfigError as err:
        raise SystemExit(f"invalid plugin configuration: {err.message}") from None


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from odock.edge.server import GatewayHttpProtocol

    if args.config:
        _plugins_from(args.config)
    settings = load_settings(
        http_host=args.host, http_port=args.port, workers=args.workers, console_port=args.console_port
    )
    logs.configure(settings.log_level, settings.log_format)
    if settings.plugins_config_path:
        _check_plugins(settings.plugins_config_path)
    if args.config:
        asyncio.run(_apply(settings, args.config))
    # workers re-read settings from the environment; carry the command-line overrides there
    os.environ["HTTP_HOST"], os.environ["HTTP_PORT"] = settings.http_host, str(settings.http_port)
    os.environ["ODOCK_CONSOLE_PORT"] = str(settings.console_port)
    mode = "cluster" if settings.cluster else "embedded"
    log.info(
        "odock gateway listening on %s:%d (%s mode, %d worker(s))",
        settings.http_host,
        settings.http_port,
        mode,
        settings.workers,
    )
    if not settings.admin_token:
        log.info("admin API disabled: set ODOCK_ADMIN_TOKEN to enable /admin")
    elif settings.console_port:
        log.info("console and admin API also on %s:%d", settings.http_host, settings.console_port)
    uvicorn.run(
        "odock.app:create_app",
        factory=True,
        host=settings.http_host,
        port=settings.http_port,
        workers=settings.workers,
        loop="uvloop",
        # uvicorn's httptools protocol, each response head sent with its body; it applies the connection limits
        # itself (HTTP_MAX_HEADER_BYTES, HTTP_READ_HEADER_TIMEOUT, HTTP_IDLE_TIMEOUT, HTTP_MAX_CONCURRENT_REQUESTS):
        # uvicorn's limit_concurrency would count open connections, not requests
        http=GatewayHttpProtocol,
        lifespan="on",
        access_log=False,
        log_config=None,
        # the gateway resolves the client IP itself (trusted proxies only); uvicorn's middleware would be a
        # second, less strict pass over every request
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=30,
    )
    return 0
