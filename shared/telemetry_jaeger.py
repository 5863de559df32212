"""The Jaeger query API over the stored spans, with Jaeger's paths and JSON shapes (its
`model/json` structs and the query service's `structuredResponse`), so the Jaeger UI and
Grafana's Jaeger data source read this backend as they read Jaeger.

Spans are mapped as the OpenTelemetry Collector's OTLP-to-Jaeger translator maps them: the
parent is a CHILD_OF reference and links are FOLLOWS_FROM; span kind, status and scope become
the tags `span.kind`, `otel.status_code` (+ `error: true`), `otel.status_description` and
`otel.scope.name`; events become logs (`event` field plus attributes); resource attributes other
than `service.name` are the process tags. Times are microseconds since the epoch.

Errors keep the product's problem+json body and add Jaeger's members (`data`, `total`, `limit`,
`offset`, `errors: [{code, msg}]`), which is what Jaeger clients read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared import errors
from shared.telemetry_params import (
    Window,
    bad,
    from_micros,
    micros,
    parse_duration,
    parse_int,
    parse_jaeger_trace_id,
    parse_lookback,
    parse_tags,
    text_ok,
    window,
)
from shared.telemetry_query import STATUSES, trace_rows

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

DEFAULT_LIMIT = 100  # Jaeger's default number of traces
MAX_LIMIT = 1_500  # the Jaeger UI's largest choice
DEFAULT_LOOKBACK = timedelta(days=2)  # Jaeger's default when `start` is absent
MAX_SEARCH_SPANS = 50_000
MAX_SERVICES = 10_000
MAX_OPERATIONS = 10_000
SCAN_FACTOR = 20  # matching spans scanned per trace asked for
MAX_SCAN = 20_000
JS_MAX_SAFE_INTEGER = 2**53 - 1
SPAN_KIND_TAGS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def _sql(text: str) -> Any:
    import sqlalchemy

    return sqlalchemy.text(text)


def response(data: Any, total: int = 0) -> dict[str, Any]:
    return {"data": data, "total": total, "limit": 0, "offset": 0, "errors": None}


def as_jaeger_error(exc: errors.AppError) -> errors.AppError:
    """The same error with Jaeger's error members added to its body."""
    exc.extra |= {"data": None, "total": 0, "limit": 0, "offset": 0,
                  "errors": [{"code": exc.status, "msg": exc.detail}]}
    return exc


# --- services and operations ---------------------------------------------------------------


def services(conn: Connection, tenant: str | None) -> list[str]:
    """Every service with stored spans: a loose index scan over `spans_service_time` (one
    probe per service and partition, not a scan of every span)."""
    where, params = _tenant(tenant)
    rows = conn.execute(_sql(
        "WITH RECURSIVE s(service) AS ("
        f" (SELECT service FROM spans WHERE true {where} ORDER BY service LIMIT 1)"
        " UNION ALL"
        f" SELECT (SELECT service FROM spans WHERE service > s.service {where}"
        "   ORDER BY service LIMIT 1) FROM s WHERE s.service IS NOT NULL)"
        " SELECT service FROM s WHERE service IS NOT NULL LIMIT :max"),
        params | {"max": MAX_SERVICES}).all()
    return [r[0] for r in rows]


def operations(conn: Connection, service: str, tenant: str | None, span_kind: str | None
               ) -> list[dict[str, str]]:
    """The span names of a service (loose scan of `spans_operation_time`), each with the kind
    of its most recent span; optionally only those of one kind."""
    where, params = _tenant(tenant)
    params |= {"service": text_ok(service, "service"), "max": MAX_OPERATIONS}
    rows = conn.execute(_sql(
        "WITH RECURSIVE o(name) AS ("
        f" (SELECT name FROM spans WHERE service = :service {where} ORDER BY name LIMIT 1)"
        " UNION ALL"
        f" SELECT (SELECT name FROM spans WHERE service = :service AND name > o.name {where}"
        "   ORDER BY name LIMIT 1) FROM o WHERE o.name IS NOT NULL)"
        " SELECT o.name, (SELECT kind FROM spans WHERE service = :service AND name = o.name"
        f"   {where} ORDER BY start_time DESC LIMIT 1)"
        " FROM (SELECT name FROM o WHERE name IS NOT NULL LIMIT :max) o"), params).all()
    found = [{"name": r[0], "spanKind": SPAN_KIND_TAGS.get(r[1], "")} for r in rows]
    if span_kind:
        found = [op for op in found if op["spanKind"] == span_kind]
    return found


