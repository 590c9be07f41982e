"""Gateway errors: every failure the client can see, with its HTTP status and snake_case code.

    GatewayError(status, code, message)             base; rendered by the edge in the client's dialect
    ├── BadRequest            400  invalid_request, invalid_request_body, model_not_found, provider_not_allowed, …
    ├── Unauthorized          401  unauthorized, api_key_expired, api_key_revoked
    ├── PaymentRequired       402  budget_exceeded
    ├── Forbidden             403  model_not_allowed, provider_disabled, safety_blocked, …
    │   └── PluginBlocked     403  plugin_blocked (or the plugin's own 4xx status and code)
    ├── NotFound              404  not_found
    ├── MethodNotAllowed      405  method_not_allowed
    ├── PayloadTooLarge       413  payload_too_large
    ├── TooManyRequests       429  rate-limit codes, quota_exceeded (carries scope/limit/retry_after)
    ├── PluginFailed          500  plugin_error (a fail-closed plugin raised or timed out)
    ├── UpstreamError         502  upstream_error, upstream_unreachable, upstream_timeout (carries upstream body;
    │                              the edge may give a final upstream 4xx its own status, see odock.edge.endpoint)
    └── DependencyUnavailable 503  store_unavailable, model_lookup_unavailable, …

Foreign exceptions (aiohttp, asyncpg, sqlalchemy, redis) are mapped to these at the boundary that imports them.
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """A failure with a documented status and code; `extra` fields are merged into the error body."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        code: str | None = None,
        *,
        status: int | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.extra = extra or {}
        self.headers = headers or {}


class BadRequest(GatewayError):
    status, code = 400, "invalid_request"


class Unauthorized(GatewayError):
    status, code = 401, "unauthorized"


class PaymentRequired(GatewayError):
    status, code = 402, "budget_exceeded"


class Forbidden(GatewayError):
    status, code = 403, "forbidden"


class NotFound(GatewayError):
    status, code = 404, "not_found"


class MethodNotAllowed(GatewayError):
    status, code = 405, "method_not_allowed"


class RequestTimeout(GatewayError):
    status, code = 408, "request_timeout"


class PayloadTooLarge(GatewayError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(GatewayError):
    status, code = 415, "unsupported_media_type"


class TooManyRequests(GatewayError):
    status, code = 429, "rate_limit_exceeded"


class UpstreamError(GatewayError):
    """The provider failed. `upstream_status`/`upstream_body`/`upstream_headers` keep what it said (the headers: only
    those a client may act on, e.g. Retry-After); `kind` drives failover."""

    status, code = 502, "upstream_error"

    def __init__(
        self,
        message: str,
        code: str | None = None,
        *,
        kind: str = "5xx",
        upstream_status: int | None = None,
        upstream_body: bytes = b"",
        upstream_content_type: str = "",
        upstream_headers: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, code, headers=headers)
        # one of: "5xx", "4xx", "rate_limit", "timeout", "connect", "protocol"
        self.kind = kind
        self.upstream_status = upstream_status
        self.upstream_body = upstream_body
        self.upstream_content_type = upstream_content_type
        self.upstream_headers = upstream_headers or {}


class PluginBlocked(Forbidden):
    """A plugin refused the call (reference §8.4): 403 plugin_blocked, or the plugin's own 4xx status and code."""

    status, code = 403, "plugin_blocked"


class PluginFailed(GatewayError):
    """A plugin configured to fail closed raised or timed out: the call cannot go on without it."""

    status, code = 500, "plugin_error"


class DependencyUnavailable(GatewayError):
    status, code = 503, "dependency_unavailable"


class ClientDisconnected(Exception):
    """The client went away; nothing more can be written to it (not a GatewayError: there is no one to tell)."""
