"""telemetry_query: read stored spans and logs. The Jaeger query API (`/api/...`, Jaeger's paths
and JSON, for the Jaeger UI and Grafana's Jaeger data source) and the native API (`/v1/...`:
traces with their logs, span and log search, services overview, endpoint ranking, request
metrics over time, slow and failed traces). Readable by operators and admins (JWT) or a
telemetry read token (`tt_...`, its tenant only)."""

from __future__ import annotations

import functools
from typing import Any

import flask
import functions_framework

from shared import errors
from shared.bootstrap import init
from shared.http import Call, Handler, Router
from shared.telemetry_query import READ_ROLE, authenticate

settings = init()
CURSOR_SECRET = settings.require_cursor_secret()
app = Router("telemetry_query", authenticate=authenticate, rate_limited=True)


def jaeger_errors(handler: Handler) -> Handler:
    """Bad parameters and unknown traces answer with Jaeger's error members too."""

    @functools.wraps(handler)
    def wrapped(call: Call) -> Any:
        from shared.telemetry_jaeger import as_jaeger_error

        try:
            return handler(call)
        except (errors.BadRequest, errors.NotFound, errors.Forbidden) as exc:
            raise as_jaeger_error(exc) from None

    return wrapped


def _tenant(call: Call) -> str | None:
    from shared.telemetry_query import tenant_of

    return tenant_of(call.principal, call.request.args.get("tenant"))


# --- Jaeger query API ----------------------------------------------------------------------


@app.route("GET", "/api/services", role=READ_ROLE, summary="Jaeger: list services")
@jaeger_errors
def jaeger_services(call: Call) -> dict[str, Any]:
    from shared import telemetry_jaeger as jaeger
    from shared.telemetry_query import reading

    tenant = _tenant(call)
    with reading() as conn:
        found = jaeger.services(conn, tenant)
    return jaeger.response(found, len(found))


@app.route("GET", "/api/services/{service}/operations", role=READ_ROLE,
           summary="Jaeger: list a service's operations (names)")
@jaeger_errors
def jaeger_service_operations(call: Call) -> dict[str, Any]:
    from shared import telemetry_jaeger as jaeger
    from shared.telemetry_query import reading

    tenant = _tenant(call)
    with reading() as conn:
        names = sorted({op["name"] for op in jaeger.operations(
            conn, call.params["service"], tenant, None)})
    return jaeger.response(names, len(names))


@app.route("GET", "/api/operations", role=READ_ROLE,
           summary="Jaeger: list a service's operations with their span kind")
@jaeger_errors
def jaeger_operations(call: Call) -> dict[str, Any]:
    from shared import telemetry_jaeger as jaeger
    from shared.telemetry_params import bad
    from shared.telemetry_query import reading

    service = call.request.args.get("service")
    if not service:
        raise bad("service", "parameter 'service' is required", "missing_parameter")
    kind = jaeger.parse_span_kind(call.request.args.get("spanKind"))
    tenant = _tenant(call)
    with reading() as conn:
        found = jaeger.operations(conn, service, tenant, kind)
    return jaeger.response(found, len(found))


@app.route("GET", "/api/traces", role=READ_ROLE, summary="Jaeger: search traces")
@jaeger_errors
def jaeger_search(call: Call) -> dict[str, Any]:
    from shared import telemetry_jaeger as jaeger
    from shared.telemetry_query import reading

    args = call.request.args
    query = jaeger.parse_query(call.args, {k: args.getlist(k) for k in ("traceID", "tags", "tag")})
    tenant = _tenant(call)
    with reading() as conn:
        return jaeger.search(conn, query, tenant)


@app.route("GET", "/api/traces/{trace_id}", role=READ_ROLE, summary="Jaeger: get a trace")
@jaeger_errors
def jaeger_trace(call: Call) -> dict[str, Any]:
    from shared import telemetry_jaeger as jaeger
    from shared.telemetry_query import reading

    tenant = _tenant(call)
    with reading() as conn:
        return jaeger.get_trace(conn, call.params["trace_id"], tenant)


