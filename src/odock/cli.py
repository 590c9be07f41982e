"""The `odock` command: serve the gateway, run the mock provider, manage the catalogue."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the chosen command."""
    from odock.commands import cache, catalogue, serve
    from odock.commands import governance as governance_cli
    from odock.commands import mcp as mcp_cli
    from odock.mock import cli as mock_cli

    parser = argparse.ArgumentParser(prog="odock", description="Odock LLM gateway")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.add_parser(commands)
    mock_cli.add_parser(commands)
    catalogue.add_parsers(commands)
    governance_cli.add_parsers(commands)
    mcp_cli.add_parsers(commands)
    cache.add_parsers(commands)
    args = parser.parse_args(argv)
    code = args.func(args)
    sys.exit(code or 0)
