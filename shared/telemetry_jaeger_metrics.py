"""Jaeger's monitor tab (Service Performance Monitoring): `GET /api/metrics/latencies`,
`/calls`, `/errors` and `/minstep`, with Jaeger's parameters and JSON, computed from the minute
rollups and the raw tail (`shared.telemetry_metrics.minutes`).

Parameters as Jaeger's query service reads them: `service` (repeatable, required), `endTs`
(unix ms, default now), `lookback`, `step` and `ratePer` (ms; defaults 1 h, 5 s, 10 min),
`quantile` (latencies only), `groupByOperation`, `spanKind` (repeatable `SPAN_KIND_*`, default
`SPAN_KIND_SERVER`). Like Prometheus' `rate(...[ratePer])`, which Jaeger's own metrics store runs,
each point looks back `ratePer` from its time: calls per second over that window, the fraction
of them that failed, and the quantile of their merged latency sketch, in milliseconds.

Our unit is the minute: steps below a minute are raised to one (`minstep` answers 60000), and
the metrics are of requests (server and consumer spans, and roots), so span kinds other than
server and consumer have no series.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared import errors
from shared.rollup import MINUTE, floor_minute
from shared.sketch import LatencySketch

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from shared.rollup import MinuteRollup

SPAN_KINDS = ("SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER",
              "SPAN_KIND_CLIENT", "SPAN_KIND_PRODUCER", "SPAN_KIND_CONSUMER")
REQUEST_KINDS = frozenset({"SPAN_KIND_SERVER", "SPAN_KIND_CONSUMER"})
DEFAULT_LOOKBACK = timedelta(hours=1)
DEFAULT_RATE_PER = timedelta(minutes=10)
MIN_STEP = MINUTE
MAX_LOOKBACK = timedelta(days=7)
MAX_RATE_PER = timedelta(days=1)
MAX_POINTS = 1_440
MAX_SERVICES = 50


@dataclass(frozen=True)
class MetricsQuery:
    services: list[str]
    end: datetime
    lookback: timedelta
    step: timedelta
    rate_per: timedelta
    group_by_operation: bool
    requests_only: bool  # False when no requested span kind is a request kind: no series
    quantile: float | None = None


def _bad(param: str, why: str) -> errors.BadRequest:
    return errors.BadRequest(f"unable to parse param '{param}': {why}", code="invalid_parameter",
                             parameter=param)


def millis(args: Any, name: str, default: timedelta) -> timedelta:
    """A positive whole number of milliseconds (Jaeger's `lookback`, `step`, `ratePer`)."""
    raw = args.get(name)
    if raw in (None, ""):
        return default
    if not raw.isascii() or not raw.lstrip("-").isdigit() or len(raw) > 15:
        raise _bad(name, "must be a whole number of milliseconds")
    value = int(raw)
    if value <= 0:
        raise _bad(name, "must be positive")
    return timedelta(milliseconds=value)


def end_ts(args: Any, now: datetime) -> datetime:
    """Jaeger's `endTs`: unix milliseconds, now when absent."""
    raw = args.get("endTs")
    if not raw:
        return now
    if not raw.isascii() or not raw.isdigit() or len(raw) > 15:
        raise _bad("endTs", "must be unix milliseconds")
    return datetime.fromtimestamp(int(raw) / 1000, UTC)


def parse(args: Any, now: datetime, latencies: bool) -> MetricsQuery:
    """The query from request args (a MultiDict: `service` and `spanKind` repeat)."""
    services = [s for s in args.getlist("service") if s]
    if not services:
        raise _bad("service", "please provide at least one service name")
    if len(services) > MAX_SERVICES or any(len(s) > 256 or "\x00" in s for s in services):
        raise _bad("service", f"at most {MAX_SERVICES} names of at most 256 characters")
    kinds = args.getlist("spanKind") or ["SPAN_KIND_SERVER"]
    unknown = [k for k in kinds if k not in SPAN_KINDS]
    if unknown:
        raise _bad("spanKind", f"unsupported span kind: '{unknown[0]}'")
    group = (args.get("groupByOperation") or "false").lower()
    if group not in ("true", "false", "1", "0", "t", "f"):
        raise _bad("groupByOperation", "must be true or false")
    end = end_ts(args, now)
    lookback = millis(args, "lookback", DEFAULT_LOOKBACK)
    if lookback > MAX_LOOKBACK:
        raise _bad("lookback", "must be at most 7 days")
    step = max(millis(args, "step", MIN_STEP), MIN_STEP)
    step = timedelta(minutes=-(-step // MINUTE))  # whole minutes
    if lookback / step > MAX_POINTS:
        raise _bad("step", f"gives more than {MAX_POINTS} points for this lookback")
    rate_per = millis(args, "ratePer", DEFAULT_RATE_PER)
    if rate_per > MAX_RATE_PER:
        raise _bad("ratePer", "must be at most a day")
    quantile = None
    if latencies:
        raw = args.get("quantile")
        try:
            quantile = float(raw) if raw is not None else None
        except ValueError:
            quantile = None
        if quantile is None or not 0 < quantile < 1:
            raise _bad("quantile", "must be a number between 0 and 1")
    return MetricsQuery(services, end, lookback, step, max(rate_per, MINUTE),
                        group in ("true", "1", "t"), bool(set(kinds) & REQUEST_KINDS), quantile)


def _point_times(query: MetricsQuery) -> list[datetime]:
    """Point times, newest at endTs' minute, one step apart, over the lookback."""
    last = floor_minute(query.end)
    count = max(1, int(query.lookback / query.step))
    return [last - query.step * i for i in reversed(range(count))]


def family(conn: Connection, query: MetricsQuery, metric: str, tenant: str | None
           ) -> dict[str, Any]:
    """One MetricFamily (Jaeger's `metrics.MetricFamily` as JSON) of `metric`: latencies,
    calls or errors."""
    from shared.telemetry_metrics import minutes

    times = _point_times(query)
    window = max(query.rate_per, MINUTE)
    start, end = times[0] - window + MINUTE, times[-1] + MINUTE
    found: dict[tuple[datetime, str, str], MinuteRollup] = {}
    if query.requests_only:
        found, _ = minutes(conn, query.services, start, end, tenant)
    series: dict[tuple[str, str | None], dict[datetime, MinuteRollup]] = {}
    for (minute, service, operation), rollup in found.items():
        key = (service, operation if query.group_by_operation else None)
        by_minute = series.setdefault(key, {})
        merged = by_minute.get(minute)
        if merged is None:
            by_minute[minute] = rollup
        else:
            merged.requests += rollup.requests
            merged.errors += rollup.errors
            merged.sketch.merge(rollup.sketch)
    metrics = [_metric(service, operation, by_minute, times, window, metric, query)
               for (service, operation), by_minute in sorted(
                   series.items(), key=lambda item: (item[0][0], item[0][1] or ""))]
    return {"name": _name(metric, query.group_by_operation), "type": "GAUGE",
            "help": _help(metric, query), "metrics": metrics}


def _metric(service: str, operation: str | None, by_minute: dict[datetime, MinuteRollup],
            times: list[datetime], window: timedelta, metric: str, query: MetricsQuery
            ) -> dict[str, Any]:
    labels = [{"name": "service_name", "value": service}]
    if operation is not None:
        labels.append({"name": "operation", "value": operation})
    minutes_back = int(window / MINUTE)
    points = []
    for moment in times:
        window_minutes = [by_minute[m] for i in range(minutes_back)
                          if (m := moment - MINUTE * i) in by_minute]
        requests = sum(r.requests for r in window_minutes)
        value: float | None
        if metric == "calls":
            value = requests / window.total_seconds()
        elif metric == "errors":
            value = sum(r.errors for r in window_minutes) / requests if requests else None
        else:
            sketch = LatencySketch()
            for rollup in window_minutes:
                sketch.merge(rollup.sketch)
            nanos = sketch.quantile(query.quantile or 0.95)
            value = nanos / 1e6 if nanos is not None else None
        if value is None:
            continue  # Prometheus has no sample there either: the UI draws a gap
        points.append({"gaugeValue": {"doubleValue": round(value, 6)},
                       "timestamp": moment.strftime("%Y-%m-%dT%H:%M:%SZ")})
    return {"labels": labels, "metricPoints": points}


def _name(metric: str, by_operation: bool) -> str:
    suffix = {"latencies": "latencies", "calls": "call_rate", "errors": "error_rate"}[metric]
    return f"service_operation_{suffix}" if by_operation else f"service_{suffix}"


def _help(metric: str, query: MetricsQuery) -> str:
    group = "service & operation" if query.group_by_operation else "service"
    if metric == "latencies":
        return f"{query.quantile}th quantile latency, grouped by {group}"
    if metric == "calls":
        return f"calls/sec, grouped by {group}"
    return f"error rate, computed as a fraction of errors/sec over calls/sec, grouped by {group}"
