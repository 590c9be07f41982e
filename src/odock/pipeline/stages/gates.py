"""Governance stages: the pre-auth gate, the early gate, and the final gate with budget/quota reservation.

The engine is `odock.governance.Governance`; these stages only place its steps in the call's order and register
its post-flight (lease release, token refund, settle or release of reservations) as the call's compensation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from odock.pipeline.stage import Stage

if TYPE_CHECKING:
    from odock.governance import Governance
    from odock.pipeline.call import Call
    from odock.pipeline.stages.usage import Pricer


class PreAuthGate(Stage):
    """Reference §2.2 step 3: global IP rules and request rate, before any auth or database work."""

    name = "pre_auth_gate"

    def __init__(self, governance: Governance) -> None:
        self.governance = governance

    async def before(self, call: Call) -> None:
        await self.governance.pre_auth(call.ctx.client_ip)


class EarlyGate(Stage):
    """Step 7: payload bytes, max_tokens when known, concurrency lease, burst, RPS, RPM — before the body is read.

    From here on the call holds governance receipts, so its post-flight is registered first, before the gate
    can take anything: whatever the gates and reservations took is given back or settled, however the call ends.
    """

    name = "early_gate"

    def __init__(self, governance: Governance, pricer: Pricer) -> None:
        self.governance = governance
        self.pricer = pricer

    async def before(self, call: Call) -> None:
        ctx = call.ctx
        length = call.exchange.headers.get("content-length")
        ctx.body_bytes = int(length) if length and length.isdigit() else 0
        governance, pricer = self.governance, self.pricer
        call.defer(lambda: governance.complete(ctx, pricer.cost(ctx)))  # (priced when the call ends)
        call.headers_from = governance.response_headers
        await governance.early(ctx)


class FinalGate(Stage):
    """Steps 12–13: model-scope limits, the max_tokens cap and the TPM reservation, then the budget and quota
    reservation — one atomic step (one Redis write in cluster mode), so a denied budget never holds tokens."""

    name = "final_gate"

    def __init__(self, governance: Governance) -> None:
        self.governance = governance

    async def before(self, call: Call) -> None:
        await self.governance.final(call.ctx)
