"""The MCP call's own stages (reference §2.3 steps 7–13 and 17), between the shared ones:

    pre-auth gate → authenticate → MCP usage record → resolve server → MCP access → early gate (the caller's
    scopes and the server's policy under MCP scope: step 10) → read request → tool rules → [pre_upstream:
    SafetySec / plugins on MCP, off by default] → MCP gate (budget and quota reservation) → (the endpoint
    proxies through the server's transport)

A stage keeps what it learnt in the call's `McpRequest` (`call.route_state`).
"""

from __future__ import annotations

import functools
import re
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from odock import metrics
from odock.errors import BadRequest, DependencyUnavailable, Forbidden, NotFound
from odock.mcp import pricing
from odock.mcp.call import McpRequest
from odock.mcp.protocol import check_routing_headers, enforce, parse_body
from odock.pipeline.stage import Stage
from odock.pipeline.stages.usage import call_metadata
from odock.state.records import McpUsage, UsageRecord

if TYPE_CHECKING:
    from odock.context import CallContext
    from odock.governance import Governance
    from odock.mcp.directory import McpDirectory
    from odock.mcp.runtime import McpRuntime
    from odock.mcp.session import SessionSigner
    from odock.pipeline.call import Call
    from odock.usage import UsageRecorder


PREFIX = "/v1/mcp"
MCP_SCOPE = "mcp"
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")


def mcp_request(call: Call) -> McpRequest:
    state = call.route_state
    assert isinstance(state, McpRequest), "the MCP stages run in the mcp pipeline only"
    return state


def parse_path(path: str) -> McpRequest:
    """`/v1/mcp/{slug|id}[/{path}]`: the server reference and the rest; 400 invalid_mcp_ref when malformed."""
    return McpRequest(*_split_path(path))


@functools.lru_cache(maxsize=256)  # a client calls the same few servers' paths again and again
def _split_path(path: str) -> tuple[str, str]:
    rest = path[len(PREFIX) + 1 :] if path.startswith(PREFIX + "/") else ""
    ref, _, subpath = rest.partition("/")
    if not _REF.match(ref):
        raise BadRequest("the path must name an MCP server: /v1/mcp/{slug or id}[/{path}]", "invalid_mcp_ref")
    if "." in subpath and any(part in (".", "..") for part in subpath.split("/")):
        raise BadRequest("the MCP path must not hold '.' or '..' segments", "invalid_mcp_ref")
    return ref, subpath


class ResolveMcpServer(Stage):
    """Steps 7–8: the server by id, else by slug, in the key's organisation; enabled (else 404 mcp_not_found)."""

    name = "mcp_resolve"

    def __init__(self, directory: McpDirectory, runtime: McpRuntime) -> None:
        self.directory = directory
        self.runtime = runtime

    async def before(self, call: Call) -> None:
        state = call.route_state = parse_path(call.exchange.path)
        state.runtime = self.runtime
        key = call.ctx.key
        assert key is not None
        try:
            server = await self.directory.server(key.organisation_id, state.ref)
        except DependencyUnavailable:
            raise DependencyUnavailable("MCP server lookup unavailable", "mcp_lookup_unavailable") from None
        if server is None or not server.enabled:
            raise NotFound(f"MCP server {state.ref!r} not found", "mcp_not_found")
        state.server = server
        state.plan = plan = self.runtime.plan(server)
        state.rules = plan.rules
        # the early gate (step 10) adds the server's policy under MCP scope; the MCP gate checks the measured bytes
        call.ctx.extra_scope = (MCP_SCOPE, server.id, server.policies)


class McpAccess(Stage):
    """Step 9: the key holds a grant for this server (a model grant never implies one), and the server's team or
    key scope, when set, includes the key; else 403 mcp_not_allowed."""

    name = "mcp_access"

    def __init__(self, directory: McpDirectory) -> None:
        self.directory = directory

    async def before(self, call: Call) -> None:
        server, key = mcp_request(call).server, call.ctx.key
        assert server is not None and key is not None
        try:
            grants = await self.directory.grants(key.id)
        except DependencyUnavailable:
            raise DependencyUnavailable("MCP access check unavailable", "mcp_access_unavailable") from None
        if server.id not in grants:
            raise Forbidden(
                f"this API key is not allowed to use MCP server {server.slug!r}", "mcp_not_allowed"
            )
        if (server.team_id and key.team_id != server.team_id) or (
            server.api_key_id and key.id != server.api_key_id
        ):
            raise Forbidden(f"MCP server {server.slug!r} is scoped to another team or key", "mcp_not_allowed")


class ReadMcpRequest(Stage):
    """Step 11: read a POST's JSON-RPC body (every batch element), check the 2026-07-28 routing headers against
    it, and unwrap the session token (404 when it is not this key's session on this server)."""

    name = "mcp_read"

    def __init__(self, signer: SessionSigner) -> None:
        self.signer = signer

    async def before(self, call: Call) -> None:
        state, ctx = mcp_request(call), call.ctx
        assert state.server is not None and ctx.key is not None
        token = call.exchange.headers.get("mcp-session-id")
        if token:
            state.upstream_session = self.signer.unwrap(token, ctx.key.id, state.server.id)
        if call.exchange.method != "POST":
            ctx.stream = call.exchange.method == "GET"
            return
        body = await call.read_body()
        messages, batch = parse_body(body)
        check_routing_headers(call.exchange.headers, messages, batch)
        state.take(messages, batch, body)