@app.route("GET", "/api/dependencies", role=READ_ROLE,
           summary="Jaeger: calls between services (System Architecture)")
@jaeger_errors
def jaeger_dependencies(call: Call) -> dict[str, Any]:
    from datetime import UTC, datetime

    from shared import telemetry_jaeger as jaeger
    from shared.telemetry_query import reading

    query = jaeger.parse_dependencies(call.request.args, datetime.now(UTC))
    tenant = _tenant(call)
    with reading() as conn:
        links = jaeger.dependencies(conn, query, tenant)
    return jaeger.response(links, len(links))


# --- Jaeger monitor tab (SPM) ----------------------------------------------------------------


@app.route("GET", "/api/metrics/latencies", role=READ_ROLE,
           summary="Jaeger monitor: latency quantile per service (or operation)")
@jaeger_errors
def jaeger_latencies(call: Call) -> dict[str, Any]:
    return _jaeger_metrics(call, "latencies")


@app.route("GET", "/api/metrics/calls", role=READ_ROLE,
           summary="Jaeger monitor: calls per second per service (or operation)")
@jaeger_errors
def jaeger_calls(call: Call) -> dict[str, Any]:
    return _jaeger_metrics(call, "calls")


@app.route("GET", "/api/metrics/errors", role=READ_ROLE,
           summary="Jaeger monitor: error rate per service (or operation)")
@jaeger_errors
def jaeger_errors_rate(call: Call) -> dict[str, Any]:
    return _jaeger_metrics(call, "errors")


@app.route("GET", "/api/metrics/minstep", role=READ_ROLE,
           summary="Jaeger monitor: the smallest step, in milliseconds")
def jaeger_minstep(call: Call) -> dict[str, Any]:
    from shared import telemetry_jaeger as jaeger
    from shared.telemetry_jaeger_metrics import MIN_STEP

    return jaeger.response(int(MIN_STEP.total_seconds() * 1000))


def _jaeger_metrics(call: Call, metric: str) -> dict[str, Any]:
    from datetime import UTC, datetime

    from shared import telemetry_jaeger_metrics as spm
    from shared.telemetry_query import reading

    query = spm.parse(call.request.args, datetime.now(UTC), metric == "latencies")
    tenant = _tenant(call)
    with reading() as conn:
        return spm.family(conn, query, metric, tenant)


# --- native API ----------------------------------------------------------------------------


@app.route("GET", "/v1/traces/{trace_id}", role=READ_ROLE,
           summary="A trace: spans in tree order and correlated logs")
def trace(call: Call) -> dict[str, Any]:
    from shared import telemetry_query as tq

    tenant = _tenant(call)
    with tq.reading() as conn:
        return tq.trace(conn, call.params["trace_id"], tenant)


@app.route("GET", "/v1/spans", role=READ_ROLE, summary="Search spans")
def spans(call: Call) -> dict[str, Any]:
    from shared import telemetry_query as tq
    from shared.telemetry_params import bad

    args = call.args
    sort, order = args.get("sort", "start_time"), args.get("order", "desc")
    if sort not in tq.SPAN_SORTS:
        raise bad("sort", "must be start_time or duration", "invalid_sort")
    if order not in ("asc", "desc"):
        raise bad("order", "must be asc or desc", "invalid_sort")
    filters = tq.span_filters(args)
    request, span_window = _page(args, f"telemetry.spans.{sort}.{order}", tq.SPAN_WINDOW)
    tenant = _tenant(call)
    with tq.reading() as conn:
        return tq.span_page(conn, filters, span_window, tenant, request, CURSOR_SECRET, sort,
                            order)


@app.route("GET", "/v1/logs", role=READ_ROLE, summary="Search logs")
def logs(call: Call) -> dict[str, Any]:
    from shared import telemetry_query as tq

    args = call.args
    filters = tq.log_filters(args)
    request, log_window = _page(args, "telemetry.logs", tq.LOG_WINDOW)
    tenant = _tenant(call)
    with tq.reading() as conn:
        return tq.log_page(conn, filters, log_window, tenant, request, CURSOR_SECRET)


