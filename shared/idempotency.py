"""`Idempotency-Key` for POSTs that must happen once: the first request with a key runs; a
retry of it gets the stored response; the same key with a different body is 422; a retry
while the first is still running is 409. Records expire (maintenance prunes them)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from shared import db, errors

TTL = timedelta(hours=24)
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Stored:
    status: int
    body: Any


def request_hash(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _sql(text: str) -> Any:
    import sqlalchemy

    return sqlalchemy.text(text)


def begin(scope: str, key: str, body_hash: str) -> Stored | None:
    """Claim `key` (its own committed transaction, so concurrent retries see it). Returns the
    stored response when this key already completed; None when the caller should proceed."""
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise errors.BadRequest("Idempotency-Key must be 1-255 printable characters",
                                code="invalid_idempotency_key")
    with db.transaction() as conn:
        claimed = conn.execute(_sql(
            "INSERT INTO idempotency_keys (scope, key, request_hash, status, expires_at) "
            "VALUES (:s, :k, :h, 'in_progress', now() + make_interval(secs => :ttl)) "
            "ON CONFLICT (scope, key) DO NOTHING RETURNING 1"),
            {"s": scope, "k": key, "h": body_hash, "ttl": TTL.total_seconds()}).first()
        if claimed is not None:
            return None
        row = conn.execute(_sql(
            "SELECT request_hash, status, response_status, response_body FROM idempotency_keys "
            "WHERE scope = :s AND key = :k"), {"s": scope, "k": key}).one()
    if row[0] != body_hash:
        raise errors.ValidationFailed("this Idempotency-Key was used with a different request",
                                      code="idempotency_key_reused")
    if row[1] != "completed":
        raise errors.Conflict("a request with this Idempotency-Key is still in progress",
                              code="idempotency_in_progress", headers={"Retry-After": "1"})
    return Stored(int(row[2]), row[3])


def complete(conn: Any, scope: str, key: str, status: int, body: Any) -> None:
    """Store the response, in the same transaction as the effect it describes."""
    conn.execute(_sql(
        "UPDATE idempotency_keys SET status = 'completed', response_status = :st, "
        "response_body = CAST(:b AS jsonb) WHERE scope = :s AND key = :k"),
        {"s": scope, "k": key, "st": status, "b": json.dumps(body, default=str)})


def abandon(scope: str, key: str) -> None:
    """Release a key whose request failed before its effect, so the client can retry it."""
    with db.transaction() as conn:
        conn.execute(_sql("DELETE FROM idempotency_keys WHERE scope = :s AND key = :k "
                          "AND status = 'in_progress'"), {"s": scope, "k": key})
