"""Retention for platform tables, run by the daily `maintenance` function."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from shared import db

# Published outbox rows are kept a while for audit and debugging, then dropped.
OUTBOX_RETENTION = timedelta(days=7)
BATCH = 5000
RATE_BUCKET_IDLE_S = 24 * 3600


@dataclass(frozen=True)
class PruneResult:
    dedupe_ids: int
    idempotency_records: int
    outbox_rows: int
    rate_limit_buckets: int
    deleted_users_cleaned: int = 0


def _delete_in_batches(sql: str, params: dict[str, object]) -> int:
    """Delete in bounded batches so a large backlog never holds one long transaction."""
    import sqlalchemy

    total = 0
    while True:
        with db.transaction() as conn:
            deleted = conn.execute(sqlalchemy.text(sql), params | {"batch": BATCH}).rowcount
        total += deleted
        if deleted < BATCH:
            return total


def prune_expired(outbox_retention: timedelta = OUTBOX_RETENTION) -> PruneResult:
    """Remove expired dedupe ids, expired idempotency records, old published outbox rows and
    idle rate-limit buckets."""
    dedupe = _delete_in_batches(
        "DELETE FROM processed_messages WHERE ctid IN (SELECT ctid FROM processed_messages "
        "WHERE expires_at < now() LIMIT :batch)", {})
    idem = _delete_in_batches(
        "DELETE FROM idempotency_keys WHERE ctid IN (SELECT ctid FROM idempotency_keys "
        "WHERE expires_at < now() LIMIT :batch)", {})
    outbox = _delete_in_batches(
        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE published_at IS NOT NULL "
        "AND published_at < now() - make_interval(secs => :age) LIMIT :batch)",
        {"age": outbox_retention.total_seconds()})
    buckets = _prune_rate_limits()
    return PruneResult(dedupe, idem, outbox, buckets, run_conversation_cleanup())


def run_conversation_cleanup(limit: int = 100) -> int:
    """Carry out pending `conversations` cleanup jobs of deleted users (user_lifecycle
    schedules them): their conversations and messages are erased. One user per transaction;
    a job already done is skipped, so reruns change nothing."""
    import sqlalchemy

    from shared.conversations import remove_user_conversations

    done = 0
    for _ in range(limit):
        with db.transaction() as conn:
            job = conn.execute(sqlalchemy.text(
                "SELECT user_id FROM cleanup_jobs WHERE kind = 'conversations' "
                "AND done_at IS NULL ORDER BY scheduled_at LIMIT 1 FOR UPDATE SKIP LOCKED")
            ).first()
            if job is None:
                return done
            remove_user_conversations(conn, str(job[0]))
            conn.execute(sqlalchemy.text(
                "UPDATE cleanup_jobs SET done_at = now() WHERE user_id = :u "
                "AND kind = 'conversations'"), {"u": job[0]})
            done += 1
    return done


def _prune_rate_limits() -> int:
    """Buckets idle for a day are full (no limit takes that long to refill): dropping them
    changes no decision and keeps the table to the callers of the last day."""
    from shared import ratelimit

    total = 0
    while True:
        with db.transaction() as conn:
            deleted = ratelimit.prune_idle(conn, RATE_BUCKET_IDLE_S, batch=BATCH)
        total += deleted
        if deleted < BATCH:
            return total
