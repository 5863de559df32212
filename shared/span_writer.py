"""Writes telemetry batches into PostgreSQL with COPY, duplicate-safe, and raises errors.

A delivery on `telemetry.spans` / `telemetry.logs` is either a batch from `span_ingest` (gzipped
CSV rows, attribute `format: otlp-rows.csv.v1`) or an OTLP message published straight to the
topic by an OpenTelemetry Collector's Google Cloud Pub/Sub exporter (`ce-type:
org.opentelemetry.otlp.traces.v1` / `logs.v1`, protobuf, optionally `content-encoding: gzip`),
which is checked and converted here exactly as `span_ingest` would.

One transaction per delivery: COPY into a session-local staging table, create the day
partitions it needs, then `INSERT ... SELECT ... ON CONFLICT DO NOTHING`, so a redelivered or
re-sent batch stores each span (trace id, span id) and each log record (content digest) once.
The rows that were new and are errors (span status ERROR, log severity ERROR or above) become
one `telemetry.error_batch` event on `telemetry.errors`, through the outbox in the same
transaction: an error is announced exactly when it is first stored, never twice.
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from shared import errors, otlp, span_ingest, telemetry_store
from shared.events import Envelope

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

log = logging.getLogger(__name__)

ERRORS_TOPIC = "telemetry.errors"
OTLP_CE_TYPES = {"org.opentelemetry.otlp.traces.v1": "traces",
                 "org.opentelemetry.otlp.logs.v1": "logs"}
MAX_ERRORS_PER_EVENT = 500
MAX_BATCH_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Batch:
    signal: str  # "traces" or "logs"
    csv: bytes
    rows: int | None  # known when converted here; counted by COPY otherwise
    rejected: int = 0
    days: frozenset[date] | None = None  # the rows' UTC days, when the publisher said


@dataclass(frozen=True)
class Written:
    received: int
    inserted: int
    errors: int


def _sql(text: str) -> Any:
    import sqlalchemy

    return sqlalchemy.text(text)


def _gunzip(data: bytes) -> bytes:
    try:
        out = zlib.decompressobj(wbits=31).decompress(data, MAX_BATCH_BYTES)
    except zlib.error as exc:
        raise errors.ValidationFailed("batch is not valid gzip", code="invalid_batch") from exc
    return out


def decode(data: bytes, attributes: dict[str, str]) -> Batch:
    """The rows a delivery carries. Malformed deliveries are 422 (dead-lettered, not lost)."""
    if attributes.get("format") == span_ingest.BATCH_FORMAT:
        signal = {"spans": "traces", "logs": "logs"}.get(attributes.get("signal", ""))
        if signal is None:
            raise errors.ValidationFailed("batch has no known signal", code="invalid_batch")
        body = _gunzip(data) if attributes.get("content-encoding") == "gzip" else data
        return Batch(signal, body, None, days=_days(attributes.get("days")))
    signal = OTLP_CE_TYPES.get(attributes.get("ce-type", ""))
    if signal is None:
        raise errors.ValidationFailed("not a telemetry batch or an OTLP message",
                                      code="invalid_batch")
    body = data
    if attributes.get("content-encoding", "").lower() == "gzip":
        try:
            body = otlp.read_body(data, "gzip")
        except errors.AppError as exc:
            raise errors.ValidationFailed(exc.detail or "bad gzip", code="invalid_batch") from exc
    outcome = otlp.Outcome()
    tenant = attributes.get("tenant", "")
    try:
        if signal == "traces":
            otlp.span_rows(otlp.parse_traces(body, "protobuf", outcome), tenant, outcome,
                           retention_days=span_ingest.retention_days())
        else:
            otlp.log_rows(otlp.parse_logs(body, "protobuf", outcome), tenant, outcome,
                          retention_days=span_ingest.retention_days())
    except errors.AppError as exc:
        raise errors.ValidationFailed(exc.detail or "bad OTLP message",
                                      code="invalid_batch") from exc
    if outcome.rejected:
        log.warning("OTLP message from the topic: %s", outcome.message())
    return Batch(signal, otlp.encode_csv(outcome.rows), len(outcome.rows), outcome.rejected,
                 frozenset(date.fromisoformat(d)
                           for d in span_ingest.row_days(signal, outcome.rows)))


def _days(value: str | None) -> frozenset[date] | None:
    """The `days` attribute; None (read the rows instead) when absent or not dates."""
    if not value:
        return None
    try:
        return frozenset(date.fromisoformat(d) for d in value.split(","))
    except ValueError:
        return None


# Details of the new error rows, read back from the staging table (errors are rare: the
# INSERT returns only keys and the error flag, not every row it wrote).
_SPAN_ERRORS = """
    SELECT 'span', encode(s.trace_id, 'hex'), encode(s.span_id, 'hex'), s.tenant, s.service,
           s.environment, s.name, s.start_time, s.status_message, s.attributes->>'enduser.id',
           (SELECT e->'attributes' FROM jsonb_array_elements(s.events) e
            WHERE e->>'name' = 'exception' LIMIT 1)
    FROM new_rows n JOIN spans_stage s USING (trace_id, span_id, start_time)
    WHERE n.error
