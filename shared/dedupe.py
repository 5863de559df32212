"""Idempotent consumers: record a stable key in the same transaction as the effect.

Pub/Sub push and Cloud Scheduler deliver at least once. A consumer claims `(consumer, key)` with
`INSERT ... ON CONFLICT DO NOTHING` inside its transaction: a duplicate finds the key taken and
skips the effect; a concurrent duplicate blocks on the uncommitted row and then skips; if the
first attempt rolls back, the key is released with it, so a retry does the work.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING

from shared import db

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

# Pub/Sub keeps unacked messages at most 7 days, so no redelivery can come later than that.
DEDUPE_RETENTION = timedelta(days=8)

_CLAIM = """
    INSERT INTO processed_messages (consumer, key, expires_at)
    VALUES (:consumer, :key, now() + make_interval(secs => :ttl))
    ON CONFLICT (consumer, key) DO NOTHING
    RETURNING 1
"""


def claim(conn: Connection, consumer: str, key: str,
          retention: timedelta = DEDUPE_RETENTION) -> bool:
    """True the first time `key` is seen by `consumer` (in this transaction's view)."""
    import sqlalchemy

    row = conn.execute(
        sqlalchemy.text(_CLAIM),
        {"consumer": consumer, "key": key, "ttl": retention.total_seconds()},
    ).first()
    return row is not None


@contextmanager
def once(consumer: str, key: str) -> Iterator[Connection | None]:
    """A transaction for the effect of `key`, or None when it was already applied.

    with dedupe.once("activity", envelope.id) as conn:
        if conn is None:
            return            # duplicate: acknowledge without effect
        ...effect using conn...
    """
    with db.transaction() as conn:
        yield conn if claim(conn, consumer, key) else None
