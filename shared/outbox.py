"""Transactional outbox: a DB change and the events it causes commit together.

Events are written as rows in the caller's transaction; right after commit they are published
(awaited) and marked. A publish that fails leaves its row pending with a backoff, and the
scheduled `outbox_relay` publishes it later. Publishing is at-least-once (a crash between publish
and mark re-sends), so every consumer dedupes on the envelope id.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from shared import clients, db
from shared.events import PUBLISH_TIMEOUT_S, Envelope

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Row

log = logging.getLogger("shared.outbox")

# Rows younger than this are left to the publish-after-commit of the request that wrote them.
RELAY_GRACE = timedelta(seconds=10)
# A request waits at most this long for its events' publish; what is not confirmed by then stays
# pending for the relay, so a slow Pub/Sub never holds a user's response for long.
AFTER_COMMIT_TIMEOUT_S = 5.0
MAX_BACKOFF_S = 600


@dataclass
class OutboxTransaction:
    """A transaction that can emit events; they are published only if it commits."""

    conn: Connection
    emitted: list[int] = field(default_factory=list)

    def emit(self, topic: str, envelope: Envelope, attributes: dict[str, str] | None = None
             ) -> None:
        self.emitted.append(emit(self.conn, topic, envelope, attributes))


def emit(conn: Connection, topic: str, envelope: Envelope,
         attributes: dict[str, str] | None = None) -> int:
    """Write an event row in `conn`'s transaction; returns the row id."""
    import sqlalchemy

    attrs = envelope.attributes() | (attributes or {})
    return int(conn.execute(
        sqlalchemy.text(
            "INSERT INTO outbox (event_id, topic, payload, attributes) "
            "VALUES (:event_id, :topic, :payload, CAST(:attributes AS jsonb)) RETURNING id"
        ),
        {"event_id": envelope.id, "topic": topic, "payload": envelope.to_json(),
         "attributes": json.dumps(attrs)},
    ).scalar_one())


@contextmanager
def transaction(wait: bool = True) -> Iterator[OutboxTransaction]:
    """Run a change and its events in one transaction, then publish the events: awaited by
    default; with `wait=False` (throughput consumers such as span_writer) the publish runs in
    the background and each row is marked when Pub/Sub confirms it, while the relay still
    covers whatever is not confirmed."""
    with db.transaction() as conn:
        tx = OutboxTransaction(conn)
        yield tx
    if tx.emitted:
        if wait:
            publish_rows(tx.emitted)
        else:
            publish_rows_in_background(tx.emitted)


def publish_rows_in_background(ids: list[int]) -> None:
    """Publish committed rows without waiting; mark each one published when confirmed."""
    import sqlalchemy

    with db.transaction() as conn:
        rows = conn.execute(sqlalchemy.text(
            "SELECT id, topic, payload, attributes FROM outbox "
            "WHERE id = ANY(:ids) AND published_at IS NULL"), {"ids": ids}).all()
    publisher = clients.publisher()
    for row_id, topic, payload, attributes in rows:
        future = publisher.publish(clients.topic_path(topic), bytes(payload), **attributes)
        future.add_done_callback(lambda done, row_id=row_id: _mark_when_published(done, row_id))


def _mark_when_published(future: Any, row_id: int) -> None:
    import sqlalchemy

    try:
        future.result(timeout=0)
        with db.transaction() as conn:
            conn.execute(sqlalchemy.text(
                "UPDATE outbox SET published_at = now(), attempts = attempts + 1 "
                "WHERE id = :id AND published_at IS NULL"), {"id": row_id})
    except Exception as exc:  # noqa: BLE001 - the row stays pending; the relay sends it
        log.warning("outbox row %s not confirmed: %s", row_id, type(exc).__name__)


@dataclass(frozen=True)
class RelayResult:
    published: int
    failed: int


def publish_rows(ids: list[int]) -> RelayResult:
    """Publish the given pending rows now (after their transaction committed)."""
    import sqlalchemy

    with db.transaction() as conn:
        rows = conn.execute(
            sqlalchemy.text(
                "SELECT id, topic, payload, attributes, attempts FROM outbox "
                "WHERE id = ANY(:ids) AND published_at IS NULL FOR UPDATE SKIP LOCKED"
            ),
            {"ids": ids},
        ).all()
        return _publish(conn, rows, AFTER_COMMIT_TIMEOUT_S)


def relay_pending(limit: int = 500, grace: timedelta = RELAY_GRACE) -> RelayResult:
    """Publish rows whose publish-after-commit failed or never ran. Safe to run concurrently:
    rows are locked with SKIP LOCKED, so two relays never send the same row at once."""
    import sqlalchemy

    with db.transaction() as conn:
        rows = conn.execute(
            sqlalchemy.text(
                "SELECT id, topic, payload, attributes, attempts FROM outbox "
                "WHERE published_at IS NULL AND next_attempt_at <= now() "
                "AND created_at <= now() - make_interval(secs => :grace) "
                "ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED"
            ),
            {"grace": grace.total_seconds(), "limit": limit},
        ).all()
        return _publish(conn, rows)


def _publish(conn: Connection, rows: Sequence[Row[Any]],
             timeout_s: float = PUBLISH_TIMEOUT_S) -> RelayResult:
    import sqlalchemy

    publisher = clients.publisher()
    # Send all first, then wait: one round trip of latency for the batch, not one per row.
    pending = []
    for row in rows:
        row_id, topic, payload, attributes, attempts = tuple(row)
        future = publisher.publish(clients.topic_path(topic), bytes(payload), **attributes)
        pending.append((row_id, attempts, future))
    published = failed = 0
    for row_id, attempts, future in pending:
        try:
            future.result(timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - any publish failure leaves the row for later
            failed += 1
            backoff = min(MAX_BACKOFF_S, 2 ** min(attempts, 10))
            log.warning("outbox row %s not published: %s", row_id, type(exc).__name__)
            conn.execute(
                sqlalchemy.text(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = :error, "
                    "next_attempt_at = now() + make_interval(secs => :backoff) WHERE id = :id"
                ),
                {"id": row_id, "error": type(exc).__name__, "backoff": backoff},
            )
            continue
        published += 1
        conn.execute(
            sqlalchemy.text("UPDATE outbox SET published_at = now(), attempts = attempts + 1 "
                            "WHERE id = :id"),
            {"id": row_id},
        )
    return RelayResult(published, failed)
