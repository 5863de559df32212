"""outbox_relay: on each `outbox.tick` (Cloud Scheduler, every minute) publish the outbox rows
whose publish-after-commit failed. Duplicate ticks are harmless: rows are locked with SKIP LOCKED
and marked when sent, and consumers dedupe on the envelope id."""

from __future__ import annotations

import logging

import flask
import functions_framework

from shared.bootstrap import init
from shared.pubsub_push import PushMessage, push_function

init()
log = logging.getLogger("outbox_relay")


def relay(message: PushMessage) -> None:
    from shared.outbox import relay_pending

    result = relay_pending()
    log.info("outbox relay: %d published, %d failed", result.published, result.failed,
             extra={"published": result.published, "failed": result.failed})


app = push_function("outbox_relay", relay)


@functions_framework.http
def outbox_relay(request: flask.Request) -> flask.Response:
    return app(request)
