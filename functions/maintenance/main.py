"""maintenance: daily retention on `maintenance.daily` (Cloud Scheduler). Prunes expired dedupe
ids and idempotency records, and old published outbox rows. Idempotent by nature: deleting what
is expired twice deletes nothing the second time. Also drops idle rate-limit buckets."""

from __future__ import annotations

import logging

import flask
import functions_framework

from shared.bootstrap import init
from shared.pubsub_push import PushMessage, push_function

init()
log = logging.getLogger("maintenance")


def run_maintenance(message: PushMessage) -> None:
    from shared.retention import prune_expired

    result = prune_expired()
    log.info(
        "pruned %d dedupe ids, %d idempotency records, %d outbox rows, %d rate-limit buckets; "
        "cleaned up %d deleted users",
        result.dedupe_ids, result.idempotency_records, result.outbox_rows,
        result.rate_limit_buckets, result.deleted_users_cleaned,
        extra={"pruned": vars(result)},
    )


app = push_function("maintenance", run_maintenance)


@functions_framework.http
def maintenance(request: flask.Request) -> flask.Response:
    return app(request)
