"""Reading stored telemetry (seed 002's query API): a trace with its spans in tree order and its
correlated logs, span search, log search, the services overview, the endpoint ranking of a
service, and its recent slow and failed traces.

Every query is bounded: a time range (defaulted, at most `telemetry_params.MAX_RANGE`, which
also lets PostgreSQL skip whole daily partitions), a row limit, and a statement timeout in a
read-only transaction (`reading`), so no request can hold the database for long. Every query
is restricted to the caller's tenant when the caller is a read token (`Reader.tenant`).

Search pages are keyset-paginated with signed cursors that also carry the page's time range, so
paging through stays stable while new spans arrive (the default range would otherwise slide).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from shared import errors
from shared.pagination import PageRequest, page
from shared.telemetry_params import (
    Window,
    bad,
    iso,
    parse_hex_id,
    parse_int,
    text_ok,
)

if TYPE_CHECKING:
    import flask
    from sqlalchemy.engine import Connection

STATEMENT_TIMEOUT_MS = 10_000
MAX_TRACE_SPANS = 10_000
MAX_TRACE_LOGS = 1_000
TRACE_LOG_MARGIN = timedelta(hours=1)  # logs a little before or after the trace's spans
SPAN_WINDOW = timedelta(hours=1)
LOG_WINDOW = timedelta(minutes=15)
STATS_WINDOW = timedelta(hours=1)
# Request statistics over this long or longer come from the minute rollups (seed 002: rollup
# for the closed past, raw spans for the open tail).
LONG_RANGE = timedelta(hours=6)
KINDS = ("unspecified", "internal", "server", "client", "producer", "consumer")
STATUSES = ("unset", "ok", "error")
LEVELS = {"trace": 1, "debug": 5, "info": 9, "warn": 13, "warning": 13, "error": 17,
          "fatal": 21}
# A request is an entry into a service: a server or consumer span, or a trace's root span.
ENTRY = "(kind IN (2, 5) OR parent_span_id IS NULL)"

SPAN_COLUMNS = ("encode(trace_id, 'hex'), encode(span_id, 'hex'), encode(parent_span_id, 'hex'), "
                "start_time, duration_ns, tenant, service, environment, name, kind, status_code, "
                "status_message, attributes, resource, events, links, scope")
LOG_COLUMNS = ("encode(log_id, 'hex'), time, observed_time, tenant, service, environment, "
               "severity_number, severity_text, body, encode(trace_id, 'hex'), "
               "encode(span_id, 'hex'), attributes, resource, scope")


READ_ROLE = "operator"  # the routes' role; admins pass every role check


@dataclass(frozen=True)
class Reader:
    """Who reads: an operator or admin (every tenant, `tenant` None) or a read token (its
    tenant only). `roles` is what the router's role check reads."""

    subject: str
    roles: frozenset[str]
    tenant: str | None = None


def _sql(text: str) -> Any:
    import sqlalchemy

    return sqlalchemy.text(text)


def authenticate(request: flask.Request) -> Reader:
    """The telemetry_query router's authenticator. A telemetry read token (`tt_` prefix) reads
    its tenant and is given READ_ROLE, which grants nothing here beyond reading (the function
    only reads); any other bearer token is a user's access token, checked as every function
    checks it (operators and admins read every tenant, other users fail the role check)."""
    from shared import auth, db, telemetry_tokens

    token = auth.bearer_token(request)
    if telemetry_tokens.is_telemetry_token(token):
        with db.transaction() as conn:
            found = telemetry_tokens.verify(conn, token, "read")
        return Reader(f"telemetry-token:{found.tenant}", frozenset({READ_ROLE}), found.tenant)
    principal = auth.authenticate(request)
    return Reader(principal.subject, principal.roles)


@contextmanager
def reading(timeout_ms: int = STATEMENT_TIMEOUT_MS) -> Iterator[Connection]:
    """A read-only transaction whose statements are cancelled after `timeout_ms`; a cancelled
    query is 503 `query_timeout` (narrow the range or add filters), not a stuck database."""
    from sqlalchemy.exc import DBAPIError

    from shared import db

    try:
        with db.transaction() as conn:
            # One round trip: SET TRANSACTION READ ONLY and SET LOCAL statement_timeout.
            conn.execute(_sql("SELECT set_config('transaction_read_only', 'on', true), "
                              "set_config('statement_timeout', :ms, true)"),
                         {"ms": str(int(timeout_ms))})
            yield conn
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == "57014":  # query_canceled
            raise errors.ServiceUnavailable(
                "the query took too long; narrow the time range or add filters",
                code="query_timeout", headers={"Retry-After": "1"}) from None
        raise


