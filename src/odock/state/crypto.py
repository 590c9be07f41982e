"""Provider credentials at rest: an AES-256-GCM envelope, `{"v":1,"alg":"A256GCM","iv":…,"ciphertext":…}`.

The 32-byte key comes from ODOCK_SECRET_KEY (base64). In embedded mode (SQLite) an empty setting makes us
create a key file beside the database (`<db>.key`, mode 0600) so a single-file setup works with no ceremony;
with PostgreSQL several hosts must share the key, so an empty setting is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.engine import make_url

from odock.errors import GatewayError

ALG = "A256GCM"
_IV_BYTES = 12


class SecretBox:
    """Encrypts and decrypts provider credentials with one AES-256-GCM key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the secret key must be exactly 32 bytes")
        self._aead = AESGCM(key)
        self._key = key

    def derive(self, label: bytes) -> bytes:
        """A 32-byte key for another purpose (HMAC of `label`), so one shared secret serves every process."""
        return hmac.new(self._key, label, hashlib.sha256).digest()

    def encrypt(self, plaintext: str) -> str:
        """Return the JSON envelope text for `plaintext` (fresh random IV each time)."""
        iv = secrets.token_bytes(_IV_BYTES)
        ciphertext = self._aead.encrypt(iv, plaintext.encode("utf-8"), None)
        envelope = {
            "v": 1,
            "alg": ALG,
            "iv": base64.b64encode(iv).decode("ascii"),
            "ciphertext": base64.b64encode(ciphertext).decode("ascii"),
        }
        return json.dumps(envelope, separators=(",", ":"))

    def decrypt(self, stored: str) -> str:
        """Return the clear credential of an envelope; text that is not an envelope is a legacy clear value."""
        try:
            envelope = json.loads(stored)
        except ValueError:
            return stored
        if not isinstance(envelope, dict) or "ciphertext" not in envelope:
            return stored
        if envelope.get("v") != 1 or envelope.get("alg") != ALG:
            raise GatewayError(
                "provider credential uses an unsupported encryption envelope", "provider_key_undecryptable"
            )
        try:
            iv = base64.b64decode(envelope["iv"], validate=True)
            ciphertext = base64.b64decode(envelope["ciphertext"], validate=True)
            return self._aead.decrypt(iv, ciphertext, None).decode("utf-8")
        except (InvalidTag, binascii.Error, KeyError, TypeError, ValueError):
            # wrong ODOCK_SECRET_KEY or a damaged row; never echo the stored bytes
            raise GatewayError(
                "provider credential cannot be decrypted (was ODOCK_SECRET_KEY changed?)",
                "provider_key_undecryptable",
            ) from None


def decode_key(text: str, origin: str) -> bytes:
    """Decode a base64 32-byte key, exiting with a message naming `origin` when it is not one."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SystemExit(f"{origin} is not valid base64 (expected 32 random bytes, base64-encoded)") from None
    if len(key) != 32:
        raise SystemExit(f"{origin} must decode to 32 bytes, got {len(key)}")
    return key


def generate_key_text() -> str:
    """Return a new random key, base64 encoded (a valid ODOCK_SECRET_KEY value)."""
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def sqlite_key_path(database_url: str) -> Path | None:
    """Return `<db file>.key` for a file SQLite URL, None for in-memory SQLite or other databases."""
    url = make_url(database_url)
    if not url.drivername.startswith("sqlite"):
        return None
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database + ".key")


def _read_or_create_key_file(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two processes starting together agree on one key instead of overwriting each other
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return decode_key(path.read_text(encoding="ascii"), f"key file {path}")
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(generate_key_text() + "\n")
    return decode_key(path.read_text(encoding="ascii"), f"key file {path}")


def load_secret_box(secret_key: str, database_url: str) -> SecretBox:
    """Build the box from ODOCK_SECRET_KEY, or from the SQLite key file; refuse PostgreSQL without a key."""
    if secret_key:
        return SecretBox(decode_key(secret_key, "ODOCK_SECRET_KEY"))
    url = make_url(database_url)
    if not url.drivername.startswith("sqlite"):
        raise SystemExit(
            "ODOCK_SECRET_KEY is required with PostgreSQL: provider credentials are encrypted with it and every "
            "gateway host must share it. Generate one with: "
            'python -c "import base64,os;print(base64.b64encode(os.urandom(32)).decode())"'
        )
    path = sqlite_key_path(database_url)
    if path is None:
        # in-memory database: the data dies with the process, so may the key
        return SecretBox(secrets.token_bytes(32))
    return SecretBox(_read_or_create_key_file(path))


def mask_secret(secret: str, keep: int = 4) -> str:
    """Return a masked preview of a credential: its last few characters only, when it is long enough."""
    if len(secret) < 12:
        return "****"
    return "****" + secret[-keep:]
