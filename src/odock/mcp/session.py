"""Sessions across gateway processes: the upstream's `Mcp-Session-Id` is handed to the client wrapped in a token
the gateway signs (HMAC-SHA256 with a secret every process shares), bound to the key and the server. Any process
can unwrap it — no session table, no sticky routing — and another key, or another server, cannot use it.

    token = "odk1." + base64url(JSON {"s": upstream id, "k": key id, "v": server id}) + "." + base64url(MAC)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Any

import msgspec

from odock.errors import NotFound

PREFIX = "odk1."
MAX_TOKEN = 4096
# every call of a handshake-era session carries its token and gets it back: each is signed and verified once per
# process, then served from a bounded memo (HMAC and JSON are deterministic: a memoized token is the same token)
MEMO_ENTRIES = 4096


class SessionClaims(msgspec.Struct, frozen=True):
    s: str  # upstream session id
    k: str  # api key id
    v: str  # mcp server id


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the MCP session secret must be at least 16 bytes")
        self._secret = secret
        self._tokens: dict[SessionClaims, str] = {}  # claims -> the token signed for them
        self._verified: dict[str, SessionClaims] = {}  # token -> its claims, MAC checked

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()

    def wrap(self, upstream_session: str, key_id: str, server_id: str) -> str:
        claims = SessionClaims(upstream_session, key_id, server_id)
        token = self._tokens.get(claims)
        if token is None:
            payload = msgspec.json.encode(claims)
            token = f"{PREFIX}{_b64(payload)}.{_b64(self._mac(payload))}"
            _remember(self._tokens, claims, token)
        return token

    def unwrap(self, token: str, key_id: str, server_id: str) -> str:
        """The upstream session id of a token this gateway issued for this key and server; else 404 (the MCP
        answer to an unknown session: the client starts a new one)."""
        claims = self._verified.get(token)
        if claims is None:
            claims = self._claims(token)
            if claims is not None:
                _remember(self._verified, token, claims)
        if claims is None or not hmac.compare_digest(claims.k, key_id) or claims.v != server_id:
            raise NotFound("MCP session not found", "mcp_session_not_found")
        return claims.s

    def _claims(self, token: str) -> SessionClaims | None:
        if len(token) > MAX_TOKEN or not token.startswith(PREFIX):
            return None
        body, _, mac = token[len(PREFIX) :].partition(".")
        try:
            payload, given = _unb64(body), _unb64(mac)
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(given, self._mac(payload)):
            return None
        try:
            return msgspec.json.decode(payload, type=SessionClaims)
        except msgspec.DecodeError:
            return None


def _remember(memo: dict[Any, Any], key: Any, value: Any) -> None:
    if len(memo) >= MEMO_ENTRIES:
        memo.clear()  # bounded: a flood of sessions costs a re-sign or a re-check, never memory
    memo[key] = value


def derive_secret(configured: str, fallback: bytes) -> bytes:
    """The configured secret (ODOCK_MCP_SESSION_SECRET), else one derived from the gateway's encryption key, which
    every process of a cluster already shares."""
    if configured:
        return configured.encode("utf-8")
    return hmac.new(fallback, b"odock mcp session v1", hashlib.sha256).digest()
