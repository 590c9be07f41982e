"""Step 16's plan: which deployments the upstream call may try, in which order (smart routing, reference §9).
The attempts themselves run in the runner, over the route's `send`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from odock.pipeline.stage import Stage

if TYPE_CHECKING:
    from odock.pipeline.call import Call
    from odock.routing.policy import Routing


class RoutePlanning(Stage):
    name = "routing"

    def __init__(self, routing: Routing) -> None:
        self.routing = routing

    async def before(self, call: Call) -> None:
        assert call.primary is not None
        call.plan = await self.routing.plan(call.ctx, call.primary)
