"""The `odock mock-upstream` command."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `mock-upstream` sub-command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "mock-upstream",
        help="serve a fast, deterministic mock of the OpenAI, Anthropic, Gemini and vLLM APIs",
        description="Serve a mock LLM provider. Per-request directives: the `x-mock` header, "
        "`model;key=value`, or a `[[mock key=value]]` marker in the last user message.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9000, help="port to bind (default 9000)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before response headers")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="delay between stream events")
    parser.add_argument(
        "--fail-rate", type=float, default=0.0, help="probability (0..1) of failing a request"
    )
    parser.add_argument("--fail-status", type=int, default=500, help="HTTP status of those failures")
    parser.add_argument("--no-auth", action="store_true", help="accept requests without provider credentials")
    parser.set_defaults(func=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    from odock.mock.directives import MAX_DELAY_MS, MockDefaults
    from odock.mock.server import run

    if not 0.0 <= args.fail_rate <= 1.0:
        print("--fail-rate must be between 0 and 1")
        return 2
    if not (0.0 <= args.latency_ms <= MAX_DELAY_MS and 0.0 <= args.chunk_delay_ms <= MAX_DELAY_MS):
        print(f"--latency-ms and --chunk-delay-ms must be between 0 and {MAX_DELAY_MS:g}")
        return 2
    if not 400 <= args.fail_status <= 599:
        print("--fail-status must be an HTTP error status (400-599)")
        return 2
    defaults = MockDefaults(
        latency_ms=args.latency_ms,
        chunk_delay_ms=args.chunk_delay_ms,
        fail_rate=args.fail_rate,
        fail_status=args.fail_status,
        require_auth=not args.no_auth,
    )
    print(f"odock mock upstream on http://{args.host}:{args.port}")
    run(args.host, args.port, defaults)
    return 0