def parse_span_kind(value: str | None) -> str | None:
    if not value:
        return None
    if value not in SPAN_KIND_TAGS.values():
        raise bad("spanKind", "must be one of " + ", ".join(SPAN_KIND_TAGS.values()))
    return value


def _tenant(tenant: str | None) -> tuple[str, dict[str, Any]]:
    return ("AND tenant = :tenant", {"tenant": tenant}) if tenant is not None else ("", {})


# --- search --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceQuery:
    service: str | None
    operation: str | None
    tags: dict[str, str]
    window: Window
    min_duration_ns: int | None
    max_duration_ns: int | None
    limit: int
    trace_ids: tuple[bytes, ...]


def parse_query(args: dict[str, str], lists: dict[str, list[str]],
                now: datetime | None = None) -> TraceQuery:
    """`GET /api/traces` parameters, checked as Jaeger's query parser checks them."""
    trace_ids = tuple(parse_jaeger_trace_id(t) for t in lists.get("traceID", []))
    service = args.get("service") or None
    if service is None and not trace_ids:
        raise bad("service", "parameter 'service' is required", "missing_parameter")
    end = from_micros(args["end"], "end") if args.get("end") else None
    start = from_micros(args["start"], "start") if args.get("start") else None
    if start is None:
        lookback = parse_lookback(args.get("lookback", "")) or DEFAULT_LOOKBACK
        try:
            start = (end or now or _now()) - lookback
        except OverflowError:
            raise bad("end", "is out of range", "invalid_time") from None
    if end is not None and start > end:
        raise bad("start", "start is after end", "invalid_range")
    low = parse_duration(args["minDuration"], "minDuration") if args.get("minDuration") \
        else None
    high = parse_duration(args["maxDuration"], "maxDuration") if args.get("maxDuration") \
        else None
    if low and high and high < low:
        raise bad("maxDuration", "'maxDuration' should be greater than 'minDuration'",
                  "invalid_duration")
    limit = parse_int(args.get("limit"), "limit", DEFAULT_LIMIT, 0, 2**31 - 1,
                      "invalid_limit") or DEFAULT_LIMIT
    return TraceQuery(
        service=text_ok(service, "service") if service else None,
        operation=text_ok(args["operation"], "operation") if args.get("operation") else None,
        tags=parse_tags(lists.get("tags", []), lists.get("tag", [])),
        window=window(start, end, DEFAULT_LOOKBACK, clamp=True, now=now),
        min_duration_ns=low or None, max_duration_ns=high or None,
        limit=min(limit, MAX_LIMIT), trace_ids=trace_ids)


def _now() -> datetime:
    from datetime import UTC

    return datetime.now(UTC)


def _tag_clause(index: int, key: str, value: str, params: dict[str, Any]) -> str:
    """Jaeger tags match span attributes or process (resource) tags; the tags this API derives
    from span fields match those fields."""
    params[f"tk{index}"], params[f"tv{index}"] = key, value
    if key == "error":
        return "status_code = 2" if value == "true" else "status_code <> 2"
    if key == "span.kind":
        kinds = [k for k, name in SPAN_KIND_TAGS.items() if name == value]
        return f"kind = {kinds[0]}" if kinds else "false"
    if key == "otel.status_code":
        codes = {"UNSET": 0, "OK": 1, "ERROR": 2}
        return f"status_code = {codes[value]}" if value in codes else "false"
    if key == "otel.status_description":
        return f"status_message = :tv{index}"
    if key in ("otel.scope.name", "otel.library.name"):
        return f"scope = :tv{index}"
    return f"(attributes ->> :tk{index} = :tv{index} OR resource ->> :tk{index} = :tv{index})"


def find_trace_ids(conn: Connection, query: TraceQuery, tenant: str | None) -> list[bytes]:
    """The newest traces with a matching span: the most recent matching spans (bounded scan
    on the service's time index), grouped by trace."""
    clauses = ["start_time >= :from", "start_time < :to"]
    params: dict[str, Any] = {"from": query.window.start, "to": query.window.end,
                              "limit": query.limit,
                              "scan": min(MAX_SCAN, max(1000, query.limit * SCAN_FACTOR))}
    if tenant is not None:
        clauses.append("tenant = :tenant")
        params["tenant"] = tenant
    if query.service is not None:
        clauses.append("service = :service")
        params["service"] = query.service
    if query.operation is not None:
        clauses.append("name = :operation")
        params["operation"] = query.operation
    if query.min_duration_ns is not None:
        clauses.append("duration_ns >= :min_duration")
        params["min_duration"] = query.min_duration_ns
    if query.max_duration_ns is not None:
        clauses.append("duration_ns <= :max_duration")
        params["max_duration"] = query.max_duration_ns
    clauses += [_tag_clause(i, k, v, params) for i, (k, v) in enumerate(query.tags.items())]
    rows = conn.execute(_sql(
        "SELECT trace_id FROM (SELECT trace_id, start_time FROM spans "
        f"WHERE {' AND '.join(clauses)} ORDER BY start_time DESC LIMIT :scan) m "
        "GROUP BY trace_id ORDER BY max(start_time) DESC LIMIT :limit"), params).all()
    return [bytes(r[0]) for r in rows]