def tenant_of(reader: Reader, requested: str | None) -> str | None:
    """The tenant to restrict to: a read token's own; an operator's choice (or all)."""
    if reader.tenant is not None:
        if requested not in (None, "", reader.tenant):
            raise errors.Forbidden("this token reads only its own tenant",
                                   code="tenant_forbidden")
        return reader.tenant
    return text_ok(requested, "tenant") if requested is not None else None


def _scoped(clauses: list[str], params: dict[str, Any], tenant: str | None) -> None:
    if tenant is not None:
        clauses.append("tenant = :tenant")
        params["tenant"] = tenant


# --- views ---------------------------------------------------------------------------------


def span_view(row: Any) -> dict[str, Any]:
    return {"traceId": row[0], "spanId": row[1], "parentSpanId": row[2],
            "startTime": iso(row[3]), "durationNs": int(row[4]), "tenant": row[5],
            "service": row[6], "environment": row[7], "name": row[8],
            "kind": KINDS[row[9]] if 0 <= row[9] < len(KINDS) else "unspecified",
            "status": STATUSES[row[10]] if 0 <= row[10] < len(STATUSES) else "unset",
            "statusMessage": row[11], "attributes": row[12], "resource": row[13],
            "events": row[14], "links": row[15], "scope": row[16]}


def log_view(row: Any) -> dict[str, Any]:
    return {"logId": row[0], "time": iso(row[1]),
            "observedTime": iso(row[2]) if row[2] is not None else None, "tenant": row[3],
            "service": row[4], "environment": row[5], "severityNumber": row[6],
            "severityText": row[7], "body": row[8], "traceId": row[9], "spanId": row[10],
            "attributes": row[11], "resource": row[12], "scope": row[13]}


# --- traces --------------------------------------------------------------------------------


def trace_rows(conn: Connection, trace_id: bytes, tenant: str | None,
               limit: int = MAX_TRACE_SPANS) -> list[Any]:
    """A trace's spans, oldest first (at most `limit`): one primary-key probe per partition."""
    clauses, params = ["trace_id = :trace"], {"trace": trace_id, "limit": limit}
    _scoped(clauses, params, tenant)
    return list(conn.execute(_sql(
        f"SELECT {SPAN_COLUMNS} FROM spans WHERE {' AND '.join(clauses)} "
        "ORDER BY start_time, span_id LIMIT :limit"), params).all())


