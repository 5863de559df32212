"""Transactional outbox: a DB change and the events it causes commit together.

Events are written as rows in the caller's transaction; right after commit they are published
from memory (awaited, unless the caller opts out) and marked. A publish that fails leaves its
row pending with a backoff, and the scheduled `outbox_relay` publishes it later. Publishing is
at-least-once (a crash between publish and mark re-sends), so every consumer dedupes on the
envelope id.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
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


@dataclass(frozen=True)
class Emitted:
    """An event row written in a transaction, kept in memory to publish once it commits."""

    row_id: int  # 0 until the row is written
    topic: str
    payload: bytes
    attributes: dict[str, str]
    attempts: int = 0

    def stored(self, row_id: int) -> Emitted:
        return replace(self, row_id=row_id)


# An outbox row from `outbox_params`, for callers that write it inside a larger statement
# (append a WHERE and RETURNING id as needed).
INSERT = ("INSERT INTO outbox (event_id, topic, payload, attributes) SELECT :outbox_event_id, "
          ":outbox_topic, :outbox_payload, CAST(:outbox_attributes AS jsonb)")


def pending(topic: str, envelope: Envelope, attributes: dict[str, str] | None = None
            ) -> Emitted:
    """An event as its row is written and then published: serialized once, for both."""
    return Emitted(0, topic, envelope.to_json(), envelope.attributes() | (attributes or {}))


def outbox_params(envelope: Envelope, event: Emitted) -> dict[str, Any]:
    """The bound values of `INSERT`."""
    return {"outbox_event_id": envelope.id, "outbox_topic": event.topic,
            "outbox_payload": event.payload, "outbox_attributes": json.dumps(event.attributes)}


@dataclass
class OutboxTransaction:
    """A transaction that can emit events; they are published only if it commits."""

    conn: Connection
    emitted: list[Emitted] = field(default_factory=list)

    def emit(self, topic: str, envelope: Envelope, attributes: dict[str, str] | None = None
             ) -> None:
        event = pending(topic, envelope, attributes)
        self.track(event.stored(_insert(self.conn, envelope, event)))

    def track(self, event: Emitted) -> None:
        """An event row the caller wrote itself (`INSERT` inside a larger statement):
        published after commit like the rows `emit` writes."""
        self.emitted.append(event)


def emit(conn: Connection, topic: str, envelope: Envelope,
         attributes: dict[str, str] | None = None) -> int:
    """Write an event row in `conn`'s transaction; returns the row id."""
    return _insert(conn, envelope, pending(topic, envelope, attributes))


def _insert(conn: Connection, envelope: Envelope, event: Emitted) -> int:
    import sqlalchemy

    return int(conn.execute(sqlalchemy.text(INSERT + " RETURNING id"),
                            outbox_params(envelope, event)).scalar_one())


@contextmanager
def transaction(wait: bool = True) -> Iterator[OutboxTransaction]:
    """Run a change and its events in one transaction, then publish the events (from memory:
    the rows are not read back): awaited by default; with `wait=False` (chat turns, span_writer:
    latency- or throughput-bound callers) the publish is sent at once but its confirmation is
    not awaited, and each row is marked when Pub/Sub confirms it. Either way the relay covers
    whatever is not confirmed."""
    with db.transaction() as conn:
        tx = OutboxTransaction(conn)
        yield tx
    if tx.emitted:
        publish_after_commit(tx.emitted, wait)


def publish_after_commit(events: Sequence[Emitted], wait: bool = True) -> None:
    """The publish that follows a commit, best effort: the change and its rows are committed,
    so it stands whatever happens here, and whatever is not confirmed stays pending for the
    relay. A failure here (no Pub/Sub client, Pub/Sub or the database unreachable for the
    mark) is logged, never raised: a 500 for a committed change would make the client retry a
    change that already happened."""
    try:
        if wait:
            publish_rows(events)
        else:
            publish_rows_in_background(events)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.warning("publish after commit failed, the relay will send %d event(s): %s",
                    len(events), type(exc).__name__)


