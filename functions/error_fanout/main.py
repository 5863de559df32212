"""error_fanout: groups new errors by fingerprint, keeps the Firestore live feed, and turns new
errors, regressions, threshold crossings and alert transitions into webhook deliveries.
Idempotent: the envelope id is claimed in the transaction of its effects."""

from __future__ import annotations

import logging

import flask
import functions_framework

from shared import errors
from shared.bootstrap import init
from shared.pubsub_push import PushMessage, push_function

init()
log = logging.getLogger("error_fanout")


def handle(message: PushMessage) -> None:
    from shared import error_groups

    envelope = message.envelope()
    if envelope.type == error_groups.ERROR_BATCH:
        outcome = error_groups.handle_errors(envelope)
    elif envelope.type == error_groups.ALERT_TRANSITION:
        outcome = error_groups.handle_alert(envelope)
    else:
        raise errors.ValidationFailed(f"unexpected event type {envelope.type}",
                                      code="unexpected_event")
    log.info("%s %s", envelope.type, "skipped (duplicate)" if outcome.duplicate else "applied",
             extra={"eventId": envelope.id, "errors": outcome.errors, "groups": outcome.groups,
                    "notifications": len(outcome.notifications)})


app = push_function("error_fanout", handle)


@functions_framework.http
def error_fanout(request: flask.Request) -> flask.Response:
    return app(request)
