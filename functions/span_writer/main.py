"""span_writer: copies telemetry batches from `telemetry.spans` / `telemetry.logs` into
PostgreSQL (COPY, duplicate-safe) and announces new errors on `telemetry.errors`. Also reads
OTLP messages an OpenTelemetry Collector publishes to those topics directly."""

from __future__ import annotations

import logging

import flask
import functions_framework

from shared.bootstrap import init
from shared.pubsub_push import PushMessage, push_function

init()
log = logging.getLogger("span_writer")


def handle(message: PushMessage) -> None:
    from shared import span_writer

    batch = span_writer.decode(message.data, message.attributes)
    written = span_writer.store(batch)
    log.info("%s batch written", batch.signal, extra={"telemetry": {
        "signal": batch.signal, "received": written.received, "inserted": written.inserted,
        "duplicates": written.received - written.inserted, "errors": written.errors,
        "rejected": batch.rejected}})


app = push_function("span_writer", handle)


@functions_framework.http
def span_writer(request: flask.Request) -> flask.Response:
    return app(request)