def search(conn: Connection, query: TraceQuery, tenant: str | None) -> dict[str, Any]:
    """`GET /api/traces`: whole traces, newest first (or the traces asked for by id)."""
    if query.trace_ids:
        found, missing = [], []
        for trace_id in query.trace_ids:
            rows = trace_rows(conn, trace_id, tenant)
            if rows:
                found.append(to_jaeger(rows))
            else:
                missing.append(trace_id.hex())
        body = response(found)
        if missing:
            body["errors"] = [{"code": 404, "msg": "trace not found", "traceID": t}
                              for t in missing]
        return body
    ids = find_trace_ids(conn, query, tenant)
    if not ids:
        return response([])
    from shared.telemetry_query import SPAN_COLUMNS

    clauses, params = ["trace_id = ANY(:ids)"], {"ids": ids, "limit": MAX_SEARCH_SPANS}
    if tenant is not None:
        clauses.append("tenant = :tenant")
        params["tenant"] = tenant
    found_rows = conn.execute(_sql(
        f"SELECT {SPAN_COLUMNS} FROM spans WHERE {' AND '.join(clauses)} "
        "ORDER BY start_time, span_id LIMIT :limit"), params).all()
    by_trace: dict[str, list[Any]] = {}
    for row in found_rows:
        by_trace.setdefault(row[0], []).append(row)
    return response([to_jaeger(by_trace[t.hex()]) for t in ids if t.hex() in by_trace])


def get_trace(conn: Connection, trace_hex: str, tenant: str | None) -> dict[str, Any]:
    """`GET /api/traces/{traceID}`; 404 in Jaeger's shape when it is unknown."""
    trace_id = parse_jaeger_trace_id(trace_hex)
    rows = trace_rows(conn, trace_id, tenant)
    if not rows:
        raise errors.NotFound("trace not found", code="trace_not_found")
    return response([to_jaeger(rows)])


# --- shapes --------------------------------------------------------------------------------


def key_value(key: str, value: Any) -> dict[str, Any]:
    """A Jaeger KeyValue: string, bool, int64 (as a string beyond JavaScript's safe
    integers, as Jaeger does), float64; arrays and maps as their JSON text."""
    if isinstance(value, bool):
        return {"key": key, "type": "bool", "value": value}
    if isinstance(value, int):
        safe = -JS_MAX_SAFE_INTEGER <= value <= JS_MAX_SAFE_INTEGER
        return {"key": key, "type": "int64", "value": value if safe else str(value)}
    if isinstance(value, float):
        return {"key": key, "type": "float64", "value": value}
    if isinstance(value, str):
        return {"key": key, "type": "string", "value": value}
    return {"key": key, "type": "string",
            "value": json.dumps(value, separators=(",", ":"), ensure_ascii=False)}


def _tags(attributes: Any) -> list[dict[str, Any]]:
    return [key_value(str(k), v) for k, v in (attributes or {}).items()]


def to_jaeger(rows: list[Any]) -> dict[str, Any]:
    """One trace in Jaeger's JSON from span rows (`SPAN_COLUMNS` order)."""
    processes: dict[str, dict[str, Any]] = {}
    process_ids: dict[str, str] = {}
    spans = []
    for row in rows:
        resource = dict(row[13] or {})
        resource.pop("service.name", None)
        identity = json.dumps([row[6], resource], sort_keys=True, default=str)
        if identity not in process_ids:
            process_ids[identity] = f"p{len(process_ids) + 1}"
            processes[process_ids[identity]] = {"serviceName": row[6], "tags": _tags(resource)}
        spans.append(_span(row, process_ids[identity]))
    return {"traceID": rows[0][0], "spans": spans, "processes": processes, "warnings": None}


