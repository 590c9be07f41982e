"""`webhook`: a plugin type whose decision comes from an HTTP service (a classifier, Presidio, the operator's own).

    {"url": "https://guard.internal/check",   POST target (http or https)
     "secret_env": "GUARD_SECRET",            HMAC key, read from PLUGINS_ENV_GUARD_SECRET
     "timeout_ms": 1000,                      HTTP time limit (the plugin's own timeout_ms bounds the run too)
     "include_request": true, "include_response": true}

Each call POSTs JSON {phase, request_id, route, organisation_id, api_key_id, model, stream, request?, response?}
signed with `X-Odock-Timestamp` (unix seconds) and `X-Odock-Signature: sha256=<hex HMAC-SHA256 of
"<timestamp>." + body>`. The service answers 2xx JSON {"action": "allow" | "modify" | "block", "message", "code",
"status", "findings", "request" | "response" (normalized, for modify)}. Anything else is a plugin error (the
plugin's `on_error` decides). Provider credentials and raw payloads are never sent.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any
from urllib.parse import urlsplit

import msgspec

from odock.model import GatewayRequest, GatewayResponse
from odock.plugins.base import Plugin, PluginResult, PluginSetup, PluginView
from odock.transport.base import Timeouts, Transport, UpstreamRequest

_FIELDS = {"url", "secret_env", "timeout_ms", "include_request", "include_response"}
MAX_ANSWER_BYTES = 4 * 1024 * 1024


class WebhookError(RuntimeError):
    """The service did not give a usable decision."""


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header value of one webhook body."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def _request_payload(request: GatewayRequest) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(request)
    data.pop("raw", None)
    data.pop("upstream", None)  # may carry a provider credential
    return data


def _response_payload(response: GatewayResponse) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(response)
    data.pop("raw", None)
    return data


class Webhook(Plugin):
    def __init__(self, setup: PluginSetup) -> None:
        config = setup.config
        unknown = sorted(set(config) - _FIELDS)
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}")
        url = config.get("url")
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url: expected an http(s) URL")
        self.url: str = url  # type: ignore[assignment]
        secret_env = config.get("secret_env")
        if not isinstance(secret_env, str) or not secret_env:
            raise ValueError("secret_env: required (the HMAC key, read from PLUGINS_ENV_<name>)")
        secret = setup.env.get(secret_env)
        if not secret:
            raise ValueError(f"secret_env: PLUGINS_ENV_{secret_env} is not set")
        self.secret = secret.encode()
        timeout_ms = config.get("timeout_ms", 1000)
        if not isinstance(timeout_ms, int) or isinstance(timeout_ms, bool) or timeout_ms < 1:
            raise ValueError("timeout_ms: expected a positive integer")
        seconds = timeout_ms / 1000
        self.timeouts = Timeouts(connect_s=seconds, first_byte_s=seconds, total_s=seconds)
        self.include_request = bool(config.get("include_request", True))
        self.include_response = bool(config.get("include_response", True))
        self.needs_request = self.include_request  # type: ignore[misc]
        self.needs_response = self.include_response  # type: ignore[misc]
        self._own_transport = setup.transport is None
        if setup.transport is None:
            from odock.transport.http11 import Http11Transport

            self.transport: Transport = Http11Transport()
        else:
            self.transport = setup.transport

    def payload(self, view: PluginView) -> dict[str, Any]:
        body: dict[str, Any] = {
            "phase": view.phase,
            "request_id": view.request_id,
            "route": view.route,
            "organisation_id": view.organisation_id,
            "api_key_id": view.api_key_id,
            "model": view.requested_model,
            "stream": view.stream,
        }
        if self.include_request and view.request is not None:
            body["request"] = _request_payload(view.request)
        if self.include_response and view.response is not None:
            body["response"] = _response_payload(view.response)
        if view.phase == "post_response":
            body.update(status=view.status, outcome=view.outcome, error_code=view.error_code)
        return body

    async def ask(self, view: PluginView) -> PluginResult:
        body = msgspec.json.encode(self.payload(view))
        timestamp = str(int(time.time()))
        headers = {
            "content-type": "application/json",
            "x-odock-timestamp": timestamp,
            "x-odock-signature": sign(self.secret, timestamp, body),
            "x-request-id": view.request_id,
        }
        resp = await self.transport.send(UpstreamRequest("POST", self.url, headers, body, self.timeouts))
        data = await resp.read()
        if not 200 <= resp.status < 300:
            raise WebhookError(f"webhook answered {resp.status}")
        if len(data) > MAX_ANSWER_BYTES:
            raise WebhookError("webhook answer too large")
        try:
            answer = msgspec.json.decode(data)
        except msgspec.DecodeError:
            raise WebhookError("webhook answered invalid JSON") from None
        if not isinstance(answer, dict):
            raise WebhookError("webhook answer is not an object")
        return self.decision(view, answer)

    def decision(self, view: PluginView, answer: dict[str, Any]) -> PluginResult:
        """The service's answer as a plugin result (raises WebhookError on a malformed one)."""
        action = answer.get("action", "allow")
        findings = answer.get("findings") or []
        findings = tuple(f for f in findings if isinstance(f, str)) if isinstance(findings, list) else ()
        if action == "allow":
            return PluginResult.allow(*findings)
        if action == "block":
            status = answer.get("status", 403)
            return PluginResult.block(
                str(answer.get("message") or ""),
                status=status if isinstance(status, int) else 403,
                code=str(answer.get("code") or "plugin_blocked"),
                findings=findings,
            )
        if action != "modify":
            raise WebhookError(f"webhook answered an unknown action {action!r}")
        try:
            request = response = None
            if isinstance(answer.get("request"), dict) and view.request is not None:
                request = msgspec.convert(answer["request"], GatewayRequest)
                request.raw, request.upstream = view.request.raw, view.request.upstream
            if isinstance(answer.get("response"), dict) and view.response is not None:
                response = msgspec.convert(answer["response"], GatewayResponse)
                response.raw = view.response.raw
        except msgspec.ValidationError as exc:
            raise WebhookError(f"webhook modification is invalid: {exc}") from None
        return PluginResult.modify(request=request, response=response, findings=findings)

    async def pre_route(self, view: PluginView) -> PluginResult | None:
        return await self.ask(view)

    async def pre_upstream(self, view: PluginView) -> PluginResult | None:
        return await self.ask(view)

    async def post_upstream(self, view: PluginView) -> PluginResult | None:
        return await self.ask(view)

    async def post_response(self, view: PluginView) -> PluginResult | None:
        return await self.ask(view)

    async def close(self) -> None:
        if self._own_transport:
            await self.transport.close()
