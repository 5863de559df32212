"""Secrets the database keeps for us but must not be able to give away: webhook HMAC secrets.

A sealed value is `sealed.v1.<key id>.<base64url(nonce | AES-256-GCM ciphertext and tag)>`. The
keys come from `WEBHOOK_SECRET_KEYS` (a Secret Manager secret in production): a JSON list of
base64 32-byte keys; the first seals, every one unseals. A key is rotated by putting a new one
first, resealing the rows (`python -m shared.webhooks reseal`), then dropping the old one. The
key id is the first 8 hex digits of the key's SHA-256, so a value names the key it needs
without revealing it.
The caller's `context` (the row's id) is the associated data: a sealed value copied into
another row does not open there.

A database dump or a read-only SQL injection then shows no usable webhook secret. Values
written before sealing (plain `whsec_...`) are read as they are.

    python -m shared.sealed            # a new key list, for `pulumi config set --secret`
    python -m shared.sealed OLD_LIST   # a new key first, the old ones kept (rotation)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
import sys

from shared.config import ConfigError, get_settings

PREFIX = "sealed.v1."
KEYS_ENV = "WEBHOOK_SECRET_KEYS"
NONCE_BYTES = 12
# The local cloud and tests only; production refuses to run without its own keys.
_LOCAL_KEY = hashlib.sha256(b"local webhook secret key").digest()


class Unsealable(ValueError):
    """A sealed value no configured key opens (unknown key, wrong context, or tampered)."""


def _key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def _keys() -> list[bytes]:
    raw = os.environ.get(KEYS_ENV, "").strip()
    if not raw:
        if get_settings().is_production:
            raise ConfigError(f"{KEYS_ENV} is required in production")
        return [_LOCAL_KEY]
    try:
        keys = [base64.b64decode(k, validate=True) for k in json.loads(raw)]
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ConfigError(f"{KEYS_ENV} must be a JSON list of base64 keys") from exc
    if not keys or any(len(k) != 32 for k in keys):
        raise ConfigError(f"{KEYS_ENV} must hold at least one 32-byte key")
    return keys


def key_id() -> str:
    """The id of the key that seals now (the first)."""
    return _key_id(_keys()[0])


def sealed_with(value: str) -> str | None:
    """The id of the key a value is sealed with; None for a value from before sealing."""
    return value[len(PREFIX):].partition(".")[0] if value.startswith(PREFIX) else None


def seal(plaintext: str, context: str) -> str:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = _keys()[0]
    nonce = secrets.token_bytes(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, plaintext.encode(), context.encode())
    return f"{PREFIX}{_key_id(key)}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"


def unseal(value: str, context: str) -> str:
    """The plaintext of a sealed value; a value from before sealing as it is."""
    if not value.startswith(PREFIX):
        return value
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key_id, _, body = value[len(PREFIX):].partition(".")
    key = next((k for k in _keys() if _key_id(k) == key_id), None)
    if key is None:
        raise Unsealable(f"no configured key has id {key_id}")
    try:
        raw = base64.urlsafe_b64decode(body)
        opened = AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode())
    except (InvalidTag, ValueError, binascii.Error) as exc:
        raise Unsealable("the sealed value does not open with its key and context") from exc
    return opened.decode()


def local_key_list() -> str:
    """`WEBHOOK_SECRET_KEYS` as the local cloud runs it: the fixed local key, written out."""
    return json.dumps([base64.b64encode(_LOCAL_KEY).decode()])


def new_key_list(existing: str | None = None) -> str:
    """A JSON key list with a fresh key first, followed by `existing`'s keys."""
    old = [str(k) for k in json.loads(existing)] if existing else []
    return json.dumps([base64.b64encode(secrets.token_bytes(32)).decode(), *old])


if __name__ == "__main__":
    sys.stdout.write(new_key_list(sys.argv[1] if len(sys.argv) > 1 else None) + "\n")