def publish_rows_in_background(events: Sequence[Emitted]) -> None:
    """Publish committed rows without waiting; mark each one published when confirmed."""
    publisher = clients.publisher()
    for event in events:
        future = publisher.publish(clients.topic_path(event.topic), event.payload,
                                   **event.attributes)
        future.add_done_callback(lambda done, row_id=event.row_id: _mark_when_published(done,
                                                                                     row_id))


def _mark_when_published(future: Any, row_id: int) -> None:
    try:
        future.result(timeout=0)
        _mark_published([row_id])
    except Exception as exc:  # noqa: BLE001 - the row stays pending; the relay sends it
        log.warning("outbox row %s not confirmed: %s", row_id, type(exc).__name__)


def _mark_published(row_ids: list[int]) -> None:
    """One autocommit statement. `published_at IS NULL`: a row the relay already sent keeps
    its first mark."""
    import sqlalchemy

    with db.autocommit_engine().connect() as conn:
        conn.execute(sqlalchemy.text(
            "UPDATE outbox SET published_at = now(), attempts = attempts + 1 "
            "WHERE id = ANY(:ids) AND published_at IS NULL"), {"ids": row_ids})


@dataclass(frozen=True)
class RelayResult:
    published: int
    failed: int


def publish_rows(events: Sequence[Emitted]) -> RelayResult:
    """Publish a committed transaction's events now and wait for Pub/Sub to confirm them."""
    outcomes = _send(events, AFTER_COMMIT_TIMEOUT_S)
    published = [event.row_id for event, error in outcomes if error is None]
    if published:
        _mark_published(published)
    failed = [(event, error) for event, error in outcomes if error is not None]
    if failed:
        with db.transaction() as conn:
            for event, error in failed:
                _record_failure(conn, event, error)
    return RelayResult(len(published), len(failed))


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


def _publish(conn: Connection, rows: Sequence[Row[Any]]) -> RelayResult:
    """The relay's rows, locked in `conn`'s transaction: publish, then mark or back off."""
    import sqlalchemy

    events = [Emitted(row_id, topic, bytes(payload), attributes, attempts)
              for row_id, topic, payload, attributes, attempts in (tuple(r) for r in rows)]
    published = failed = 0
    for event, error in _send(events, PUBLISH_TIMEOUT_S):
        if error is not None:
            failed += 1
            _record_failure(conn, event, error)
            continue
        published += 1
        conn.execute(
            sqlalchemy.text("UPDATE outbox SET published_at = now(), attempts = attempts + 1 "
                            "WHERE id = :id"),
            {"id": event.row_id},
        )
    return RelayResult(published, failed)


def _send(events: Sequence[Emitted], timeout_s: float
          ) -> list[tuple[Emitted, Exception | None]]:
    """Send all first, then wait: one round trip of latency for the batch, not one per row."""
    publisher = clients.publisher()
    futures = [(event, publisher.publish(clients.topic_path(event.topic), event.payload,
                                         **event.attributes)) for event in events]
    outcomes: list[tuple[Emitted, Exception | None]] = []
    for event, future in futures:
        try:
            future.result(timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - any publish failure leaves the row for later
            log.warning("outbox row %s not published: %s", event.row_id, type(exc).__name__)
            outcomes.append((event, exc))
        else:
            outcomes.append((event, None))
    return outcomes


def _record_failure(conn: Connection, event: Emitted, error: Exception) -> None:
    import sqlalchemy

    conn.execute(
        sqlalchemy.text(
            "UPDATE outbox SET attempts = attempts + 1, last_error = :error, "
            "next_attempt_at = now() + make_interval(secs => :backoff) WHERE id = :id"
        ),
        {"id": event.row_id, "error": type(error).__name__,
         "backoff": min(MAX_BACKOFF_S, 2 ** min(event.attempts, 10))},
    )
