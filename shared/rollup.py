"""Minute rollups of requests (seed 002's aggregator): for every closed minute and (tenant,
service, environment, operation), the request count, the error count (status_code 2) and a
mergeable latency sketch (`shared.sketch`), computed from the raw `spans` table.

A request is what `shared.telemetry_query.ENTRY` says it is (a server or consumer span, or a
trace's root span), the definition every request statistic uses. A minute is [m, m + 1 min) of
span start times, in UTC; it is closed once the clock has passed its end.

Each run (one per `rollup.tick`, every minute):
- rolls up every closed minute after the last one fully rolled up (`rollup_state`), so ticks lost
  for ten minutes are followed by ten minutes rolled up; at most `MAX_MINUTES` per run, so one
  call cannot run forever (a longer gap is caught up over the following ticks);
- also recomputes the `LATENESS` minutes before the newest closed one: the lateness allowance. A
  span that arrives within `LATENESS` after the end of its minute is counted by the next run
  after it arrives; a span later than that is stored and searchable but not in the rollups.
- recomputes each minute from raw spans and UPSERTs it by its deterministic key, writing only
  rows whose values changed: a duplicate tick or a replayed minute changes nothing.

Latencies are bucketed in SQL (the sketch's bucket of each duration, `ceil(ln(d) / ln(gamma))`,
grouped with count, sum, min and max), so a minute of 100,000 spans reaches Python as a few
hundred rows per operation, not 100,000 durations. Runs are serialized by a transaction-scoped
advisory lock; a run that finds it held does nothing (the holder is doing the same work, and the
next tick catches up whatever remains).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.sketch import LatencySketch
from shared.telemetry_query import ENTRY

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

MINUTE = timedelta(minutes=1)
LATENESS = timedelta(minutes=2)  # the lateness allowance (see the module docstring)
MAX_MINUTES = 180  # minutes rolled up by one run at most
STATE = "spans"  # rollup_state row of the span rollup
HOURLY_STATE = "spans_hourly"  # rollup_state row of the hourly merge (the last hour done)
HOUR = timedelta(hours=1)
MAX_HOURS = 6  # hours merged by one run at most
_LOCK = "telemetry_rollup"
_UPSERT_CHUNK = 500  # rows per INSERT statement (8 parameters each)

Key = tuple[datetime, str, str, str, str]  # minute, tenant, service, environment, operation


@dataclass(frozen=True)
class RollupResult:
    start: datetime | None  # first minute computed
    end: datetime | None  # end of the last minute computed (exclusive)
    rows: int  # (minute, key) rows computed
    changed: int  # rows inserted or updated because their values changed
    skipped: bool = False  # another run held the lock

    @property
    def minutes(self) -> int:
        if self.start is None or self.end is None:
            return 0
        return (self.end - self.start) // MINUTE


@dataclass
class MinuteRollup:
    requests: int
    errors: int
    sketch: LatencySketch


def _sql(text: str) -> Any:
    import sqlalchemy

    return sqlalchemy.text(text)


def floor_minute(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


def window(last_done: datetime | None, now: datetime) -> tuple[datetime, datetime]:
    """The minutes [start, end) a run at `now` computes, given the last minute fully rolled up
    (None before the first run, which backfills up to `MAX_MINUTES`). Empty when start >= end."""
    newest_closed = floor_minute(now) - MINUTE
    if last_done is None:
        start = newest_closed - (MAX_MINUTES - 1) * MINUTE
    else:
        start = min(floor_minute(last_done) + MINUTE, newest_closed - LATENESS)
    return start, min(start + MAX_MINUTES * MINUTE, newest_closed + MINUTE)


def roll_up(now: datetime | None = None) -> RollupResult:
    """One run, in its own transaction, as of `now` (the current time unless a test says)."""
    from shared import db

    with db.transaction() as conn:
        return roll_up_in(conn, now or datetime.now(UTC))


def roll_up_in(conn: Connection, now: datetime) -> RollupResult:
    locked = conn.execute(_sql("SELECT pg_try_advisory_xact_lock(hashtext(:lock))"),
                          {"lock": _LOCK}).scalar()
    if not locked:
        return RollupResult(None, None, 0, 0, skipped=True)
    last_done = conn.execute(_sql("SELECT last_minute FROM rollup_state WHERE name = :name"),
                             {"name": STATE}).scalar()
    start, end = window(last_done, now)
    if start >= end:
        return RollupResult(None, None, 0, 0)
    rollups = compute(conn, start, end)
    changed = upsert(conn, rollups)
    _set_state(conn, STATE, end - MINUTE)
    roll_up_hours(conn, end - MINUTE)
    return RollupResult(start, end, len(rollups), changed)


def _set_state(conn: Connection, name: str, moment: datetime) -> None:
    conn.execute(_sql(
        "INSERT INTO rollup_state (name, last_minute) VALUES (:name, :minute) "
        "ON CONFLICT (name) DO UPDATE SET last_minute = GREATEST(rollup_state.last_minute, "
        "excluded.last_minute), updated_at = now()"), {"name": name, "minute": moment})


def floor_hour(moment: datetime) -> datetime:
    return floor_minute(moment).replace(minute=0)


def roll_up_hours(conn: Connection, last_minute_done: datetime) -> int:
    """Merge each hour whose minutes can no longer change (they end before the lateness
    allowance of the newest minute done) into `rollups_hourly`, after the last hour done, at
    most `MAX_HOURS` per run. Idempotent like the minutes: unchanged rows are not written.
    Returns the hours merged."""
    final_before = floor_hour(last_minute_done - LATENESS + MINUTE)
    done = conn.execute(_sql("SELECT last_minute FROM rollup_state WHERE name = :name"),
                        {"name": HOURLY_STATE}).scalar()
    if done is not None:
        hour = done.astimezone(UTC) + HOUR
    else:
        first = conn.execute(_sql("SELECT min(minute) FROM rollups")).scalar()
        if first is None:
            return 0
        hour = floor_hour(first)
    merged = 0
    while hour + HOUR <= final_before and merged < MAX_HOURS:
        hourly: dict[Key, MinuteRollup] = {}
        for tenant, service, environment, operation, requests, errors, data in conn.execute(
                _sql("SELECT tenant, service, environment, operation, requests, errors, sketch "
                     "FROM rollups WHERE minute >= :h AND minute < :e"),
                {"h": hour, "e": hour + HOUR}):
            key = (hour, tenant, service, environment, operation)
            total = hourly.get(key)
            if total is None:
                total = hourly[key] = MinuteRollup(0, 0, LatencySketch())
            total.requests += int(requests)
            total.errors += int(errors)
            total.sketch.merge(LatencySketch.from_bytes(bytes(data)))
        upsert(conn, hourly, table="rollups_hourly", column="hour")
        _set_state(conn, HOURLY_STATE, hour)
        hour += HOUR
        merged += 1
    return merged


def compute(conn: Connection, start: datetime, end: datetime,
            where: str = "", params: dict[str, Any] | None = None) -> dict[Key, MinuteRollup]:
    """The rollups of the minutes in [start, end) from raw spans (optionally narrowed by extra
    `where` clauses on spans with their `params`), by key."""
    sketch = LatencySketch()
    rows = conn.execute(_sql(
        "SELECT date_bin('1 minute', start_time, TIMESTAMPTZ '2000-01-01 00:00:00+00'), "
        "tenant, service, environment, name, "
        "CASE WHEN duration_ns > 0 THEN ceil(ln(duration_ns::float8) / :log_gamma)::int END, "
        "count(*), count(*) FILTER (WHERE status_code = 2), sum(duration_ns), "
        "min(duration_ns), max(duration_ns) "
        f"FROM spans WHERE {ENTRY} AND start_time >= :start AND start_time < :end {where} "
        "GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6"),
        {"log_gamma": sketch.log_gamma, "start": start, "end": end} | (params or {}))
    found: dict[Key, MinuteRollup] = {}
    for minute, tenant, service, environment, name, bucket, count, errors, total, low, high \
            in rows:
        key = (minute.astimezone(UTC), tenant, service, environment, name)
        rollup = found.get(key)
        if rollup is None:
            rollup = found[key] = MinuteRollup(0, 0, LatencySketch(sketch.relative_accuracy))
        rollup.requests += int(count)
        rollup.errors += int(errors)
        if bucket is None:
            rollup.sketch.add_zeros(int(count))
        else:
            rollup.sketch.add_bucket(int(bucket), int(count), total=float(total),
                                     low=float(low), high=float(high))
    return found


def upsert(conn: Connection, rollups: dict[Key, MinuteRollup], table: str = "rollups",
           column: str = "minute") -> int:
    """Write rollups by key; a row whose values are unchanged is not written. Rows changed."""
    changed = 0
    items = sorted(rollups.items(), key=lambda item: item[0])
    for offset in range(0, len(items), _UPSERT_CHUNK):
        changed += _upsert_chunk(conn, items[offset:offset + _UPSERT_CHUNK], table, column)
    return changed


def _upsert_chunk(conn: Connection, items: Iterable[tuple[Key, MinuteRollup]],
                  table: str = "rollups", column: str = "minute") -> int:
    values: list[str] = []
    params: dict[str, Any] = {}
    for n, ((minute, tenant, service, environment, operation), rollup) in enumerate(items):
        values.append(f"(:m{n}, :t{n}, :s{n}, :e{n}, :o{n}, :r{n}, :x{n}, :k{n})")
        params |= {f"m{n}": minute, f"t{n}": tenant, f"s{n}": service, f"e{n}": environment,
                   f"o{n}": operation, f"r{n}": rollup.requests, f"x{n}": rollup.errors,
                   f"k{n}": rollup.sketch.to_bytes()}
    if not values:
        return 0
    result = conn.execute(_sql(
        f"INSERT INTO {table} ({column}, tenant, service, environment, operation, requests, "
        f"errors, sketch) VALUES {', '.join(values)} "
        f"ON CONFLICT ({column}, tenant, service, environment, operation) DO UPDATE SET "
        "requests = excluded.requests, errors = excluded.errors, sketch = excluded.sketch, "
        f"rolled_at = now() WHERE ({table}.requests, {table}.errors, {table}.sketch) "
        "IS DISTINCT FROM (excluded.requests, excluded.errors, excluded.sketch)"), params)
    return int(result.rowcount)
