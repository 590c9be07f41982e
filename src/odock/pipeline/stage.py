"""The Stage contract: one step of a call, placed in the pipeline's ordered list (reference §2.2).

A stage has at most three hooks, each optional; the runner calls only those a stage overrides, so a stage that
has nothing to do on a phase costs nothing there:

- `before(call)`: before the upstream call, in list order. Pass, change the call, or raise a `GatewayError`.
  Undo work (a lease, a reservation) by registering a compensation with `call.defer(...)`: compensations run in
  reverse registration order, always — on success, on any error, and on cancellation.
- `on_delta(call, event)`: each normalized stream event, in list order; return the event (changed or not),
  None to drop it, or a list of events (the stages after this one see each of them). A stage that holds text
  back (SafetySec) returns nothing while it holds and releases what it held as a list before the terminal
  `StreamStop` event; raising a `GatewayError` ends the stream with the route's error event (never a clean end).
- `after(call, response)`: once the upstream answered (a unary answer before it is written; a stream after its
  last event), in reverse list order.

A stage declares `needs_request` / `needs_response` when it must see the decoded request or response. When no
enabled stage does, a same-dialect route stays a byte relay (DESIGN principle 1); when one does, the native body
is decoded with the route's dialect (httpx `Auth.requires_request_body` habit). A stage that finds in `before`
that it has nothing to do on this call calls `call.step_aside(self)`: its delta and after hooks are skipped, and
when it was the only stage needing the decoded response, the answer is relayed as bytes again.

A stage keeps per-call state in `call.stage_state` (a dict, created by the first stage that needs one; keyed by
stage name). Stages that use neither pay nothing.

A `before` hook may answer the call itself (the response cache's hit): it raises `Answered(self, events)` with a
whole normalized answer (`odock.model` StreamEvent list). The runner then runs no later stage, no routing and no
upstream call; the route replays the events in its dialect, streamed or unary as the client asked
(`Route.replay`); only the stages placed before the answering one see the answer (their delta and after hooks),
and the compensations registered so far run as always.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from odock.model import GatewayResponse, StreamEvent
    from odock.pipeline.call import Call
    from odock.safety.stream import FramedText, Reframe


class Stage:
    """Base class of every stage; override the hooks the stage needs and nothing else."""

    name: ClassVar[str] = "stage"
    needs_request: ClassVar[bool] = False
    needs_response: ClassVar[bool] = False

    async def before(self, call: Call) -> None:
        """Run before the upstream call."""

    def on_delta(self, call: Call, event: StreamEvent) -> StreamEvent | list[StreamEvent] | None:
        """Look at (or change, drop, hold back, or release several) normalized stream events."""
        return event

    async def after(self, call: Call, response: GatewayResponse | None) -> None:
        """Run once the upstream answered; `response` is decoded only when some stage needs it."""

    def framed(self, call: Call, reframe: Reframe) -> FramedText | None:
        """A stage whose delta hook only screens the answer's text with bounded hold-back may offer to do it over
        the upstream's own events (`odock.safety.stream.FramedText`; `reframe` writes an event with other text):
        a native route whose only delta stage does then forwards the upstream's bytes instead of re-encoding."""
        return None

    def rewrote(self, call: Call) -> bool:
        """Whether this call's after-hook may have changed the decoded answer; when no stage did, a native route
        sends the upstream's bytes instead of re-encoding them. A stage that needs the response may have, unless
        it says otherwise."""
        return self.needs_response

    # which hooks a subclass actually overrides (the runner builds its per-phase lists from these)
    @classmethod
    def hooks(cls) -> frozenset[str]:
        return frozenset(
            name for name in ("before", "on_delta", "after") if getattr(cls, name) is not getattr(Stage, name)
        )
