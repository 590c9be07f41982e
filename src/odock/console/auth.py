"""Console sessions: a signed, HTTP-only, SameSite=Strict cookie got by logging in with the admin token, and a
CSRF token bound to it that every change must carry in `X-CSRF-Token`.

The signing key is derived from the admin token, so every process with the same token accepts the same
sessions and changing the token ends them all. A logout ends its session in this process at once (a denylist
until the session's expiry); elsewhere the cookie is gone from the browser, and it expires anyway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

COOKIE = "odock_console"
SESSION_SECONDS = 8 * 3600
CSRF_HEADER = "x-csrf-token"
_MAX_REVOKED = 10_000

# no inline script or style, nothing from another origin, no framing: the console's assets are its own files
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class Sessions:
    """Issue and check console sessions for one admin token."""

    def __init__(self, admin_token: str, lifetime_s: int = SESSION_SECONDS) -> None:
        self._token = admin_token.encode()
        self._key = hashlib.sha256(b"odock-console-session\0" + self._token).digest()
        self.lifetime_s = lifetime_s
        self._revoked: dict[str, float] = {}

    def token_matches(self, candidate: str) -> bool:
        """Tell whether `candidate` is the admin token (constant time)."""
        return bool(self._token) and hmac.compare_digest(candidate.encode(), self._token)

    def _sign(self, text: str) -> str:
        return _b64(hmac.new(self._key, text.encode(), hashlib.sha256).digest())

    def issue(self, now: float | None = None) -> tuple[str, int]:
        """A new session cookie value and its expiry (Unix seconds)."""
        expires = int((time.time() if now is None else now) + self.lifetime_s)
        body = f"{expires}.{secrets.token_urlsafe(18)}"
        return f"{body}.{self._sign(body)}", expires

    def check(self, cookie: str | None, now: float | None = None) -> str | None:
        """The session's id (its nonce) when `cookie` is a live session of ours, else None."""
        if not cookie:
            return None
        body, _, signature = cookie.rpartition(".")
        expires, _, nonce = body.partition(".")
        if not nonce or not hmac.compare_digest(signature, self._sign(body)):
            return None
        if not expires.isdigit() or int(expires) <= (time.time() if now is None else now):
            return None
        return None if nonce in self._revoked else nonce

    def csrf_token(self, session_id: str) -> str:
        """The CSRF token bound to a session."""
        return self._sign("csrf." + session_id)

    def csrf_matches(self, session_id: str, candidate: str | None) -> bool:
        """Tell whether `candidate` is this session's CSRF token."""
        return bool(candidate) and hmac.compare_digest(candidate or "", self.csrf_token(session_id))

    def revoke(self, cookie: str) -> None:
        """End a session in this process (it stays refused until it would have expired)."""
        now = time.time()
        if len(self._revoked) >= _MAX_REVOKED:
            self._revoked = {n: e for n, e in self._revoked.items() if e > now}
        body = cookie.rpartition(".")[0]
        expires, _, nonce = body.partition(".")
        if nonce and expires.isdigit():
            self._revoked[nonce] = float(expires)

    def cookie_header(self, value: str, *, secure: bool, max_age: int) -> str:
        """The Set-Cookie header for a session value (an empty value with max_age 0 clears it)."""
        flags = f"{COOKIE}={value}; Path=/console; Max-Age={max_age}; HttpOnly; SameSite=Strict"
        return flags + "; Secure" if secure else flags
