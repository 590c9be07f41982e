"""Gateway configuration from the environment (reference §14), read once at start."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from typing import Any

import msgspec

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Parse a Go-style duration ("250ms", "15s", "5m", "24h"; bare numbers are seconds) into seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    return float(match.group(1)) * _UNIT[match.group(2)]


class Settings(msgspec.Struct, kw_only=True):
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    workers: int = 1
    # embedded default: a SQLite file beside the working directory; cluster: postgresql://…
    database_url: str = "sqlite:///./odock.db"
    # empty: embedded mode (in-process counters, one process); set: cluster mode
    redis_url: str = ""
    admin_token: str = ""
    # 0: the console at /console on the main port; a port: the console (and the admin API) on their own listener
    # in the same process (HTTP_HOST), /console on the main port answers 404
    console_port: int = 0
    # base64 32-byte key for provider credentials; embedded mode generates a key file beside the database
    secret_key: str = ""
    max_body_bytes: int = 32 * 1024 * 1024
    read_timeout_s: float = 15.0
    # connection limits of the HTTP protocol (edge/server.py): a request head's size and time to arrive, and how
    # long an idle keep-alive connection stays open
    max_header_bytes: int = 64 * 1024
    read_header_timeout_s: float = 10.0
    idle_timeout_s: float = 60.0
    # requests being served at once in this process (a complete head read); 0: no cap
    max_concurrent_requests: int = 0
    trust_proxy_headers: bool = False
    trusted_proxy_cidrs: list[str] = []
    auth_cache_ttl_s: float = 300.0
    auth_negative_cache_ttl_s: float = 30.0
    model_cache_ttl_s: float = 300.0
    catalogue_poll_interval_s: float = 1.0
    usage_flush_interval_s: float = 0.5
    usage_batch_size: int = 500
    usage_buffer_max: int = 100_000
    # the local copy of not yet committed usage records (embedded mode; None: on in embedded mode, off in cluster)
    usage_spool: bool | None = None
    usage_spool_max_bytes: int = 128 * 1024 * 1024
    # where usage batches are written: "process" (a child process of this one, off the event loop) or "inline"
    usage_writer: str = "process"
    # CPUs the writer process may run on (None: the gateway's own); e.g. a core the event loop is not pinned to
    usage_writer_cpus: list[int] | None = None
    ratelimit_global_policy: dict[str, Any] = {}
    redis_fail_open: bool = False
    # a reservation older than this belongs to a crashed process; reconciliation releases it every interval
    reservation_ttl_s: float = 900.0
    reconcile_interval_s: float = 30.0
    # a token count above this in one call's usage is impossible: clamped to it and flagged
    usage_max_tokens: int = 10_000_000
    routing_cooldown_failures: int = 3
    routing_cooldown_s: float = 30.0
    # "http11" (the lean default transport) or "aiohttp"
    upstream_client: str = "http11"
    # "passthrough": a final upstream 4xx keeps its status (native routes: its body too); "strict": always 502
    upstream_errors: str = "passthrough"
    log_level: str = "info"
    # "auto": human-readable lines on a terminal, JSON lines otherwise; "json" | "text" force one
    log_format: str = "auto"
    # one line per request: "all", "errors" (status >= 400 or a failed stream), "sampled" (errors, traced calls
    # and a `request_log_sample_rate` share of the rest), "off"
    request_log: str = "all"
    request_log_sample_rate: float = 0.1
    # SafetySec (reference §7.1): noop (default: only scopes whose policies.safety enable it), security (on for
    # every call unless a scope may and does switch it off), off (no stage at all: policies.safety ignored)
    safety_engine_mode: str = "noop"
    safety_session_ttl_s: float = 24 * 3600.0
    safety_block_threshold: float = 0.85
    safety_allow_disable: bool = True
    safety_fail_status: int = 503
    safety_stream_holdback: int = 128
    safety_guard_url: str = ""
    safety_guard_secret: str = ""
    safety_guard_timeout_s: float = 2.0
    safety_guard_fail: str = "closed"
    prometheus_enabled: bool = True
    # OpenTelemetry traces (the `odock[otel]` extra): "none" (default: nothing on the hot path) or "otlphttp"
    traces_exporter: str = "none"
    otel_endpoint: str = "http://localhost:4318"
    otel_traces_endpoint: str = ""  # default: `otel_endpoint` + /v1/traces
    service_name: str = "gateway-service"
    # head sampling, decided once per call at its root span (reference §13.4)
    sample_rate: float = 0.1

    @property
    def tracing(self) -> bool:
        return self.traces_exporter != "none"

    @property
    def traces_url(self) -> str:
        return self.otel_traces_endpoint or self.otel_endpoint.rstrip("/") + "/v1/traces"

    # MCP gateway: the HMAC secret of session tokens (every process of a cluster must share it; empty: derived
    # from ODOCK_SECRET_KEY), the server lookup cache, and the upstream call timeout
    mcp_session_secret: str = ""
    mcp_cache_ttl_s: float = 300.0
    mcp_timeout_s: float = 300.0
    # the response cache (`policies.cache`): "auto" wires its stage when some policy turns it on (checked at start
    # and on every catalogue change), "off" never; entries above cache_max_entry_bytes are not stored; embedded
    # mode keeps at most cache_max_bytes (LRU); identical concurrent misses wait at most cache_coalesce_wait_s
    # for the first one's answer
    cache: str = "auto"
    cache_max_entry_bytes: int = 1024 * 1024
    cache_max_bytes: int = 64 * 1024 * 1024
    cache_coalesce_wait_s: float = 30.0
    # plugins (reference §8): the §8.2 file (JSON or YAML; empty: no plugins), the per-call parallel pool, and the
    # async post_response queue
    plugins_config_path: str = ""
    plugins_max_parallel: int = 4
    plugins_async_post_response: bool = True
    plugins_async_queue_size: int = 128
    plugins_async_workers: int = 2

    @property
    def cluster(self) -> bool:
        return bool(self.redis_url)

    @property
    def spool_usage(self) -> bool:
        """Keep the usage spool: asked for, or by default in embedded mode."""
        return self.usage_spool if self.usage_spool is not None else not self.cluster


def _env(name: str, *aliases: str) -> str | None:
    for candidate in (name, *aliases):
        value = os.environ.get(candidate)
        if value is not None and value != "":
            return value
    return None


def parse_cpus(text: str) -> list[int]:
    """A CPU list as taskset takes it: "1", "0,2", "2-3"."""
    cpus: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, _, last = part.partition("-")
        low, high = int(first), int(last or first)
        if low < 0 or high < low:
            raise ValueError(f"{part!r} is not a CPU or CPU range")
        cpus.update(range(low, high + 1))
    if not cpus:
        raise ValueError("no CPU listed")
    return sorted(cpus)


def _bool(text: str) -> bool:
    return text.strip().lower() in {"1", "true", "yes", "on"}


def _check_choices(settings: Settings) -> None:
    for name, value, choices in (
        ("ODOCK_UPSTREAM_CLIENT", settings.upstream_client, ("http11", "aiohttp")),
        ("ODOCK_UPSTREAM_ERRORS", settings.upstream_errors, ("passthrough", "strict")),
        ("ODOCK_CACHE", settings.cache, ("auto", "off")),
        ("ODOCK_USAGE_WRITER", settings.usage_writer, ("process", "inline")),
        ("ODOCK_LOG_FORMAT", settings.log_format, ("auto", "json", "text")),
        ("ODOCK_REQUEST_LOG", settings.request_log, ("all", "errors", "sampled", "off")),
        ("OBSERVABILITY_OTEL_TRACES_EXPORTER", settings.traces_exporter, ("none", "otlphttp")),
    ):
        if value not in choices:
            raise SystemExit(f"invalid {name}: {value!r} ({' | '.join(choices)})")


def _check_observability(settings: Settings) -> None:
    if settings.tracing and importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is None:
        raise SystemExit(
            "OBSERVABILITY_OTEL_TRACES_EXPORTER=otlphttp needs the OpenTelemetry extra: pip install 'odock[otel]'"
        )
    for name, rate in (
        ("OBSERVABILITY_SAMPLE_RATE", settings.sample_rate),
        ("ODOCK_REQUEST_LOG_SAMPLE_RATE", settings.request_log_sample_rate),
    ):
        if not 0.0 <= rate <= 1.0:
            raise SystemExit(f"invalid {name}: {rate} (must be in [0, 1])")


def _check_plugins(settings: Settings) -> None:
    for name, value in (
        ("PLUGINS_MAX_PARALLEL", settings.plugins_max_parallel),
        ("PLUGINS_ASYNC_QUEUE_SIZE", settings.plugins_async_queue_size),
        ("PLUGINS_ASYNC_WORKERS", settings.plugins_async_workers),
    ):
        if value < 1:
            raise SystemExit(f"invalid {name}: must be at least 1")
    if settings.plugins_config_path and not os.path.isfile(settings.plugins_config_path):
        raise SystemExit(f"invalid PLUGINS_CONFIG_PATH: {settings.plugins_config_path!r} is not a file")


def load_settings(**overrides: Any) -> Settings:
    """Build settings from ODOCK_* and the reference's HTTP_*/AUTH_* variables; `overrides` win."""
    values: dict[str, Any] = {}
    readers: list[tuple[str, tuple[str, ...], Any]] = [
        ("http_host", ("HTTP_HOST",), str),
        ("http_port", ("HTTP_PORT",), int),
        ("workers", ("ODOCK_WORKERS",), int),
        ("database_url", ("ODOCK_DATABASE_URL", "POSTGRES_DSN"), str),
        ("redis_url", ("ODOCK_REDIS_URL",), str),
        ("admin_token", ("ODOCK_ADMIN_TOKEN",), str),
        ("console_port", ("ODOCK_CONSOLE_PORT",), int),
        ("secret_key", ("ODOCK_SECRET_KEY",), str),
        ("max_body_bytes", ("ODOCK_MAX_BODY_BYTES",), int),
        ("read_timeout_s", ("HTTP_READ_TIMEOUT",), parse_duration),
        ("max_header_bytes", ("HTTP_MAX_HEADER_BYTES",), int),
        ("read_header_timeout_s", ("HTTP_READ_HEADER_TIMEOUT",), parse_duration),
        ("idle_timeout_s", ("HTTP_IDLE_TIMEOUT",), parse_duration),
        ("max_concurrent_requests", ("HTTP_MAX_CONCURRENT_REQUESTS",), int),
        ("trust_proxy_headers", ("HTTP_TRUST_PROXY_HEADERS",), _bool),
        (
            "trusted_proxy_cidrs",
            ("HTTP_TRUSTED_PROXY_CIDRS",),
            lambda s: [c.strip() for c in s.split(",") if c.strip()],
        ),
        ("auth_cache_ttl_s", ("AUTH_CACHE_TTL",), parse_duration),
        ("auth_negative_cache_ttl_s", ("AUTH_NEGATIVE_CACHE_TTL",), parse_duration),
        ("model_cache_ttl_s", ("MODEL_CACHE_TTL",), parse_duration),
        ("usage_flush_interval_s", ("ODOCK_USAGE_FLUSH_INTERVAL",), parse_duration),
        ("usage_buffer_max", ("ODOCK_USAGE_BUFFER_MAX",), int),
        ("usage_batch_size", ("ODOCK_USAGE_BATCH_SIZE",), int),
        ("usage_spool", ("ODOCK_USAGE_SPOOL",), _bool),
        ("usage_spool_max_bytes", ("ODOCK_USAGE_SPOOL_MAX_BYTES",), int),
        ("usage_writer", ("ODOCK_USAGE_WRITER",), str),
        ("usage_writer_cpus", ("ODOCK_USAGE_WRITER_CPUS",), parse_cpus),
        ("ratelimit_global_policy", ("RATELIMIT_GLOBAL_POLICY",), json.loads),
        ("redis_fail_open", ("ODOCK_REDIS_FAIL_OPEN",), _bool),
        ("reservation_ttl_s", ("ODOCK_RESERVATION_TTL",), parse_duration),
        ("reconcile_interval_s", ("ODOCK_RECONCILE_INTERVAL",), parse_duration),
        ("usage_max_tokens", ("ODOCK_USAGE_MAX_TOKENS",), int),
        ("routing_cooldown_failures", ("ODOCK_ROUTING_COOLDOWN_FAILURES",), int),
        ("routing_cooldown_s", ("ODOCK_ROUTING_COOLDOWN",), parse_duration),
        ("log_level", ("ODOCK_LOG_LEVEL",), str),
        ("upstream_client", ("ODOCK_UPSTREAM_CLIENT",), str),
        ("upstream_errors", ("ODOCK_UPSTREAM_ERRORS",), str),
        ("prometheus_enabled", ("OBSERVABILITY_PROMETHEUS_ENABLED",), _bool),
        ("log_format", ("ODOCK_LOG_FORMAT",), str),
        ("request_log", ("ODOCK_REQUEST_LOG",), str),
        ("request_log_sample_rate", ("ODOCK_REQUEST_LOG_SAMPLE_RATE",), float),
        ("traces_exporter", ("OBSERVABILITY_OTEL_TRACES_EXPORTER", "OBSERVABILITY_OTEL_EXPORTER"), str),
        ("otel_endpoint", ("OBSERVABILITY_OTEL_ENDPOINT",), str),
        ("otel_traces_endpoint", ("OBSERVABILITY_OTEL_TRACES_ENDPOINT",), str),
        ("service_name", ("OBSERVABILITY_SERVICE_NAME",), str),
        ("sample_rate", ("OBSERVABILITY_SAMPLE_RATE",), float),
        ("mcp_session_secret", ("ODOCK_MCP_SESSION_SECRET",), str),
        ("mcp_cache_ttl_s", ("MCP_CACHE_TTL",), parse_duration),
        ("mcp_timeout_s", ("ODOCK_MCP_TIMEOUT",), parse_duration),
        ("cache", ("ODOCK_CACHE",), str),
        ("cache_max_entry_bytes", ("ODOCK_CACHE_MAX_ENTRY_BYTES",), int),
        ("cache_max_bytes", ("ODOCK_CACHE_MAX_BYTES",), int),
        ("cache_coalesce_wait_s", ("ODOCK_CACHE_COALESCE_WAIT",), parse_duration),
        ("plugins_config_path", ("PLUGINS_CONFIG_PATH",), str),
        ("plugins_max_parallel", ("PLUGINS_MAX_PARALLEL",), int),
        ("plugins_async_post_response", ("PLUGINS_ASYNC_POST_RESPONSE",), _bool),
        ("plugins_async_queue_size", ("PLUGINS_ASYNC_QUEUE_SIZE",), int),
        ("plugins_async_workers", ("PLUGINS_ASYNC_WORKERS",), int),
        ("safety_engine_mode", ("SAFETY_ENGINE_MODE",), str),
        ("safety_session_ttl_s", ("SAFETY_SESSION_TTL",), parse_duration),
        ("safety_block_threshold", ("SAFETY_BLOCK_THRESHOLD",), float),
        ("safety_allow_disable", ("SAFETY_ALLOW_DISABLE",), _bool),
        ("safety_fail_status", ("SAFETY_FAIL_STATUS",), int),
        ("safety_stream_holdback", ("SAFETY_STREAM_HOLDBACK",), int),
        ("safety_guard_url", ("SAFETY_GUARD_URL",), str),
        ("safety_guard_secret", ("SAFETY_GUARD_SECRET",), str),
        ("safety_guard_timeout_s", ("SAFETY_GUARD_TIMEOUT",), parse_duration),
        ("safety_guard_fail", ("SAFETY_GUARD_FAIL",), str),
    ]
    for field, names, convert in readers:
        raw = _env(*names)
        if raw is not None:
            try:
                values[field] = convert(raw)
            except ValueError as exc:
                raise SystemExit(f"invalid {names[0]}: {exc}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings(**values)
    if not 0 < settings.http_port < 65536:
        raise SystemExit(f"invalid HTTP_PORT: {settings.http_port}")
    if not 0 <= settings.console_port < 65536 or settings.console_port == settings.http_port:
        raise SystemExit(
            f"invalid ODOCK_CONSOLE_PORT: {settings.console_port} (0: off, or a port not HTTP_PORT)"
        )
    for name, value in (
        ("HTTP_MAX_HEADER_BYTES", settings.max_header_bytes),
        ("HTTP_READ_HEADER_TIMEOUT", settings.read_header_timeout_s),
        ("HTTP_IDLE_TIMEOUT", settings.idle_timeout_s),
    ):
        if value <= 0:
            raise SystemExit(f"invalid {name}: must be positive")
    _check_plugins(settings)
    if settings.usage_max_tokens < 1:
        raise SystemExit(f"invalid ODOCK_USAGE_MAX_TOKENS: {settings.usage_max_tokens} (a positive integer)")
    _check_choices(settings)
    _check_observability(settings)
    _check_safety(settings)
    if settings.usage_spool and settings.cluster:
        raise SystemExit(
            "ODOCK_USAGE_SPOOL=true is for embedded mode: the spool is a file beside the SQLite database, replayed "
            "by the next process on the same host. Cluster mode writes usage to PostgreSQL (see the README)."
        )
    if settings.workers > 1 and not settings.cluster:
        raise SystemExit(
            "embedded mode runs exactly one process: its limits, budgets and caches live in memory. "
            "Set ODOCK_REDIS_URL (and a PostgreSQL ODOCK_DATABASE_URL) to run several workers."
        )
    return settings


def _check_safety(settings: Settings) -> None:
    if settings.safety_engine_mode not in ("noop", "security", "off"):
        raise SystemExit(
            f"invalid SAFETY_ENGINE_MODE: {settings.safety_engine_mode!r} (noop, security or off)"
        )
    if not 0 < settings.safety_block_threshold <= 1:
        raise SystemExit("invalid SAFETY_BLOCK_THRESHOLD: a score in (0, 1]")
    if settings.safety_fail_status not in (403, 503):
        raise SystemExit("invalid SAFETY_FAIL_STATUS: 403 or 503")
    if settings.safety_stream_holdback < 64:
        raise SystemExit("invalid SAFETY_STREAM_HOLDBACK: at least 64 characters")
    if settings.safety_guard_fail not in ("open", "closed"):
        raise SystemExit("invalid SAFETY_GUARD_FAIL: open or closed")
    if settings.safety_guard_url and not settings.safety_guard_url.startswith(("http://", "https://")):
        raise SystemExit("invalid SAFETY_GUARD_URL: an http:// or https:// URL")
