"""maintenance: daily retention on `maintenance.daily` (Cloud Scheduler). Prunes expired dedupe
ids and idempotency records, and old published outbox rows. Idempotent by nature: deleting what
is expired twice deletes nothing the second time. Also drops idle rate-limit buckets, and
cleans up uploads: stale pending ones, old rejected records, deleted users' objects; and keeps
telemetry bounded: whole day partitions of spans and logs past the retention, old rollups."""

from __future__ import annotations

import logging
import os

import flask
import functions_framework

from shared.bootstrap import init
from shared.pubsub_push import PushMessage, push_function

init()
log = logging.getLogger("maintenance")


def run_maintenance(message: PushMessage) -> None:
    from shared.retention import prune_expired
    from shared.upload_finalize import cleanup

    result = prune_expired()
    telemetry = _telemetry_retention()
    log.info("telemetry: dropped %d day partitions", len(telemetry),
             extra={"droppedPartitions": telemetry})
    uploads = cleanup()
    log.info("uploads: %d stale pending rejected, %d rejected records pruned, %d deleted users' "
             "uploads removed, %d objects deleted", uploads.stale_pending, uploads.rejected_pruned,
             uploads.deleted_users, uploads.objects_removed, extra={"uploads": vars(uploads)})
    log.info(
        "pruned %d dedupe ids, %d idempotency records, %d outbox rows, %d rate-limit buckets; "
        "cleaned up %d deleted users",
        result.dedupe_ids, result.idempotency_records, result.outbox_rows,
        result.rate_limit_buckets, result.deleted_users_cleaned,
        extra={"pruned": vars(result)},
    )


def _telemetry_retention() -> list[str]:
    """Span and log partitions: today's and tomorrow's made ready, whole old days dropped;
    minute rollups past their own, longer retention deleted."""
    from shared import db, span_ingest, telemetry_store

    with db.transaction() as conn:
        dropped = telemetry_store.apply_retention(conn, span_ingest.retention_days())
        rollups = telemetry_store.prune_rollups(conn, int(os.environ.get(
            "ROLLUP_RETENTION_DAYS", telemetry_store.DEFAULT_ROLLUP_RETENTION_DAYS)))
    log.info("telemetry: pruned %d minute rollups", rollups)
    return dropped


app = push_function("maintenance", run_maintenance)


@functions_framework.http
def maintenance(request: flask.Request) -> flask.Response:
    return app(request)
