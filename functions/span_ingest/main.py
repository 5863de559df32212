"""span_ingest: OTLP/HTTP receiver. `POST /v1/traces` and `POST /v1/logs`, protobuf or JSON,
optionally gzipped; answers OTLP's response and publishes the accepted items to
`telemetry.spans` / `telemetry.logs` for `span_writer`.

Authorization is an ingest token (`Authorization: Bearer tt_...`, see `shared.telemetry_tokens`),
which names the tenant; without one, telemetry is accepted as the product's own (tenant '') only
when `TELEMETRY_ANONYMOUS_INGEST=true` (the local cloud)."""

from __future__ import annotations

import os

import flask
import functions_framework

from shared import errors
from shared.bootstrap import init
from shared.http import Call, Router

init()
MAX_BODY_BYTES = 8 * 1024 * 1024  # compressed; shared.otlp bounds the decompressed size

app = Router("span_ingest", rate_limited=True, max_body_bytes=MAX_BODY_BYTES)


@app.route("POST", "/v1/traces", summary="OTLP/HTTP traces (protobuf or JSON)")
def traces(call: Call) -> flask.Response:
    return _ingest(call, "traces")


@app.route("POST", "/v1/logs", summary="OTLP/HTTP logs (protobuf or JSON)")
def logs(call: Call) -> flask.Response:
    return _ingest(call, "logs")


def _ingest(call: Call, signal: str) -> flask.Response:
    from shared import span_ingest

    request = call.request
    tenant = _tenant(request)
    raw = request.stream.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise errors.PayloadTooLarge(f"body exceeds {MAX_BODY_BYTES} bytes")
    answer = span_ingest.ingest(signal, raw, request.headers.get("Content-Type"),
                                request.headers.get("Content-Encoding"), tenant)
    return flask.Response(answer.body, status=200, content_type=answer.content_type)


def _tenant(request: flask.Request) -> str:
    from shared import db, telemetry_tokens

    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        if os.environ.get("TELEMETRY_ANONYMOUS_INGEST", "").lower() == "true":
            return ""
        raise errors.Unauthorized("an ingest token is required (Authorization: Bearer tt_...)")
    if scheme.lower() != "bearer" or not telemetry_tokens.is_telemetry_token(token.strip()):
        raise errors.Unauthorized("expected Authorization: Bearer tt_... (an ingest token)")
    with db.transaction() as conn:
        return telemetry_tokens.verify(conn, token.strip(), "ingest").tenant


@functions_framework.http
def span_ingest(request: flask.Request) -> flask.Response:
    return app(request)
