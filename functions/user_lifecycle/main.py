"""user_lifecycle: applies user status changes and deletions (restrictions, session
revocation, cleanup scheduling). Idempotent: duplicates and stale events change nothing."""

from __future__ import annotations

import logging

import flask
import functions_framework

from shared.bootstrap import init
from shared.pubsub_push import PushMessage, push_function

init()
log = logging.getLogger("user_lifecycle")


def handle(message: PushMessage) -> None:
    from shared import lifecycle

    envelope = message.envelope()
    applied = lifecycle.apply(envelope)
    log.info("%s %s", envelope.type, "applied" if applied else "skipped (duplicate or stale)",
             extra={"eventId": envelope.id, "applied": applied})


app = push_function("user_lifecycle", handle)


@functions_framework.http
def user_lifecycle(request: flask.Request) -> flask.Response:
    return app(request)