class McpToolRules(Stage):
    """Step 12: allowedTools, then blockedTools, then semanticFilter, on every element (403 mcp_guardrail_block):
    a refused call never reaches the upstream."""

    name = "mcp_tool_rules"

    async def before(self, call: Call) -> None:
        state = mcp_request(call)
        if state.rules is None or state.rules.empty or not state.messages:
            return
        try:
            enforce(state.rules, state.messages, state.body)
        except Forbidden:
            state.outcome = "blocked"
            metrics.child(metrics.MCP_BLOCKS, "call").inc()
            raise


class McpGate(Stage):
    """Step 13: the server's byte cap on the body as read, and budgets and quotas reserve pricing × request bytes
    plus the per-call and per-tool price (its rates and concurrency were the early gate's, step 10)."""

    name = "mcp_gate"

    def __init__(self, governance: Governance) -> None:
        self.governance = governance

    async def before(self, call: Call) -> None:
        state, ctx = mcp_request(call), call.ctx
        server = state.server
        assert server is not None
        calls = max(1, len(state.request_ids))
        ctx.reserve_nanos = pricing.reserve_nanos(server.pricing, state.tools, calls, len(state.body))
        ctx.output = "none"
        await self.governance.final(ctx)


def _clip(value: str | None, width: int) -> str | None:
    """A client-given name as the ledger can hold it: no NUL (PostgreSQL text refuses one), at most `width`."""
    if not value:
        return value
    return value.replace("\x00", "")[:width]


class McpRecordUsage(Stage):
    """Step 17: the `UsageRecord` (provider `mcp`, model = the server's slug, the cost, the pricing snapshot) and
    its MCP usage record (server, transport, method, tool, bytes in/out, latency, outcome: `UsageRecord.mcp`, one
    spool line and one ledger transaction with it), and the metrics.

    Taken once, as the LLM record is: just before the response's last bytes leave (so a client never holds a
    complete answer whose record a killed process could not replay from the spool), or, for a call that ends
    without a response (a client gone mid-stream), when the call ends. Never raises."""

    name = "mcp_usage"

    def __init__(self, recorder: UsageRecorder) -> None:
        self.recorder = recorder

    async def before(self, call: Call) -> None:
        ctx = call.ctx
        call.before_last_bytes(lambda: self.record(ctx, call.route_state), "MCP usage record")

    def record(self, ctx: CallContext, state: object) -> None:
        mcp = state if isinstance(state, McpRequest) else None
        server = mcp.server if mcp is not None else None
        transport = server.transport if server is not None else "none"
        method = mcp.method if mcp is not None else "none"
        status = ctx.status or 500
        outcome = mcp.outcome if mcp is not None and mcp.outcome != "success" else ctx.outcome
        if status >= 400 and outcome == "success":
            outcome = "failed"
        bytes_in = len(mcp.body) if mcp is not None else 0
        bytes_out = mcp.bytes_out if mcp is not None else 0
        tally = metrics.TALLY
        tally.inc(metrics.MCP_REQUESTS, (transport, method, outcome))
        tally.observe(metrics.MCP_DURATION, time.perf_counter() - ctx.started, (transport,))
        tally.inc(metrics.MCP_BYTES, ("in",), bytes_in)
        tally.inc(metrics.MCP_BYTES, ("out",), bytes_out)
        if mcp is not None and ctx.upstream_started is not None and not ctx.priced:
            ctx.cost_nanos, ctx.priced = mcp.cost_nanos(), True
        key = ctx.key
        if key is None:
            return
        details = None
        if mcp is not None:
            tools = mcp.tools
            details = McpUsage(
                server=mcp.ref,
                server_id=server.id if server else None,
                transport=transport,
                method=method,
                outcome=outcome,
                tool=_clip(tools[0], 200) if tools else None,
                tool_calls=mcp.tool_calls,
                endpoint=_clip(mcp.subpath, 500),
                bytes_in=bytes_in,
                bytes_out=bytes_out,
                upstream_status=mcp.upstream_status,
                metadata={"tools": [_clip(t, 200) for t in tools[:50]]} if len(tools) > 1 else None,
            )
        # at most 15 keywords: with more, CPython 3.11 compiles the call to build a dict of them (several times
        # the cost), so the fields most calls leave unset are set after
        record = UsageRecord(
            request_id=ctx.request_id,
            created_at=datetime.now(UTC),
            organisation_id=key.organisation_id,
            team_id=key.team_id,
            user_id=key.user_id,
            api_key_id=key.id,
            route="mcp",
            status=status,
            outcome="failed" if outcome in ("blocked", "failed") else ctx.outcome,
            model=server.slug if server else None,
            provider="mcp",
            stream=ctx.stream,
            latency_ms=ctx.elapsed_ms(),
            cost_nanos=ctx.cost_nanos,
            mcp=details,
        )
        if ctx.error_code is not None:
            record.error_code = ctx.error_code
        if server is not None and server.pricing:
            record.pricing = server.pricing
        if ctx.security or ctx.plugin_runs:
            # SafetySec decisions and plugin runs (never text), on a server that opted in
            record.metadata = call_metadata(ctx)
        self.recorder.record(record)
