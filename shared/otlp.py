"""OTLP traces and logs in, rows for the telemetry tables out.

Both wire encodings of OTLP/HTTP are read: protobuf (`application/x-protobuf`) and JSON
(`application/json`), where, unlike protobuf's own JSON mapping, trace and span ids are hex and
64-bit integers may be strings. Requests are decoded into the official protobuf messages
(`opentelemetry-proto`, with the C `upb` backend), then every span or log record is checked on
its own: an invalid one is rejected and counted for the response's `partialSuccess`, the rest of
the request is kept.

Per item:
- ids: a trace id is 16 bytes, a span id 8, neither all zero; a parent is empty or 8 bytes; a
  log's trace/span ids are empty or valid. In JSON they must be hex of exactly that length.
- times: a span needs a start and an end not before it. A start more than `MAX_FUTURE_S` ahead
  of the receiver's clock is clamped to now (duration kept); one older than the retention is
  rejected (it would be dropped at once).
- sizes: string values are cut to `MAX_VALUE_CHARS`, attributes to `MAX_ATTRIBUTES`, events and
  links to `MAX_EVENTS` / `MAX_LINKS` (OpenTelemetry's attribute limits); NUL characters, which
  PostgreSQL text cannot hold, are removed.

Rows are tuples in the column order of `SPAN_COLUMNS` / `LOG_COLUMNS`, encoded as CSV for
PostgreSQL's COPY (`encode_csv`): this is the compact batch `span_ingest` publishes and
`span_writer` copies without looking inside.
"""

from __future__ import annotations

import base64
import csv
import gzip
import hashlib
import io
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared import errors

MAX_VALUE_CHARS = 4096
MAX_ATTRIBUTES = 128
MAX_EVENTS = 128
MAX_LINKS = 128
MAX_NAME_CHARS = 512
MAX_FUTURE_S = 300
DEFAULT_RETENTION_DAYS = 7
MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024

SPAN_COLUMNS = ("trace_id", "span_id", "parent_span_id", "start_time", "duration_ns", "tenant",
                "service", "environment", "name", "kind", "status_code", "status_message",
                "attributes", "resource", "events", "links", "scope")
LOG_COLUMNS = ("log_id", "time", "observed_time", "tenant", "service", "environment",
               "severity_number", "severity_text", "body", "trace_id", "span_id", "attributes",
               "resource", "scope")
# COPY's CSV conventions here: NULL is an unquoted empty field (CSV's default), and the text
# columns are FORCE_NOT_NULL, so an empty string stays an empty string. No text value can be
# mistaken for NULL, whatever it contains.
NULL = ""
TEXT_COLUMNS = {"spans": ("tenant", "service", "environment", "name", "status_message", "scope"),
                "logs": ("tenant", "service", "environment", "severity_text", "body", "scope")}
ERROR_SEVERITY = 17  # OTLP SeverityNumber ERROR


@dataclass
class Outcome:
    """Rows that passed, and what the OTLP response reports about the rest."""

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    adjusted: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str, count: int = 1) -> None:
        self.rejected += count
        self.reasons[reason] = self.reasons.get(reason, 0) + count

    def adjust(self, what: str) -> None:
        self.adjusted[what] = self.adjusted.get(what, 0) + 1

    def message(self) -> str:
        """The `partialSuccess.errorMessage`: what was rejected or changed, and how often."""
        parts = [f"{n} rejected: {why}" for why, n in sorted(self.reasons.items())]
        parts += [f"{n} {what}" for what, n in sorted(self.adjusted.items())]
        return "; ".join(parts)


# ---------------------------------------------------------------------------------- decoding


