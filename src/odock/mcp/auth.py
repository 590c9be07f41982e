"""Upstream auth of an MCP server (reference §11.4), injected on every forwarded request: a static header, a bearer
token, HTTP Basic, or an OAuth2 client-credentials token — cached while valid, refreshed a little before it
expires, one fetch in flight per server however many calls wait for it. Failures are `502 mcp_auth_error`."""

from __future__ import annotations

import asyncio
import base64
import time
from urllib.parse import urlencode

import msgspec

from odock.errors import UpstreamError
from odock.mcp.records import McpServer
from odock.transport.base import Timeouts, Transport, UpstreamRequest

# refresh this long before the token's expiry (or at 90 % of a short lifetime)
EARLY_REFRESH_S = 60.0
DEFAULT_TOKEN_LIFETIME_S = 300.0


def auth_error(message: str) -> UpstreamError:
    return UpstreamError(message, "mcp_auth_error", kind="4xx")


class _Token(msgspec.Struct):
    value: str
    refresh_at: float
    expires_at: float


class UpstreamAuth:
    """Builds the upstream auth headers of a server; holds the OAuth2 token cache."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._tokens: dict[tuple[str, str, str], _Token] = {}
        self._inflight: dict[tuple[str, str, str], asyncio.Future[_Token]] = {}

    async def headers(self, server: McpServer) -> dict[str, str]:
        static = static_headers(server)
        if static is not None:
            return static
        return {"authorization": f"Bearer {await self.oauth2_token(server)}"}

    async def oauth2_token(self, server: McpServer) -> str:
        auth = server.auth
        key = (server.id, str(auth["token_url"]), str(auth["client_id"]))
        now = time.monotonic()
        cached = self._tokens.get(key)
        if cached is not None and now < cached.refresh_at:
            return cached.value
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._inflight[key] = pending
            try:
                token = await self._fetch(server)
            except BaseException as exc:
                self._inflight.pop(key, None)
                if cached is not None and now < cached.expires_at:
                    pending.set_result(cached)  # a failed early refresh: the old token is still valid
                    return cached.value
                pending.set_exception(
                    exc if isinstance(exc, Exception) else auth_error("token fetch cancelled")
                )
                pending.exception()  # retrieved: waiters re-raise it, nobody logs "never retrieved"
                raise
            self._tokens[key] = token
            self._inflight.pop(key, None)
            pending.set_result(token)
            return token.value
        return (await asyncio.shield(pending)).value

    async def _fetch(self, server: McpServer) -> _Token:
        auth = server.auth
        form = {
            "grant_type": "client_credentials",
            "client_id": auth["client_id"],
            "client_secret": auth["client_secret"],
        }
        for optional in ("scope", "audience"):
            if auth.get(optional):
                form[optional] = auth[optional]
        request = UpstreamRequest(
            "POST",
            str(auth["token_url"]),
            {"content-type": "application/x-www-form-urlencoded", "accept": "application/json"},
            urlencode(form).encode(),
            Timeouts(connect_s=10.0, first_byte_s=30.0, total_s=30.0),
        )
        try:
            resp = await self.transport.send(request)
            body = await resp.read()
        except UpstreamError as exc:
            raise auth_error(f"OAuth2 token endpoint unreachable: {exc.message}") from None
        if resp.status >= 400:
            raise auth_error(f"OAuth2 token endpoint answered {resp.status}")
        try:
            payload = msgspec.json.decode(body)
            value = payload["access_token"]
            lifetime = float(payload.get("expires_in") or DEFAULT_TOKEN_LIFETIME_S)
        except (msgspec.DecodeError, KeyError, TypeError, ValueError):
            raise auth_error("OAuth2 token endpoint answered without an access_token") from None
        if not isinstance(value, str) or not value:
            raise auth_error("OAuth2 token endpoint answered without an access_token")
        now = time.monotonic()
        early = min(EARLY_REFRESH_S, lifetime * 0.1)
        return _Token(value, now + lifetime - early, now + lifetime)


def static_headers(server: McpServer) -> dict[str, str] | None:
    """The upstream auth headers that do not change from call to call (None for OAuth2: its token expires);
    502 mcp_auth_error for an auth type the gateway does not know."""
    auth, kind = server.auth, server.auth_type
    if kind == "NONE" or not auth:
        return {}
    if kind == "HEADER":
        return {str(auth["name"]): str(auth["value"])}
    if kind == "BEARER":
        return {"authorization": f"Bearer {auth['token']}"}
    if kind == "BASIC":
        pair = f"{auth['username']}:{auth['password']}".encode()
        return {"authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
    if kind == "OAUTH2":
        return None
    raise auth_error(f"unsupported upstream auth type {kind}")
