"""Smart-routing policy resolution (reference §9): which candidates a call may try.

Routing runs only when both switches are on: the organisation's `policies.routing.enabled` and a routing policy
on the API key for the requested model's type. Otherwise the call goes straight to the requested model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from odock.errors import GatewayError
from odock.routing.router import Candidate, RoutePlan

if TYPE_CHECKING:
    from odock.pipeline.call import Call


class Routing:
    async def plan(self, call: Call, primary: Candidate) -> RoutePlan:
        """Return the attempt plan for a call whose requested model resolved to `primary`."""
        return RoutePlan(candidates=[primary])

    def observe(self, candidate: Candidate, ok: bool, elapsed_s: float, err: GatewayError | None) -> None:
        """Feed an attempt's outcome back (latency windows, cooldowns)."""
