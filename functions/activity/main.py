"""activity: reward progress from logins, chat turns, characters created, referred signups
and named counters (idempotent: the same event twice counts once, in any order); and the
user's notification for `rewards.granted`."""

from __future__ import annotations

import logging

import flask
import functions_framework

from shared.bootstrap import init
from shared.pubsub_push import PushMessage, push_function

init()
log = logging.getLogger("activity")


def handle(message: PushMessage) -> None:
    from shared import activity

    envelope = message.envelope()
    outcome = activity.apply(envelope)
    log.info("%s %s", envelope.type, outcome, extra={"eventId": envelope.id,
                                                     "outcome": outcome})


app = push_function("activity", handle)


@functions_framework.http
def activity(request: flask.Request) -> flask.Response:
    return app(request)