"""
_LOG_ERRORS = """
    SELECT 'log', encode(s.trace_id, 'hex'), encode(s.span_id, 'hex'), s.tenant, s.service,
           s.environment, s.severity_text, s.time, s.body, s.attributes->>'enduser.id',
           jsonb_strip_nulls(jsonb_build_object(
               'exception.type', s.attributes->'exception.type',
               'exception.message', s.attributes->'exception.message',
               'exception.stacktrace', s.attributes->'exception.stacktrace'))
    FROM new_rows n JOIN logs_stage s USING (log_id, time)
    WHERE n.error
"""
# What the INSERT returns per new row: its key and whether it is an error.
_RETURNING = {"spans": "trace_id, span_id, start_time, status_code = 2 AS error",
              "logs": "log_id, time, severity_number >= 17 AS error"}


def store(batch: Batch) -> Written:
    """Make sure the batch's day partitions exist (their own short transaction: creating one
    locks the parent table, which must not happen while holding rows of it), then write."""
    from shared import db, outbox

    table = "spans" if batch.signal == "traces" else "logs"
    cutoff = telemetry_store.retention_cutoff(span_ingest.retention_days())
    days = {d for d in batch_days(batch) if d >= cutoff}  # older rows are dropped in write()
    if not telemetry_store.known(telemetry_store.database_key(), table, days):
        with db.transaction() as conn:
            telemetry_store.ensure_partitions(conn, table, days)
    with outbox.transaction(wait=False) as tx:  # throughput first; the relay backs it up
        return write(tx, batch)


def batch_days(batch: Batch) -> set[date]:
    """The UTC days the batch's rows fall on: as the publisher said, or from the time column's
    ISO date prefix."""
    if batch.days is not None:
        return set(batch.days)
    column = otlp.SPAN_COLUMNS.index("start_time") if batch.signal == "traces" \
        else otlp.LOG_COLUMNS.index("time")
    days = set()
    for fields in otlp.decode_csv(batch.csv):
        try:
            days.add(date.fromisoformat(fields[column][:10]))
        except (IndexError, ValueError) as exc:
            raise errors.ValidationFailed("batch row has no valid time",
                                          code="invalid_batch") from exc
    return days


def write(tx: Any, batch: Batch) -> Written:
    """COPY the batch in and announce the new errors, in `tx` (an outbox transaction). The
    day partitions must exist (`store` sees to it).

    Fast path: COPY straight into the table, inside a savepoint. A batch seen before (a
    redelivery, a client's retry) or with rows for a day already dropped fails that COPY as a
    whole; it is then written through a staging table with ON CONFLICT DO NOTHING, which keeps
    exactly the new rows. Duplicates are the exception, so most batches cost one COPY."""
    conn: Connection = tx.conn
    table, columns = ("spans", otlp.SPAN_COLUMNS) if batch.signal == "traces" \
        else ("logs", otlp.LOG_COLUMNS)
    try:
        with conn.begin_nested():
            received = copy_rows(conn, table, columns, batch.csv)
    except _DuplicateOrExpired:
        received, inserted, found = _write_deduplicated(conn, batch, table, columns)
    else:
        inserted, found = received, errors_in_csv(batch)
    for start in range(0, len(found), MAX_ERRORS_PER_EVENT):
        tx.emit(ERRORS_TOPIC, Envelope("telemetry.error_batch",
                                       {"errors": found[start:start + MAX_ERRORS_PER_EVENT]}))
    return Written(received, inserted, len(found))


class _DuplicateOrExpired(Exception):
    """The fast-path COPY met a row already stored, or one for a day no longer kept."""


def _write_deduplicated(conn: Connection, batch: Batch, table: str, columns: tuple[str, ...]
                        ) -> tuple[int, int, list[dict[str, Any]]]:
    time_column, error_sql = ("start_time", _SPAN_ERRORS) if table == "spans" \
        else ("time", _LOG_ERRORS)
    cutoff = telemetry_store.retention_cutoff(span_ingest.retention_days())
    stage = f"{table}_stage"
    conn.execute(_sql(f"CREATE TEMP TABLE IF NOT EXISTS {stage} "
                      f"(LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"))
    received = copy_rows(conn, stage, columns, batch.csv)
    column_list = ", ".join(columns)
    rows = conn.execute(_sql(
        f"WITH new_rows AS (INSERT INTO {table} ({column_list}) "
        f"SELECT {column_list} FROM {stage} WHERE {time_column} >= CAST(:cutoff AS date) "
        f"ON CONFLICT DO NOTHING RETURNING {_RETURNING[table]}), "
        f"counted AS (SELECT count(*) AS n FROM new_rows) "
        f"SELECT (SELECT n FROM counted), e.* FROM ({error_sql}) e "
        f"RIGHT JOIN (SELECT 1) one ON true"), {"cutoff": cutoff.isoformat()}).all()
    inserted = int(rows[0][0]) if rows else 0
    return received, inserted, [_error(r[1:]) for r in rows if r[1] is not None]


def errors_in_csv(batch: Batch) -> list[dict[str, Any]]:
    """The error rows of a batch, read from the batch itself (all of it was new)."""
    found = []
    if batch.signal == "traces":
        status = otlp.SPAN_COLUMNS.index("status_code")
        for f in otlp.decode_csv(batch.csv):
            if f[status] == "2":
                events = json.loads(f[14])
                exception = next((e["attributes"] for e in events
                                  if e.get("name") == "exception"), None)
                found.append(_error(("span", f[0][2:], f[1][2:], f[5], f[6], f[7], f[8],
                                     datetime.fromisoformat(f[3]), f[11],
                                     json.loads(f[12]).get("enduser.id"), exception)))
        return found
    severity = otlp.LOG_COLUMNS.index("severity_number")
    for f in otlp.decode_csv(batch.csv):
        if int(f[severity]) >= otlp.ERROR_SEVERITY:
            attrs = json.loads(f[11])
            exception = {k: attrs[k] for k in ("exception.type", "exception.message",
                                               "exception.stacktrace") if k in attrs}
            found.append(_error(("log", _hex(f[9]), _hex(f[10]), f[3], f[4], f[5], f[7],
                                 datetime.fromisoformat(f[1]), f[8], attrs.get("enduser.id"),
                                 exception)))
    return found


def _hex(field: str) -> str | None:
    return None if field == otlp.NULL else field[2:]


def _error(row: Any) -> dict[str, Any]:
    kind, trace_id, span_id, tenant, service, environment, name, when, message, user, exc = row
    exception = exc or {}
    return {"kind": kind, "trace_id": trace_id, "span_id": span_id, "tenant": tenant,
            "service": service, "environment": environment, "name": name,
            "time": when.isoformat(), "message": (message or "")[:2000], "user_id": user,
            "exception_type": exception.get("exception.type"),
            "exception_message": (exception.get("exception.message") or "")[:2000] or None,
            "stacktrace": (exception.get("exception.stacktrace") or "")[:8000] or None}


def copy_rows(conn: Connection, table: str, columns: tuple[str, ...], csv_data: bytes) -> int:
    """COPY CSV rows into `table` on the transaction's own connection; the row count."""
    import psycopg

    driver = conn.connection.driver_connection
    assert driver is not None
    text = ", ".join(otlp.TEXT_COLUMNS[table.removesuffix("_stage")])
    try:
        with driver.cursor() as cursor:
            with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN "
                             f"WITH (FORMAT csv, FORCE_NOT_NULL ({text}))") as copy:
                copy.write(csv_data)
            return int(cursor.rowcount)
    except psycopg.Error as exc:
        # 23505 unique_violation: stored before; 23514: no partition for the row's day.
        if exc.sqlstate in ("23505", "23514"):
            raise _DuplicateOrExpired(exc.diag.message_primary or "") from exc
        raise
