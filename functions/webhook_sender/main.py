"""webhook_sender: POSTs one webhook delivery per message of `webhooks.deliveries`. A receiver's
non-2xx answer or a timeout is a 503 (Pub/Sub retries with backoff, then dead-letters); a
delivery already accepted is never sent again."""

from __future__ import annotations

import logging

import flask
import functions_framework

from shared import errors
from shared.bootstrap import init
from shared.pubsub_push import PushMessage, push_function

init()
log = logging.getLogger("webhook_sender")


def handle(message: PushMessage) -> None:
    from shared import webhooks

    envelope = message.envelope()
    delivery_id = envelope.data.get("delivery_id")
    if envelope.type != webhooks.DELIVERY_EVENT or not isinstance(delivery_id, str):
        raise errors.ValidationFailed("not a webhook delivery", code="unexpected_event")
    result = webhooks.deliver(delivery_id)
    log.info("delivery %s: %s", delivery_id, result,
             extra={"deliveryId": delivery_id, "result": result})


app = push_function("webhook_sender", handle)


@functions_framework.http
def webhook_sender(request: flask.Request) -> flask.Response:
    return app(request)
