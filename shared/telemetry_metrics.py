"""Request metrics of a service as a time series (seed 002): per step, requests, rate, errors,
error rate and p50/p90/p95/p99 latency.

Closed minutes come from the minute rollups (`shared.rollup`), merging their latency sketches
across the step: percentiles of a step are the merged sketch's, never an average of per-minute
percentiles. The minutes the rollup has not covered yet (the open minute and any closed minute
after `rollup_state`) are computed from raw spans the same way, and both are merged into one
answer. Steps are whole minutes; the range is widened to whole minutes (`from` rounded down,
`to` rounded up). A step's rate is its requests over the step's length (so the open step's rate
counts the requests so far). Minutes before the rollup's first run (which backfills three hours)
have no rollups and count as no traffic.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.rollup import (
    HOUR,
    HOURLY_STATE,
    MINUTE,
    STATE,
    MinuteRollup,
    compute,
    floor_hour,
    floor_minute,
)
from shared.sketch import LatencySketch
from shared.telemetry_params import Window, bad, iso

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

MAX_POINTS = 1_440
MAX_STEP = timedelta(days=1)
# With no step asked for: the smallest of these giving at most DEFAULT_POINTS points.
DEFAULT_POINTS = 300
STEPS = tuple(timedelta(minutes=m) for m in (1, 5, 15, 30, 60, 180, 360, 720, 1440))
_STEP = re.compile(r"^(\d{1,6})([smhd]?)$")
_STEP_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
QUANTILES = {"p50Ms": 0.5, "p90Ms": 0.9, "p95Ms": 0.95, "p99Ms": 0.99}


def _sql(text: str) -> Any:
    import sqlalchemy

    return sqlalchemy.text(text)


def ceil_minute(moment: datetime) -> datetime:
    floor = floor_minute(moment)
    return floor if floor == moment else floor + MINUTE


def parse_step(text: str | None) -> timedelta | None:
    """`step`: seconds, or a number with a unit (`90s`, `5m`, `1h`, `1d`); None if absent."""
    if not text:
        return None
    match = _STEP.match(text.strip())
    if not match:
        raise bad("step", "must be seconds or a number with s, m, h or d (5m, 1h)",
                  "invalid_step")
    return timedelta(seconds=int(match.group(1)) * _STEP_UNITS[match.group(2) or "s"])


def choose_step(span: timedelta, step: timedelta | None) -> timedelta:
    """The step asked for (whole minutes, at most a day, at most MAX_POINTS points), or the
    default for the range."""
    if step is None:
        return next((s for s in STEPS if span / s <= DEFAULT_POINTS), STEPS[-1])
    if step < MINUTE or step > MAX_STEP or step % MINUTE:
        raise bad("step", "must be whole minutes, from 1m to 1d", "invalid_step")
    if span / step > MAX_POINTS:
        raise bad("step", f"gives more than {MAX_POINTS} points; use a longer step",
                  "invalid_step")
    return step


def minutes(conn: Connection, services: list[str], start: datetime, end: datetime,
            tenant: str | None, operation: str | None = None
            ) -> tuple[dict[tuple[datetime, str, str], MinuteRollup], datetime | None]:
    """Per (minute, service, operation) in [start, end): requests, errors and the merged
    latency sketch over tenants and environments. Minutes the rollup has covered come from
    `rollups`, the rest from raw spans. Also returns the boundary (None: nothing rolled up)."""
    last_done = conn.execute(_sql("SELECT last_minute FROM rollup_state WHERE name = :name"),
                             {"name": STATE}).scalar()
    # Minutes before `boundary` come from rollups, the rest from raw spans.
    boundary = min(max(start, last_done + MINUTE), end) if last_done is not None else start
    found: dict[tuple[datetime, str, str], MinuteRollup] = {}

    def add(minute: datetime, service: str, name: str, count: int, failed: int,
            sketch: LatencySketch) -> None:
        key = (minute, service, name)
        rollup = found.get(key)
        if rollup is None:
            rollup = found[key] = MinuteRollup(0, 0, LatencySketch(sketch.relative_accuracy))
        rollup.requests += count
        rollup.errors += failed
        rollup.sketch.merge(sketch)

    clauses, raw = ["service = ANY(:services)"], ["service = ANY(:services)"]
    params: dict[str, Any] = {"services": services}
    if tenant is not None:
        clauses.append("tenant = :tenant")
        raw.append("tenant = :tenant")
        params["tenant"] = tenant
    if operation is not None:
        clauses.append("operation = :operation")
        raw.append("name = :operation")
        params["operation"] = operation
    if boundary > start:
        rows = conn.execute(_sql(
            "SELECT minute, service, operation, requests, errors, sketch FROM rollups WHERE "
            f"{' AND '.join(clauses)} AND minute >= :start AND minute < :boundary"),
            params | {"start": start, "boundary": boundary})
        for minute, service, name, count, failed, data in rows:
            add(minute.astimezone(UTC), service, name, int(count), int(failed),
                LatencySketch.from_bytes(bytes(data)))
    if boundary < end:
        where = "AND " + " AND ".join(raw)
        for key, rollup in compute(conn, boundary, end, where, params).items():
            add(key[0], key[2], key[4], rollup.requests, rollup.errors, rollup.sketch)
    return found, (boundary if boundary > start else None)


def totals(conn: Connection, start: datetime, end: datetime, tenant: str | None,
           group: str, service: str | None = None) -> dict[str, MinuteRollup]:
    """Requests, errors and the merged latency sketch over [start, end) (whole minutes) per
    service (`group="service"`) or per endpoint of one service (`group="endpoint"`): whole
    hours from `rollups_hourly`, the other rolled-up minutes from `rollups`, the rest from raw
    spans. What long ranges of the services
    overview and the endpoint ranking are answered from."""
    states = dict(conn.execute(_sql(
        "SELECT name, last_minute FROM rollup_state WHERE name IN (:minutes, :hours)"),
        {"minutes": STATE, "hours": HOURLY_STATE}).all())
    last_done, last_hour = states.get(STATE), states.get(HOURLY_STATE)
    boundary = min(max(start, last_done + MINUTE), end) if last_done is not None else start
    # Whole hours merged already come from `rollups_hourly`: 24 sketches a day per key.
    first_hour = floor_hour(start) + (HOUR if floor_hour(start) < start else timedelta(0))
    hours_end = min(floor_hour(boundary), last_hour + HOUR) if last_hour is not None \
        else first_hour
    found: dict[str, MinuteRollup] = {}

    def add(name: str, count: int, failed: int, sketch: LatencySketch) -> None:
        total = found.get(name)
        if total is None:
            total = found[name] = MinuteRollup(0, 0, LatencySketch(sketch.relative_accuracy))
        total.requests += count
        total.errors += failed
        total.sketch.merge(sketch)

    clauses, params = ["minute >= :start", "minute < :boundary"], {
        "start": start, "boundary": boundary}
    raw: list[str] = []
    if tenant is not None:
        clauses.append("tenant = :tenant")
        raw.append("tenant = :tenant")
        params["tenant"] = tenant
    if service is not None:
        clauses.append("service = :service")
        raw.append("service = :service")
        params["service"] = service
    column = "service" if group == "service" else "operation"
    filters = clauses[2:]  # tenant, service
    if hours_end > first_hour:
        hourly = ["hour >= :first_hour", "hour < :hours_end", *filters]
        for name, count, failed, data in conn.execute(_sql(
                f"SELECT {column}, requests, errors, sketch FROM rollups_hourly "
                f"WHERE {' AND '.join(hourly)}"),
                params | {"first_hour": first_hour, "hours_end": hours_end}):
            add(name, int(count), int(failed), LatencySketch.from_bytes(bytes(data)))
        clauses = ["((minute >= :start AND minute < :first_hour) OR "
                   "(minute >= :hours_end AND minute < :boundary))", *filters]
        params |= {"first_hour": first_hour, "hours_end": hours_end}
    if boundary > start:
        for name, count, failed, data in conn.execute(_sql(
                f"SELECT {column}, requests, errors, sketch FROM rollups "
                f"WHERE {' AND '.join(clauses)}"), params):
            add(name, int(count), int(failed), LatencySketch.from_bytes(bytes(data)))
    if boundary < end:
        where = ("AND " + " AND ".join(raw)) if raw else ""
        for key, rollup in compute(conn, boundary, end, where, params).items():
            add(key[2] if group == "service" else key[4], rollup.requests, rollup.errors,
                rollup.sketch)
    return found


def service_metrics(conn: Connection, service: str, metrics_window: Window,
                    step: timedelta | None, tenant: str | None, operation: str | None = None
                    ) -> dict[str, Any]:
    """The series of [from, to) at `step` (None: a default for the range), for one operation
    (span name) or the whole service. `rolledUpUntil`: minutes before it came from rollups."""
    start, end = floor_minute(metrics_window.start), ceil_minute(metrics_window.end)
    if end == start:
        end = start + MINUTE
    step = choose_step(end - start, step)
    steps = list(_steps(start, end, step))
    sketches = [LatencySketch() for _ in steps]
    requests, errors = [0] * len(steps), [0] * len(steps)
    found, boundary = minutes(conn, [service], start, end, tenant, operation)
    for (minute, _, _), rollup in found.items():
        index = (minute - start) // step
        requests[index] += rollup.requests
        errors[index] += rollup.errors
        sketches[index].merge(rollup.sketch)

    points = []
    for index, moment in enumerate(steps):
        covered = (min(moment + step, end) - moment).total_seconds()
        count = requests[index]
        point: dict[str, Any] = {
            "time": iso(moment), "requests": count, "errors": errors[index],
            "ratePerSecond": round(count / covered, 6),
            "errorRate": round(errors[index] / count, 6) if count else 0.0}
        for name, q in QUANTILES.items():
            value = sketches[index].quantile(q)
            point[name] = round(value / 1e6, 3) if value is not None else None
        points.append(point)
    return {"service": service, "operation": operation, "from": iso(start), "to": iso(end),
            "stepSeconds": int(step.total_seconds()),
            "rolledUpUntil": iso(boundary) if boundary else None, "points": points}


def _steps(start: datetime, end: datetime, step: timedelta) -> list[datetime]:
    moments, moment = [], start
    while moment < end:
        moments.append(moment)
        moment += step
    return moments
