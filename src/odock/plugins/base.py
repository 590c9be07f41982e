"""The plugin contract (reference §8.1): what a plugin implements, what it is given, and what it returns.

A plugin is a class with one method per phase it takes part in; configuration (`odock.plugins.config`) says which
phases call it, sequentially or in parallel. Every phase method but `stream_chunk` is async and returns a
`PluginResult` (or None: allow, unchanged):

    pre_route(view)      after the body is decoded, before model access (§2.2 step 9)
    pre_upstream(view)   after the reservations, before routing (step 15): a block releases them
    post_upstream(view)  once the upstream answered (step 18): `view.response` is the decoded unary answer
    post_response(view)  after the answer went out (step 22), off the request path when the phase is async
    stream_chunk(view, event)  each normalized stream delta, synchronously (one plugin serves all dialects);
                              it may replace, drop, hold back and later release events (`events`)

A plugin declares `needs_request` / `needs_response` when it reads the decoded call: only then do native routes
decode it (they stay byte relays otherwise). A plugin that modifies changes `view.request` / `view.response` in
place or returns `PluginResult.modify(...)` with a replacement.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from odock.model import GatewayRequest, GatewayResponse, StreamEvent

if TYPE_CHECKING:
    from odock.context import CallContext
    from odock.plugins.storage import PluginStorage
    from odock.transport.base import Transport

PHASES = ("pre_route", "pre_upstream", "post_upstream", "post_response", "stream_chunk")
Phase = Literal["pre_route", "pre_upstream", "post_upstream", "post_response", "stream_chunk"]
Action = Literal["allow", "modify", "block"]

# a plugin's own block code must look like the gateway's codes (snake_case), so SDKs and dashboards can use it
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# findings are labels (a category, a rule id), never text taken from the call
_FINDING = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
MAX_FINDINGS = 10
MAX_MESSAGE = 500


@dataclass(slots=True)
class PluginResult:
    """What a plugin decided: allow (the default), modify (with replacements) or block (status, code, message)."""

    action: Action = "allow"
    request: GatewayRequest | None = None
    response: GatewayResponse | None = None
    # stream_chunk: the replacement event (None with `drop=True` removes the event), or `events`: the events to
    # send in its place, none or several (a plugin that holds text back and releases it later)
    event: StreamEvent | None = None
    drop: bool = False
    status: int = 403
    code: str = "plugin_blocked"
    message: str = ""
    findings: tuple[str, ...] = ()
    events: list[StreamEvent] | None = None

    @classmethod
    def allow(cls, *findings: str) -> PluginResult:
        return cls("allow", findings=findings)

    @classmethod
    def modify(
        cls,
        *,
        request: GatewayRequest | None = None,
        response: GatewayResponse | None = None,
        event: StreamEvent | None = None,
        events: list[StreamEvent] | None = None,
        findings: tuple[str, ...] = (),
    ) -> PluginResult:
        return cls(
            "modify", request=request, response=response, event=event, findings=findings, events=events
        )

    @classmethod
    def block(
        cls,
        message: str = "",
        *,
        status: int = 403,
        code: str = "plugin_blocked",
        findings: tuple[str, ...] = (),
    ) -> PluginResult:
        return cls("block", status=status, code=code, message=message, findings=findings)

    def block_status(self) -> int:
        """The block's status: the plugin's own 4xx, else 403."""
        return self.status if 400 <= self.status < 500 else 403

    def block_code(self) -> str:
        return self.code if _CODE.match(self.code or "") else "plugin_blocked"

    def clean_findings(self) -> list[str]:
        """The findings fit for the usage record: labels only, at most MAX_FINDINGS."""
        return [f for f in self.findings if isinstance(f, str) and _FINDING.match(f)][:MAX_FINDINGS]


@dataclass(slots=True)
class PluginSetup:
    """What a plugin factory is given: its configured name and `config`, the `PLUGINS_ENV_*` values (prefix
    removed), and the gateway's upstream HTTP transport (for plugins that call a service)."""

    name: str
    config: Mapping[str, Any]
    env: Mapping[str, str] = field(default_factory=dict)
    transport: Transport | None = None


class PluginView:
    """What one plugin execution sees of the call: identity and routing facts, the decoded request and response
    (when decoded), the call's outcome (post_response), the plugin's `config`, a per-call `state` dict for
    stream_chunk, and `storage`: reads limited to the plugin's `storage_access` scopes."""

    __slots__ = ("_ctx", "config", "phase", "request", "response", "state", "storage")

    def __init__(
        self,
        phase: Phase,
        ctx: CallContext,
        request: GatewayRequest | None,
        response: GatewayResponse | None,
        config: Mapping[str, Any],
        storage: PluginStorage,
        state: dict[str, Any],
    ) -> None:
        self.phase = phase
        self._ctx = ctx
        self.request = request
        self.response = response
        self.config = config
        self.storage = storage
        self.state = state

    # facts of the call (read-only)
    @property
    def request_id(self) -> str:
        return self._ctx.request_id

    @property
    def route(self) -> str:
        return self._ctx.route

    @property
    def stream(self) -> bool:
        return self._ctx.stream

    @property
    def organisation_id(self) -> str | None:
        return self._ctx.key.organisation_id if self._ctx.key else None

    @property
    def team_id(self) -> str | None:
        return self._ctx.key.team_id if self._ctx.key else None

    @property
    def user_id(self) -> str | None:
        return self._ctx.key.user_id if self._ctx.key else None

    @property
    def api_key_id(self) -> str | None:
        return self._ctx.key.id if self._ctx.key else None

    @property
    def requested_model(self) -> str | None:
        return self._ctx.requested_model

    @property
    def provider(self) -> str | None:
        """The provider type that answered (or was chosen), once known."""
        provider = self._ctx.answered_provider or self._ctx.provider
        return provider.type if provider else None

    @property
    def status(self) -> int:
        return self._ctx.status

    @property
    def outcome(self) -> str:
        return self._ctx.outcome

    @property
    def error_code(self) -> str | None:
        return self._ctx.error_code

    @property
    def input_tokens(self) -> int:
        return self._ctx.usage.total_input if self._ctx.usage else 0

    @property
    def output_tokens(self) -> int:
        return self._ctx.usage.output_tokens if self._ctx.usage else 0

    def elapsed_ms(self) -> int:
        return self._ctx.elapsed_ms()


class Plugin:
    """Base class of plugins; override the phase methods the plugin takes part in and nothing else."""

    needs_request: ClassVar[bool] = False
    needs_response: ClassVar[bool] = False

    def __init__(self, setup: PluginSetup | None = None) -> None:
        self.setup = setup

    async def pre_route(self, view: PluginView) -> PluginResult | None:
        return None

    async def pre_upstream(self, view: PluginView) -> PluginResult | None:
        return None

    async def post_upstream(self, view: PluginView) -> PluginResult | None:
        return None

    async def post_response(self, view: PluginView) -> PluginResult | None:
        return None

    def stream_chunk(self, view: PluginView, event: StreamEvent) -> PluginResult | None:
        return None

    async def close(self) -> None:
        """Release what the plugin holds (called once at shutdown)."""

    @classmethod
    def phases(cls) -> frozenset[str]:
        """The phases this plugin class implements."""
        return frozenset(p for p in PHASES if getattr(cls, p) is not getattr(Plugin, p))
