"""upload_finalize: the uploads bucket's finalize notifications (OBJECT_FINALIZE). Checks each
quarantined object's real type and size against its record, then accepts it (moved out of
quarantine, avatars attached) or rejects it (deleted, reason recorded). Idempotent under
redelivery and reordering; objects with no record are removed."""

from __future__ import annotations

import logging

import flask
import functions_framework

from shared.bootstrap import init
from shared.pubsub_push import PushMessage, push_function

init()
log = logging.getLogger("upload_finalize")


def handle(message: PushMessage) -> None:
    from shared.upload_finalize import ObjectEvent, finalize

    event = ObjectEvent.from_message(message.attributes, message.json())
    outcome = finalize(event)
    log.info("%s %s: %s", event.event_type, event.name, outcome,
             extra={"objectName": event.name, "generation": event.generation,
                    "outcome": outcome})


app = push_function("upload_finalize", handle)


@functions_framework.http
def upload_finalize(request: flask.Request) -> flask.Response:
    return app(request)
