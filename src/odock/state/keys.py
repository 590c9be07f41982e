"""API key secrets: generated here, shown once, stored and looked up only as their SHA-256 (`hash_key`)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "sk-odock-"
MIN_SECRET_LENGTH = 20


def hash_key(secret: str) -> str:
    """SHA-256 hex of an API key secret: the only form in which keys are stored or used as cache keys."""
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_secret() -> str:
    """Return a new API key secret."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_preview(secret: str) -> str:
    """Return the masked form of a key secret (prefix and last four characters)."""
    head = secret[: len(KEY_PREFIX) + 2] if secret.startswith(KEY_PREFIX) else secret[:4]
    return f"{head}…{secret[-4:]}"


def secret_matches(key_hash: str, secret: str) -> bool:
    """Tell, in constant time, whether `secret` hashes to the stored `key_hash`."""
    return hmac.compare_digest(key_hash, hash_key(secret))