def _span(row: Any, process_id: str) -> dict[str, Any]:
    trace_hex, span_hex, parent_hex = row[0], row[1], row[2]
    references = []
    if parent_hex:
        references.append({"refType": "CHILD_OF", "traceID": trace_hex, "spanID": parent_hex})
    for link in row[15] or []:
        if isinstance(link, dict) and link.get("trace_id") and link.get("span_id"):
            references.append({"refType": "FOLLOWS_FROM", "traceID": link["trace_id"],
                               "spanID": link["span_id"]})
    tags = _tags(row[12])
    kind, status = row[9], row[10]
    if kind in SPAN_KIND_TAGS:
        tags.append(key_value("span.kind", SPAN_KIND_TAGS[kind]))
    if status in (1, 2):
        tags.append(key_value("otel.status_code", STATUSES[status].upper()))
    if status == 2:
        tags.append(key_value("error", True))
    if row[11]:
        tags.append(key_value("otel.status_description", row[11]))
    if row[16]:
        tags.append(key_value("otel.scope.name", row[16]))
    logs = []
    for event in row[14] or []:
        if not isinstance(event, dict):
            continue
        fields = [key_value("event", str(event.get("name", "")))]
        fields += _tags(event.get("attributes"))
        logs.append({"timestamp": int(event.get("time_unix_nano") or 0) // 1000,
                     "fields": fields})
    return {"traceID": trace_hex, "spanID": span_hex, "operationName": row[8],
            "references": references, "flags": 1, "startTime": micros(row[3]),
            "duration": int(row[4]) // 1000, "tags": tags, "logs": logs,
            "processID": process_id, "warnings": None}



# --- dependencies (the Jaeger UI's System Architecture page) ---------------------------------

DEPENDENCY_LOOKBACK = timedelta(days=1)  # Jaeger's default
MAX_DEPENDENCY_LOOKBACK = timedelta(days=7)
# A parent span starts at most this long before its child, and a child no earlier than a
# minute before its parent (clock skew between services). The bound lets each parent lookup
# use the primary key (trace, span, start time) and touch only the partitions it can be in.
PARENT_LEAD = timedelta(hours=1)
CLOCK_SKEW = timedelta(minutes=1)


@dataclass(frozen=True)
class DependencyQuery:
    end: datetime
    lookback: timedelta
    service: str | None


def parse_dependencies(args: Any, now: datetime) -> DependencyQuery:
    """`endTs` (unix ms, default now), `lookback` (ms, default 24 h) and an optional
    `service`, as Jaeger's query service reads them."""
    from shared.telemetry_jaeger_metrics import end_ts, millis

    lookback = millis(args, "lookback", DEPENDENCY_LOOKBACK)
    if lookback > MAX_DEPENDENCY_LOOKBACK:
        raise bad("lookback", "must be at most 7 days")
    service = args.get("service") or None
    return DependencyQuery(end_ts(args, now), lookback,
                           text_ok(service, "service") if service else None)


def dependencies(conn: Connection, query: DependencyQuery, tenant: str | None
                 ) -> list[dict[str, Any]]:
    """Calls between services: for every span that started in the window and whose parent
    belongs to another service, one call from the parent's service to the child's. Only the
    links touching `service` when it is given (Jaeger's filter)."""
    where = "AND c.tenant = :tenant" if tenant is not None else ""
    params: dict[str, Any] = {"start": query.end - query.lookback, "end": query.end,
                              "lead": PARENT_LEAD.total_seconds(),
                              "skew": CLOCK_SKEW.total_seconds()}
    if tenant is not None:
        params["tenant"] = tenant
    if query.service is not None:
        where += " AND (p.service = :service OR c.service = :service)"
        params["service"] = query.service
    rows = conn.execute(_sql(
        "SELECT p.service, c.service, count(*) FROM spans c JOIN spans p"
        " ON p.trace_id = c.trace_id AND p.span_id = c.parent_span_id AND p.tenant = c.tenant"
        " AND p.start_time BETWEEN c.start_time - make_interval(secs => :lead)"
        " AND c.start_time + make_interval(secs => :skew)"
        # The same bound with constants, so the planner leaves out the days no parent is in.
        " AND p.start_time >= CAST(:start AS timestamptz) - make_interval(secs => :lead)"
        " AND p.start_time <= CAST(:end AS timestamptz) + make_interval(secs => :skew)"
        " WHERE c.start_time >= :start AND c.start_time <= :end"
        f" AND c.parent_span_id IS NOT NULL AND p.service <> c.service {where}"
        " GROUP BY 1, 2 ORDER BY 1, 2"), params).all()
    return [{"parent": r[0], "child": r[1], "callCount": int(r[2])} for r in rows]