def read_body(raw: bytes, content_encoding: str | None) -> bytes:
    """The request body, gunzipped when `Content-Encoding: gzip` (bounded: no gzip bombs)."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding != "gzip":
        raise errors.UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; "
                                          "use gzip or none", code="unsupported_encoding")
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            data = stream.read(MAX_DECOMPRESSED_BYTES + 1)
    except (OSError, EOFError) as exc:
        raise errors.BadRequest("the gzip body is corrupt", code="invalid_gzip") from exc
    if len(data) > MAX_DECOMPRESSED_BYTES:
        raise errors.PayloadTooLarge("the decompressed body is too large")
    return data


def media_type(content_type: str | None) -> str:
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind in ("application/x-protobuf", "application/protobuf"):
        return "protobuf"
    if kind == "application/json":
        return "json"
    raise errors.UnsupportedMediaType(
        "send application/x-protobuf or application/json", code="unsupported_media_type")


def parse_traces(body: bytes, kind: str, outcome: Outcome) -> Any:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    if kind == "protobuf":
        return _parse_protobuf(ExportTraceServiceRequest, body)
    document = _json_document(body)
    _fix_json_ids(document, "resourceSpans", "scopeSpans", "spans", outcome, span=True)
    return _parse_json(ExportTraceServiceRequest, document)


def parse_logs(body: bytes, kind: str, outcome: Outcome) -> Any:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    if kind == "protobuf":
        return _parse_protobuf(ExportLogsServiceRequest, body)
    document = _json_document(body)
    _fix_json_ids(document, "resourceLogs", "scopeLogs", "logRecords", outcome, span=False)
    return _parse_json(ExportLogsServiceRequest, document)


def _parse_protobuf(message: Any, body: bytes) -> Any:
    from google.protobuf.message import DecodeError

    try:
        return message.FromString(body)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise errors.BadRequest("the body is not a valid OTLP protobuf message",
                                code="invalid_protobuf") from exc


def _json_document(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise errors.BadRequest("the body is not valid JSON", code="invalid_json") from exc
    if not isinstance(document, dict):
        raise errors.BadRequest("the body must be a JSON object", code="invalid_json")
    return document


def _parse_json(message: Any, document: dict[str, Any]) -> Any:
    from google.protobuf import json_format

    try:
        return json_format.ParseDict(document, message(), ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise errors.BadRequest(f"the body is not a valid OTLP JSON message: {exc}"[:300],
                                code="invalid_otlp_json") from exc


def _hex_id(value: Any, size: int, required: bool) -> str | None:
    """base64 of a hex id of `size` bytes ('' when optional and empty); None when invalid."""
    if value in (None, ""):
        return None if required else ""
    if not isinstance(value, str) or len(value) != size * 2:
        return None
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        return None
    return base64.b64encode(raw).decode()


def _fix_json_ids(document: dict[str, Any], outer: str, middle: str, inner: str,
                  outcome: Outcome, span: bool) -> None:
    """OTLP/JSON ids are hex; protobuf's JSON parser expects base64. Items with ids that are
    not hex of the right length are removed here and counted as rejected."""
    for resource in _list(document.get(outer)):
        for scope in _list(resource.get(middle) if isinstance(resource, dict) else None):
            if not isinstance(scope, dict) or not isinstance(scope.get(inner), list):
                continue
            kept = []
            for item in scope[inner]:
                if not isinstance(item, dict):
                    outcome.reject("not an object")
                    continue
                if _fix_item_ids(item, span):
                    kept.append(item)
                else:
                    outcome.reject("trace or span id is not hex of the right length")
            scope[inner] = kept


def _fix_item_ids(item: dict[str, Any], span: bool) -> bool:
    fields = (("traceId", 16, span), ("spanId", 8, span), ("parentSpanId", 8, False))
    for name, size, required in fields if span else fields[:2]:
        if name not in item and not required:
            continue
        fixed = _hex_id(item.get(name), size, required)
        if fixed is None:
            return False
        item[name] = fixed
    for link in _list(item.get("links")):
        if not isinstance(link, dict):
            return False
        for name, size in (("traceId", 16), ("spanId", 8)):
            fixed = _hex_id(link.get(name), size, True)
            if fixed is None:
                return False
            link[name] = fixed
    return True


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


# ------------------------------------------------------------------------------- conversion


def _clean(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    if "\x00" in text:
        text = text.replace("\x00", "")
    return text[:limit]


def any_value(value: Any) -> Any:
    """An OTLP AnyValue as JSON: scalars, arrays, objects; bytes as base64."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return _clean(value.string_value)
    if which == "bool_value":
        return value.bool_value
    if which == "int_value":
        return value.int_value
    if which == "double_value":
        number = value.double_value
        return number if number == number and abs(number) != float("inf") else str(number)
    if which == "array_value":
        return [any_value(v) for v in value.array_value.values[:MAX_ATTRIBUTES]]
    if which == "kvlist_value":
        return attributes(value.kvlist_value.values)
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value[:MAX_VALUE_CHARS]).decode()
    return None