@app.route("GET", "/v1/services", role=READ_ROLE,
           summary="Services overview: requests, latency and error rate")
def services(call: Call) -> dict[str, Any]:
    from shared import telemetry_query as tq

    stats_window = _window(call.args, tq.STATS_WINDOW)
    tenant = _tenant(call)
    with tq.reading() as conn:
        return tq.services_overview(conn, stats_window, tenant)


@app.route("GET", "/v1/services/{service}/endpoints", role=READ_ROLE,
           summary="Rank a service's endpoints")
def endpoints(call: Call) -> dict[str, Any]:
    from shared import telemetry_query as tq
    from shared.telemetry_params import bad, parse_int, text_ok

    args = call.args
    sort, order = args.get("sort", "requests"), args.get("order", "desc")
    if sort not in tq.ENDPOINT_SORTS:
        raise bad("sort", "must be one of " + ", ".join(tq.ENDPOINT_SORTS), "invalid_sort")
    if order not in ("asc", "desc"):
        raise bad("order", "must be asc or desc", "invalid_sort")
    limit = parse_int(args.get("limit"), "limit", 20, 1, 100, "invalid_limit")
    service = text_ok(call.params["service"], "service")
    stats_window = _window(args, tq.STATS_WINDOW)
    tenant = _tenant(call)
    with tq.reading() as conn:
        return tq.endpoints(conn, service, stats_window, tenant, sort, order, limit)


@app.route("GET", "/v1/services/{service}/metrics", role=READ_ROLE,
           summary="A service's request metrics over time")
def service_metrics(call: Call) -> dict[str, Any]:
    from shared import telemetry_metrics as tm
    from shared import telemetry_query as tq
    from shared.telemetry_params import text_ok

    args = call.args
    service = text_ok(call.params["service"], "service")
    operation = text_ok(args["operation"], "operation") if args.get("operation") else None
    step = tm.parse_step(args.get("step"))
    metrics_window = _window(args, tq.STATS_WINDOW)
    tenant = _tenant(call)
    with tq.reading() as conn:
        return tm.service_metrics(conn, service, metrics_window, step, tenant, operation)


@app.route("GET", "/v1/services/{service}/traces", role=READ_ROLE,
           summary="A service's slowest or recent failed requests")
def endpoint_traces(call: Call) -> dict[str, Any]:
    from shared import telemetry_query as tq
    from shared.telemetry_params import bad, parse_int, text_ok

    args = call.args
    which = args.get("kind", "slow")
    if which not in ("slow", "failed"):
        raise bad("kind", "must be slow or failed")
    endpoint = text_ok(args["endpoint"], "endpoint") if args.get("endpoint") else None
    limit = parse_int(args.get("limit"), "limit", 20, 1, 100, "invalid_limit")
    service = text_ok(call.params["service"], "service")
    stats_window = _window(args, tq.STATS_WINDOW)
    tenant = _tenant(call)
    with tq.reading() as conn:
        return tq.endpoint_traces(conn, service, endpoint, which, stats_window, tenant, limit)


def _window(args: dict[str, str], default: Any) -> Any:
    from shared.telemetry_params import parse_rfc3339, window

    start = parse_rfc3339(args["from"], "from") if args.get("from") else None
    end = parse_rfc3339(args["to"], "to") if args.get("to") else None
    return window(start, end, default)


def _page(args: dict[str, str], scope: str, default: Any) -> tuple[Any, Any]:
    """The page asked for and its time range: the first page's range, kept by its cursors."""
    from shared.pagination import page_request
    from shared.telemetry_params import window_from_position

    request = page_request(args, CURSOR_SECRET, scope)
    if request.position is not None:
        return request, window_from_position(request.position)
    return request, _window(args, default)


@functions_framework.http
def telemetry_query(request: flask.Request) -> flask.Response:
    return app(request)
