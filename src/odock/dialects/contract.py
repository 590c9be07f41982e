"""The dialect contract: the one shape every wire format has, on each of its two sides.

The client side reads what a client sent and writes what it gets back; the upstream side writes what a provider
is sent and reads its answer. Each dialect module builds one `ClientSide` and one `UpstreamSide` from its own
functions; the fields are typed with callback protocols, so mypy checks every dialect's functions against the
contract where the sides are built. `dialects.registry` names them all: callers pick a dialect from the table
and never test which module they hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import msgspec

from odock.dialects.sse import SSEEvent
from odock.errors import GatewayError
from odock.model import GatewayRequest, GatewayResponse, StreamEvent, Usage


class StreamOptions(msgspec.Struct, frozen=True):
    """What the client asked about the shape of its stream; a dialect reads the options it has and ignores the rest."""

    # OpenAI chat: `stream_options.include_usage` — a last chunk carrying usage
    include_usage: bool = False
    # Gemini: a JSON array of chunks (the default) rather than SSE (`?alt=sse`)
    json_array: bool = False


@runtime_checkable
class StreamEncoder(Protocol):
    """Normalized stream events in, the client dialect's stream bytes out."""

    def event(self, ev: StreamEvent) -> bytes:
        """Encode one event (possibly nothing)."""
        ...

    def finish(self) -> bytes:
        """End the stream cleanly (final chunk, usage, terminator)."""
        ...

    def fail(self, err: GatewayError) -> bytes:
        """End the stream with the dialect's explicit error, so a broken stream never looks complete."""
        ...


@runtime_checkable
class StreamDecoder(Protocol):
    """Upstream SSE events in, normalized stream events out."""

    # the dialect's terminal event was seen: a stream ending without it was cut
    done: bool
    # nothing the client needs follows: its answer can end here and the rest of the body be drained
    ended: bool

    def feed(self, ev: SSEEvent) -> list[StreamEvent]:
        """Decode one upstream SSE event."""
        ...


class DecodeRequest(Protocol):
    def __call__(self, body: dict[str, Any], *, path_model: str | None = None) -> GatewayRequest: ...


class EncodeResponse(Protocol):
    def __call__(self, resp: GatewayResponse, *, model: str) -> bytes: ...


class NewStreamEncoder(Protocol):
    def __call__(self, *, model: str, request_id: str, options: StreamOptions) -> StreamEncoder: ...


class ErrorBody(Protocol):
    def __call__(self, err: GatewayError) -> bytes: ...


class EncodeRequest(Protocol):
    def __call__(self, req: GatewayRequest, *, slug: str) -> dict[str, Any]: ...


class DecodeResponse(Protocol):
    def __call__(self, body: dict[str, Any]) -> GatewayResponse: ...


class NewStreamDecoder(Protocol):
    def __call__(self) -> StreamDecoder: ...


class UsageFrom(Protocol):
    def __call__(self, raw: dict[str, Any]) -> Usage: ...


@dataclass(frozen=True, slots=True)
class ClientSide:
    """A dialect as a client speaks it (request in, response, stream and errors out)."""

    # the client's body (and, for Gemini, the model named in the path) as a normalized request
    decode_request: DecodeRequest
    # a unary answer as the client's JSON body
    encode_response: EncodeResponse
    stream_encoder: NewStreamEncoder
    # an error as the client's SDK expects it (so it raises the class matching the status)
    error_body: ErrorBody


@dataclass(frozen=True, slots=True)
class UpstreamSide:
    """A dialect as a provider speaks it (request out, response, stream and usage in)."""

    # a normalized request as the provider's JSON body, for the upstream model `slug`
    encode_request: EncodeRequest
    decode_response: DecodeResponse
    stream_decoder: NewStreamDecoder
    # the provider's usage object, normalized (input excludes cached tokens; output includes reasoning)
    usage_from: UsageFrom


@dataclass(frozen=True, slots=True)
class Dialect:
    """One wire format, both sides; `name` is its key in `dialects.registry.DIALECTS`."""

    name: str
    client: ClientSide
    upstream: UpstreamSide
