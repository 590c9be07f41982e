"""The stages of each kind of call, in the reference order (§2.2), built once at start from configuration.

    LLM call:  pre-auth gate → authenticate → usage record → early gate → read body → [pre_route]
               → model access → [pre_reserve] → final gate (TPM, budgets, quotas) → [pre_upstream] → routing plan
    listing:   pre-auth gate → authenticate → early gate            (`/v1/vllm/models`: answered from the catalogue)
    key check: pre-auth gate → authenticate                         (`/v1/keys/validate`: no limits of the key spent)
    MCP call:  pre-auth gate → authenticate → MCP usage record → resolve server → MCP access → early gate
               (the caller's scopes and the server's, under MCP scope) → read request → tool rules
               → [mcp_pre_upstream] → MCP gate (budgets, quotas)

`pre_route` is where plugins' pre_route hooks go (§2.2 step 9). `pre_reserve` holds SafetySec's request phase and
then the response cache: the cache must key on the redacted body and answer before any budget is reserved, so the
request phase moves ahead of the reservations (§2.2 puts it at step 14; a block there has nothing to release).
`mcp_pre_upstream` is where SafetySec and plugins go on MCP calls (reference §2.3 leaves them out: off by default;
the gateway puts `odock.pipeline.stages.mcp_screen.McpScreening` there only while some server opts in); they read
the parsed JSON-RPC messages on `call.route_state` (`odock.mcp.call.McpRequest`) and run before the reservation,
so a block has nothing to release (and the reservation measures the arguments as forwarded).
`pre_upstream` is where plugins' pre_upstream hooks go (step 15: after the reservations, so a block releases
them). Governance stages are left out when governance is off; nothing else is conditional.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from odock.pipeline.stage import Stage
from odock.pipeline.stages.access import Authenticate, ModelAccess, ReadBody
from odock.pipeline.stages.gates import EarlyGate, FinalGate, PreAuthGate
from odock.pipeline.stages.mcp import (
    McpAccess,
    McpGate,
    McpRecordUsage,
    McpToolRules,
    ReadMcpRequest,
    ResolveMcpServer,
)
from odock.pipeline.stages.routing import RoutePlanning
from odock.pipeline.stages.usage import Pricer, RecordUsage

if TYPE_CHECKING:
    from odock.governance import Governance
    from odock.mcp.directory import McpDirectory
    from odock.mcp.runtime import McpRuntime
    from odock.routing.policy import Routing
    from odock.state.catalogue import Catalogue
    from odock.usage import UsageRecorder

__all__ = ["Pricer", "key_check_stages", "listing_stages", "llm_stages", "mcp_stages"]


def llm_stages(
    *,
    catalogue: Catalogue,
    recorder: UsageRecorder,
    routing: Routing,
    governance: Governance | None = None,
    pricer: Pricer | None = None,
    pre_route: Sequence[Stage] = (),
    pre_reserve: Sequence[Stage] = (),
    pre_upstream: Sequence[Stage] = (),
) -> list[Stage]:
    """The stages of an LLM call, in order."""
    pricer = pricer or Pricer()
    stages: list[Stage] = []
    if governance is not None:
        stages.append(PreAuthGate(governance))
    stages += [Authenticate(catalogue), RecordUsage(recorder, pricer, governance)]
    if governance is not None:
        stages.append(EarlyGate(governance, pricer))
    stages += [ReadBody(), *pre_route, ModelAccess(catalogue), *pre_reserve]
    if governance is not None:
        stages.append(FinalGate(governance))
    stages += [*pre_upstream, RoutePlanning(routing)]
    return stages


def listing_stages(
    *, catalogue: Catalogue, governance: Governance | None = None, pricer: Pricer | None = None
) -> list[Stage]:
    """The stages of a call the gateway answers from its catalogue (no upstream, no usage record)."""
    stages: list[Stage] = []
    if governance is not None:
        stages.append(PreAuthGate(governance))
    stages.append(Authenticate(catalogue))
    if governance is not None:
        stages.append(EarlyGate(governance, pricer or Pricer()))
    return stages


def key_check_stages(*, catalogue: Catalogue, governance: Governance | None = None) -> list[Stage]:
    """The stages of a key validation: the pre-auth gate (IP rules, the global request rate: a brute-force
    guard) and authentication; the key's own limits are not spent by a control plane asking about it."""
    stages: list[Stage] = []
    if governance is not None:
        stages.append(PreAuthGate(governance))
    stages.append(Authenticate(catalogue))
    return stages


def mcp_stages(
    *,
    catalogue: Catalogue,
    recorder: UsageRecorder,
    directory: McpDirectory,
    runtime: McpRuntime,
    governance: Governance | None = None,
    pricer: Pricer | None = None,
    pre_upstream: Sequence[Stage] = (),
) -> list[Stage]:
    """The stages of an MCP call, in the order of reference §2.3."""
    stages: list[Stage] = []
    if governance is not None:
        stages.append(PreAuthGate(governance))
    stages += [Authenticate(catalogue), McpRecordUsage(recorder), ResolveMcpServer(directory, runtime)]
    stages.append(McpAccess(directory))
    if governance is not None:
        stages.append(EarlyGate(governance, pricer or Pricer()))  # with the server's policy, under MCP scope
    stages += [ReadMcpRequest(runtime.signer), McpToolRules(), *pre_upstream]
    if governance is not None:
        stages.append(McpGate(governance))
    return stages