def tree_order(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Spans depth-first from the roots, children by start time, each with its `depth`. A span
    whose parent is not in the trace (not received yet, or dropped) is shown as a root."""
    ids = {s["spanId"] for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in spans:
        parent = span["parentSpanId"] if span["parentSpanId"] in ids else None
        children.setdefault(parent, []).append(span)
    ordered: list[dict[str, Any]] = []
    stack = [(s, 0) for s in reversed(children.get(None, []))]
    seen: set[str] = set()
    while stack:
        span, depth = stack.pop()
        if span["spanId"] in seen:  # a cycle of bad parent ids must not loop forever
            continue
        seen.add(span["spanId"])
        ordered.append(span | {"depth": depth})
        stack.extend((c, depth + 1) for c in reversed(children.get(span["spanId"], [])))
    ordered.extend(s | {"depth": 0} for s in spans if s["spanId"] not in seen)
    return ordered


def trace(conn: Connection, trace_hex: str, tenant: str | None) -> dict[str, Any]:
    """A trace: its spans in tree order and the logs that carry its trace id."""
    trace_id = parse_hex_id(trace_hex, 16, "trace_id")
    rows = trace_rows(conn, trace_id, tenant)
    if not rows:
        raise errors.NotFound("trace not found", code="trace_not_found")
    spans = [span_view(r) for r in rows]
    start = min(r[3] for r in rows)
    end = max(r[3] + timedelta(microseconds=r[4] // 1000) for r in rows)
    clauses = ["trace_id = :trace", "time >= :start", "time < :end"]
    params: dict[str, Any] = {"trace": trace_id, "start": start - TRACE_LOG_MARGIN,
                              "end": end + TRACE_LOG_MARGIN, "limit": MAX_TRACE_LOGS}
    _scoped(clauses, params, tenant)
    logs = conn.execute(_sql(
        f"SELECT {LOG_COLUMNS} FROM logs WHERE {' AND '.join(clauses)} "
        "ORDER BY time, log_id LIMIT :limit"), params).all()
    return {"traceId": trace_id.hex(), "startTime": iso(start),
            "durationNs": (end - start) // timedelta(microseconds=1) * 1000,
            "services": sorted({s["service"] for s in spans}), "spanCount": len(spans),
            "truncated": len(rows) >= MAX_TRACE_SPANS, "spans": tree_order(spans),
            "logs": [log_view(r) for r in logs]}


# --- span search ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SpanFilters:
    service: str | None = None
    environment: str | None = None
    name: str | None = None
    kind: int | None = None
    status: int | None = None
    min_duration_ns: int | None = None
    max_duration_ns: int | None = None
    trace_id: bytes | None = None
    parent_id: bytes | None = None
    root_only: bool = False


def span_filters(args: dict[str, str]) -> SpanFilters:
    """Span search filters from query parameters (400 naming the parameter)."""
    from shared.telemetry_params import parse_duration

    def text(name: str) -> str | None:
        value = args.get(name)
        return text_ok(value, name) if value else None

    kind = args.get("kind")
    if kind and kind not in KINDS:
        raise bad("kind", "must be one of " + ", ".join(KINDS))
    status = args.get("status")
    if status and status not in STATUSES:
        raise bad("status", "must be one of " + ", ".join(STATUSES))
    low = parse_duration(args["min_duration"], "min_duration") if args.get("min_duration") \
        else None
    high = parse_duration(args["max_duration"], "max_duration") if args.get("max_duration") \
        else None
    if low is not None and high is not None and high < low:
        raise bad("max_duration", "must not be less than min_duration", "invalid_duration")
    parent = args.get("parent_id")
    return SpanFilters(
        service=text("service"), environment=text("environment"), name=text("name"),
        kind=KINDS.index(kind) if kind else None,
        status=STATUSES.index(status) if status else None,
        min_duration_ns=low, max_duration_ns=high,
        trace_id=parse_hex_id(args["trace_id"], 16, "trace_id") if args.get("trace_id")
        else None,
        parent_id=parse_hex_id(parent, 8, "parent_id") if parent and parent != "root"
        else None,
        root_only=parent == "root")


SPAN_SORTS = {"start_time": "start_time", "duration": "duration_ns"}


def span_page(conn: Connection, filters: SpanFilters, span_window: Window, tenant: str | None,
              request: PageRequest, secret: str, sort: str, order: str) -> dict[str, Any]:
    """One page of spans matching `filters` in `span_window`, sorted by start time or
    duration, ascending or descending; ties broken by (trace id, span id)."""
    column = SPAN_SORTS[sort]
    clauses = ["start_time >= :from", "start_time < :to"]
    params: dict[str, Any] = {"from": span_window.start, "to": span_window.end,
                              "limit": request.limit + 1}
    _scoped(clauses, params, tenant)
    for name, column_name in (("service", "service"), ("environment", "environment"),
                              ("name", "name"), ("kind", "kind"), ("status", "status_code"),
                              ("trace_id", "trace_id"), ("parent_id", "parent_span_id")):
        value = getattr(filters, name)
        if value is not None:
            clauses.append(f"{column_name} = :{name}")
            params[name] = value
    if filters.root_only:
        clauses.append("parent_span_id IS NULL")
    if filters.min_duration_ns is not None:
        clauses.append("duration_ns >= :min_duration")
        params["min_duration"] = filters.min_duration_ns
    if filters.max_duration_ns is not None:
        clauses.append("duration_ns <= :max_duration")
        params["max_duration"] = filters.max_duration_ns
    direction, compare = ("DESC", "<") if order == "desc" else ("ASC", ">")
    if request.position:
        key_type = "timestamptz" if sort == "start_time" else "bigint"
        clauses.append(f"({column}, trace_id, span_id) {compare} (CAST(:k AS {key_type}), "
                       "decode(:kt, 'hex'), decode(:ks, 'hex'))")
        params |= {"k": str(request.position.get("k")),
                   "kt": _hex(request.position.get("t")), "ks": _hex(request.position.get("s"))}
    rows = conn.execute(_sql(
        f"SELECT {SPAN_COLUMNS} FROM spans WHERE {' AND '.join(clauses)} "
        f"ORDER BY {column} {direction}, trace_id {direction}, span_id {direction} "
        "LIMIT :limit"), params).all()
    key_field = "startTime" if sort == "start_time" else "durationNs"
    return page([span_view(r) for r in rows], request, secret,
                key=lambda s: {"k": s[key_field], "t": s["traceId"], "s": s["spanId"]}
                | span_window.position())


def _hex(value: Any) -> str:
    text = str(value or "")
    if not text or len(text) > 64 or any(c not in "0123456789abcdef" for c in text):
        raise errors.BadRequest("cursor is invalid or expired", code="invalid_cursor")
    return text


# --- log search ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LogFilters:
    service: str | None = None
    environment: str | None = None
    min_severity: int | None = None
    trace_id: bytes | None = None
    span_id: bytes | None = None
    text: str | None = None


def log_filters(args: dict[str, str]) -> LogFilters:
    level = (args.get("level") or "").strip().lower()
    severity: int | None = None
    if level:
        severity = LEVELS.get(level)
        if severity is None:
            severity = parse_int(level, "level", 0, 1, 24) if level.isdigit() else None
        if severity is None:
            raise bad("level", "must be trace, debug, info, warn, error, fatal or 1-24")
    return LogFilters(
        service=text_ok(args["service"], "service") if args.get("service") else None,
        environment=text_ok(args["environment"], "environment") if args.get("environment")
        else None,
        min_severity=severity,
        trace_id=parse_hex_id(args["trace_id"], 16, "trace_id") if args.get("trace_id")
        else None,
        span_id=parse_hex_id(args["span_id"], 8, "span_id") if args.get("span_id") else None,
        text=text_ok(args["q"], "q") if args.get("q", "").strip() else None)


def log_page(conn: Connection, filters: LogFilters, log_window: Window, tenant: str | None,
             request: PageRequest, secret: str) -> dict[str, Any]:
    """One page of log records, newest first. Message search is full text on `body` (the
    `logs_body` GIN index): every word of `q` must appear."""
    clauses = ["time >= :from", "time < :to"]
    params: dict[str, Any] = {"from": log_window.start, "to": log_window.end,
                              "limit": request.limit + 1}
    _scoped(clauses, params, tenant)
    for name in ("service", "environment", "trace_id", "span_id"):
        value = getattr(filters, name)
        if value is not None:
            clauses.append(f"{name} = :{name}")
            params[name] = value
    if filters.min_severity is not None:
        clauses.append("severity_number >= :severity")
        params["severity"] = filters.min_severity
    if filters.text is not None:
        clauses.append("to_tsvector('simple', body) @@ plainto_tsquery('simple', :q)")
        params["q"] = filters.text
    if request.position:
        clauses.append("(time, log_id) < (CAST(:k AS timestamptz), decode(:kid, 'hex'))")
        params |= {"k": str(request.position.get("k")), "kid": _hex(request.position.get("id"))}
    rows = conn.execute(_sql(
        f"SELECT {LOG_COLUMNS} FROM logs WHERE {' AND '.join(clauses)} "
        "ORDER BY time DESC, log_id DESC LIMIT :limit"), params).all()
    return page([log_view(r) for r in rows], request, secret,
                key=lambda g: {"k": g["time"], "id": g["logId"]} | log_window.position())


# --- request statistics --------------------------------------------------------------------


def request_stats(conn: Connection, stats_window: Window, tenant: str | None, *,
                  group: str, service: str | None = None) -> list[dict[str, Any]]:
    """Requests, errors, error rate and latency percentiles of entry spans in the window,
    grouped by service or by endpoint (span name) of one service.

    The one place these numbers are computed. Ranges of `LONG_RANGE` or more are answered from
    the minute rollups (their merged sketches, 1% relative accuracy; the range widened to whole
    minutes) and the raw tail the rollup has not reached; shorter ones from raw spans with
    `percentile_cont`."""
    if stats_window.end - stats_window.start >= LONG_RANGE:
        return _stats_from_rollups(conn, stats_window, tenant, group, service)
    column = {"service": "service", "endpoint": "name"}[group]
    clauses = [ENTRY, "start_time >= :from", "start_time < :to"]
    params: dict[str, Any] = {"from": stats_window.start, "to": stats_window.end}
    _scoped(clauses, params, tenant)
    if service is not None:
        clauses.append("service = :service")
        params["service"] = service
    rows = conn.execute(_sql(
        f"SELECT {column}, count(*), count(*) FILTER (WHERE status_code = 2), "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ns), "
        "percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ns), "
        "percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ns) "
        f"FROM spans WHERE {' AND '.join(clauses)} GROUP BY {column}"), params).all()
    return [{"name": r[0], "requests": int(r[1]), "errors": int(r[2]),
             "errorRate": round(int(r[2]) / int(r[1]), 6) if r[1] else 0.0,
             "p50Ms": round(float(r[3]) / 1e6, 3), "p95Ms": round(float(r[4]) / 1e6, 3),
             "p99Ms": round(float(r[5]) / 1e6, 3)} for r in rows]


def _stats_from_rollups(conn: Connection, stats_window: Window, tenant: str | None,
                        group: str, service: str | None) -> list[dict[str, Any]]:
    from shared.rollup import floor_minute
    from shared.telemetry_metrics import ceil_minute, totals

    found = totals(conn, floor_minute(stats_window.start), ceil_minute(stats_window.end),
                   tenant, group, service)

    def ms(value: float | None) -> float:
        return round((value or 0.0) / 1e6, 3)

    return [{"name": name, "requests": t.requests, "errors": t.errors,
             "errorRate": round(t.errors / t.requests, 6) if t.requests else 0.0,
             "p50Ms": ms(t.sketch.quantile(0.5)), "p95Ms": ms(t.sketch.quantile(0.95)),
             "p99Ms": ms(t.sketch.quantile(0.99))} for name, t in found.items() if t.requests]


def services_overview(conn: Connection, stats_window: Window, tenant: str | None
                      ) -> dict[str, Any]:
    stats = request_stats(conn, stats_window, tenant, group="service")
    items = [{"service": s.pop("name")} | s for s in sorted(stats, key=lambda s: s["name"])]
    return {"from": iso(stats_window.start), "to": iso(stats_window.end), "items": items}


ENDPOINT_SORTS = {"requests": "requests", "p95": "p95Ms", "p99": "p99Ms",
                  "error_rate": "errorRate", "errors": "errors"}


def endpoints(conn: Connection, service: str, stats_window: Window, tenant: str | None,
              sort: str, order: str, limit: int) -> dict[str, Any]:
    """A service's endpoints ranked by requests, p95, p99, errors or error rate."""
    stats = request_stats(conn, stats_window, tenant, group="endpoint", service=service)
    key = ENDPOINT_SORTS[sort]
    stats.sort(key=lambda s: (s[key], s["name"]), reverse=order == "desc")
    items = [{"endpoint": s.pop("name")} | s for s in stats[:limit]]
    return {"service": service, "from": iso(stats_window.start), "to": iso(stats_window.end),
            "sort": sort, "order": order, "items": items}


def endpoint_traces(conn: Connection, service: str, endpoint: str | None, which: str,
                    stats_window: Window, tenant: str | None, limit: int) -> dict[str, Any]:
    """A service's (or one endpoint's) slowest requests, or its most recent failed ones."""
    clauses = [ENTRY, "service = :service", "start_time >= :from", "start_time < :to"]
    params: dict[str, Any] = {"service": service, "from": stats_window.start,
                              "to": stats_window.end, "limit": limit}
    _scoped(clauses, params, tenant)
    if endpoint is not None:
        clauses.append("name = :endpoint")
        params["endpoint"] = endpoint
    if which == "failed":
        clauses.append("status_code = 2")
        order = "start_time DESC, duration_ns DESC"
    else:
        order = "duration_ns DESC, start_time DESC"
    rows = conn.execute(_sql(
        f"SELECT {SPAN_COLUMNS} FROM spans WHERE {' AND '.join(clauses)} "
        f"ORDER BY {order} LIMIT :limit"), params).all()
    items = [{key: view[key] for key in ("traceId", "spanId", "name", "startTime",
                                          "durationNs", "status", "statusMessage")}
             for view in map(span_view, rows)]
    return {"service": service, "endpoint": endpoint, "kind": which,
            "from": iso(stats_window.start), "to": iso(stats_window.end), "items": items}