def attributes(pairs: Sequence[Any], outcome: Outcome | None = None) -> dict[str, Any]:
    if outcome is not None and len(pairs) > MAX_ATTRIBUTES:
        outcome.adjust("items had attributes beyond the limit dropped")
    return {_clean(kv.key, 256): any_value(kv.value) for kv in pairs[:MAX_ATTRIBUTES]}


def _resource_identity(resource: Any) -> tuple[dict[str, Any], str, str]:
    attrs = attributes(resource.attributes)
    service = str(attrs.get("service.name") or "unknown_service")[:256]
    environment = str(attrs.get("deployment.environment.name")
                      or attrs.get("deployment.environment") or "")[:128]
    return attrs, service, environment


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _timestamp(unix_nano: int) -> str:
    """An ISO timestamp PostgreSQL reads as timestamptz (microseconds)."""
    seconds, nanos = divmod(unix_nano, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos // 1000:06d}Z"


def _window(now_ns: int, retention_days: int) -> tuple[int, int]:
    return now_ns - retention_days * 86_400 * 1_000_000_000, now_ns + MAX_FUTURE_S * 1_000_000_000


def span_rows(request: Any, tenant: str, outcome: Outcome, now_ns: int | None = None,
              retention_days: int = DEFAULT_RETENTION_DAYS) -> Outcome:
    """Rows for `spans` from an ExportTraceServiceRequest."""
    return _walk(request.resource_spans, "scope_spans", "spans", _span_row, tenant, outcome,
                 now_ns, retention_days)


def _walk(resource_groups: Any, scopes: str, items: str, make_row: Any, tenant: str,
          outcome: Outcome, now_ns: int | None, retention_days: int) -> Outcome:
    """Every item of every scope of every resource through `make_row`; kept rows go to
    `outcome.rows` (the shape traces and logs share: resource -> scope -> items)."""
    now_ns = now_ns or time.time_ns()
    oldest, latest = _window(now_ns, retention_days)
    for group in resource_groups:
        resource, service, environment = _resource_identity(group.resource)
        resource_json = _json(resource)
        for scope_group in getattr(group, scopes):
            scope = _clean(scope_group.scope.name, 256)
            for item in getattr(scope_group, items):
                row = make_row(item, tenant, service, environment, resource_json, scope,
                               oldest, latest, now_ns, outcome)
                if row is not None:
                    outcome.rows.append(row)
    return outcome


def _valid_id(raw: bytes, size: int) -> bool:
    return len(raw) == size and raw != bytes(size)


def _span_row(span: Any, tenant: str, service: str, environment: str, resource_json: str,
              scope: str, oldest: int, latest: int, now_ns: int, outcome: Outcome
              ) -> tuple[Any, ...] | None:
    if not _valid_id(span.trace_id, 16) or not _valid_id(span.span_id, 8) or \
            (span.parent_span_id and not _valid_id(span.parent_span_id, 8)):
        outcome.reject("trace or span id has the wrong length or is zero")
        return None
    start, end = span.start_time_unix_nano, span.end_time_unix_nano
    if start == 0 or end < start:
        outcome.reject("start time missing or end before start")
        return None
    if start < oldest:
        outcome.reject("older than the retention")
        return None
    if start > latest:
        end, start = now_ns + (end - start), now_ns
        outcome.adjust("spans starting in the future were clamped to the receiver's clock")
    events = [{"name": _clean(e.name, MAX_NAME_CHARS), "time_unix_nano": e.time_unix_nano,
               "attributes": attributes(e.attributes)} for e in span.events[:MAX_EVENTS]]
    links = [{"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex(),
              "attributes": attributes(link.attributes)} for link in span.links[:MAX_LINKS]]
    if len(span.events) > MAX_EVENTS or len(span.links) > MAX_LINKS:
        outcome.adjust("spans had events or links beyond the limit dropped")
    return (span.trace_id, span.span_id, span.parent_span_id or None, _timestamp(start),
            end - start, tenant, service, environment,
            _clean(span.name, MAX_NAME_CHARS) or "unnamed", span.kind, span.status.code,
            _clean(span.status.message, MAX_VALUE_CHARS),
            _json(attributes(span.attributes, outcome)), resource_json, _json(events),
            _json(links), scope)


def log_rows(request: Any, tenant: str, outcome: Outcome, now_ns: int | None = None,
             retention_days: int = DEFAULT_RETENTION_DAYS) -> Outcome:
    """Rows for `logs` from an ExportLogsServiceRequest."""
    return _walk(request.resource_logs, "scope_logs", "log_records", _log_row, tenant, outcome,
                 now_ns, retention_days)


def _log_row(record: Any, tenant: str, service: str, environment: str, resource_json: str,
             scope: str, oldest: int, latest: int, now_ns: int, outcome: Outcome
             ) -> tuple[Any, ...] | None:
    if (record.trace_id and not _valid_id(record.trace_id, 16)) or \
            (record.span_id and not _valid_id(record.span_id, 8)):
        outcome.reject("trace or span id has the wrong length or is zero")
        return None
    when = record.time_unix_nano or record.observed_time_unix_nano or now_ns
    if when < oldest:
        outcome.reject("older than the retention")
        return None
    if when > latest:
        when = now_ns
        outcome.adjust("records dated in the future were clamped to the receiver's clock")
    body = any_value(record.body) if record.HasField("body") else ""
    text = body if isinstance(body, str) else _json(body)
    attrs = _json(attributes(record.attributes, outcome))
    identity = hashlib.sha256(_json([
        tenant, service, environment, resource_json, when, record.severity_number, text,
        record.trace_id.hex(), record.span_id.hex(), attrs]).encode()).digest()[:16]
    observed = record.observed_time_unix_nano
    return (identity, _timestamp(when), _timestamp(observed) if observed else None, tenant,
            service, environment, record.severity_number, _clean(record.severity_text, 32),
            text, record.trace_id or None, record.span_id or None, attrs, resource_json, scope)


# ------------------------------------------------------------------------------- batches


def _csv_field(value: Any) -> Any:
    if value is None:
        return NULL
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    return value


def encode_csv(rows: Iterable[tuple[Any, ...]]) -> bytes:
    """Rows as COPY ... (FORMAT csv, FORCE_NOT_NULL (text columns)) input."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for row in rows:
        writer.writerow([_csv_field(v) for v in row])
    return out.getvalue().encode()


def decode_csv(data: bytes) -> Iterator[list[str]]:
    """The fields of a batch (for the writer's checks of what it copied)."""
    yield from csv.reader(io.StringIO(data.decode()))


def response_body(kind: str, signal: str, outcome: Outcome) -> tuple[bytes, str]:
    """The OTLP Export*ServiceResponse, in the request's encoding."""
    field_name = "rejected_spans" if signal == "traces" else "rejected_log_records"
    if kind == "json":
        partial = {}
        if outcome.rejected or outcome.adjusted:
            partial = {"partialSuccess": {
                "rejectedSpans" if signal == "traces" else "rejectedLogRecords":
                    str(outcome.rejected), "errorMessage": outcome.message()}}
        return json.dumps(partial).encode(), "application/json"
    if signal == "traces":
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceResponse as Response,
        )
    else:
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
            ExportLogsServiceResponse as Response,
        )
    response = Response()
    if outcome.rejected or outcome.adjusted:
        setattr(response.partial_success, field_name, outcome.rejected)
        response.partial_success.error_message = outcome.message()
    return response.SerializeToString(), "application/x-protobuf"
