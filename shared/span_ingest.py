"""OTLP/HTTP ingest: validate a request, answer OTLP's response (with `partialSuccess` for what
was rejected), and publish the accepted items as compact row batches to `telemetry.spans` /
`telemetry.logs`, where `span_writer` copies them into PostgreSQL.

The publish is the commit point: the response is sent only once Pub/Sub has the batch, and a
publish that fails or times out is a 503 with `Retry-After`, which OTLP exporters retry. A
batch is gzipped CSV in the column order of the telemetry tables (`shared.otlp`), split so no
message nears Pub/Sub's 10 MB limit.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from typing import Any

from shared import errors, otlp

SPANS_TOPIC = "telemetry.spans"
LOGS_TOPIC = "telemetry.logs"
BATCH_FORMAT = "otlp-rows.csv.v1"
ROWS_PER_MESSAGE = 5_000
MAX_ITEMS_PER_REQUEST = 20_000
PUBLISH_TIMEOUT_S = 10.0
SIGNALS = {"traces": (SPANS_TOPIC, "spans"), "logs": (LOGS_TOPIC, "logs")}


@dataclass(frozen=True)
class Answer:
    body: bytes
    content_type: str
    accepted: int
    rejected: int


def retention_days() -> int:
    return int(os.environ.get("TELEMETRY_RETENTION_DAYS", otlp.DEFAULT_RETENTION_DAYS))


def ingest(signal: str, raw: bytes, content_type: str | None, content_encoding: str | None,
           tenant: str) -> Answer:
    """Decode, check and publish one OTLP export request of `signal` (traces or logs)."""
    kind = otlp.media_type(content_type)
    body = otlp.read_body(raw, content_encoding)
    outcome = otlp.Outcome()
    if signal == "traces":
        request = otlp.parse_traces(body, kind, outcome)
        _check_count(sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans))
        otlp.span_rows(request, tenant, outcome, retention_days=retention_days())
    else:
        request = otlp.parse_logs(body, kind, outcome)
        _check_count(sum(len(s.log_records) for r in request.resource_logs
                         for s in r.scope_logs))
        otlp.log_rows(request, tenant, outcome, retention_days=retention_days())
    publish(signal, outcome.rows, tenant)
    payload, media = otlp.response_body(kind, signal, outcome)
    return Answer(payload, media, len(outcome.rows), outcome.rejected)


def _check_count(count: int) -> None:
    if count > MAX_ITEMS_PER_REQUEST:
        raise errors.PayloadTooLarge(
            f"{count} items in one request; send at most {MAX_ITEMS_PER_REQUEST} per request",
            code="too_many_items")


def row_days(signal: str, rows: list[tuple[Any, ...]]) -> set[str]:
    """The UTC days (ISO dates) of the rows: the writer makes their partitions ready without
    reading the batch."""
    column = otlp.SPAN_COLUMNS.index("start_time") if signal == "traces" \
        else otlp.LOG_COLUMNS.index("time")
    return {str(row[column])[:10] for row in rows}


def batch_attributes(signal: str, tenant: str) -> dict[str, str]:
    return {"format": BATCH_FORMAT, "signal": SIGNALS[signal][1], "tenant": tenant,
            "content-encoding": "gzip"}


def publish(signal: str, rows: list[tuple[Any, ...]], tenant: str) -> int:
    """Publish the rows in batches; the number of messages. 503 when Pub/Sub does not take
    them in time (the client retries the whole request; the writer drops duplicates)."""
    from shared import clients, context

    if not rows:
        return 0
    topic = clients.topic_path(SIGNALS[signal][0])
    attributes = batch_attributes(signal, tenant)
    trace = context.current()
    if trace is not None:
        attributes["traceparent"] = trace.traceparent
    futures = []
    for i in range(0, len(rows), ROWS_PER_MESSAGE):
        chunk = rows[i:i + ROWS_PER_MESSAGE]
        futures.append(clients.publisher().publish(
            topic, gzip.compress(otlp.encode_csv(chunk), compresslevel=1),
            **attributes, days=",".join(sorted(row_days(signal, chunk)))))
    try:
        for future in futures:
            future.result(timeout=PUBLISH_TIMEOUT_S)
    except Exception as exc:
        raise errors.ServiceUnavailable("telemetry could not be queued; retry shortly",
                                        code="ingest_unavailable",
                                        headers={"Retry-After": "5"}) from exc
    return len(futures)
