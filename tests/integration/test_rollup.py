"""Minute rollups on a real database: spans inserted as the writer stores them, the rollup run
with an injected clock (and once through the real, scheduled function)."""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from google.cloud import pubsub_v1

from emulators.scheduler import fire
from infra.topology import TOPOLOGY
from shared import rollup, telemetry_store
from shared.sketch import LatencySketch
from tests.integration.conftest import PROJECT, deployed

BASE = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)  # a minute boundary
MINUTE = timedelta(minutes=1)


@dataclass
class Spans:
    engine: sqlalchemy.Engine
    # Durations of the requests inserted, by (minute, service, operation), and their errors.
    durations: dict[tuple[datetime, str, str], list[int]] = field(default_factory=dict)
    errors: dict[tuple[datetime, str, str], int] = field(default_factory=dict)

    def insert(self, start: datetime, duration_ns: int, *, service: str = "shop",
               name: str = "GET /cart", kind: int = 2, parent: bool = False, status: int = 0,
               tenant: str = "", environment: str = "prod") -> None:
        with self.engine.begin() as conn:
            conn.execute(sqlalchemy.text(
                "INSERT INTO spans (trace_id, span_id, parent_span_id, start_time, duration_ns, "
                "tenant, service, environment, name, kind, status_code) VALUES (:t, :s, :p, "
                ":start, :d, :tenant, :service, :env, :name, :kind, :status)"),
                {"t": os.urandom(16), "s": os.urandom(8), "p": os.urandom(8) if parent else None,
                 "start": start, "d": duration_ns, "tenant": tenant, "service": service,
                 "env": environment, "name": name, "kind": kind, "status": status})
        if kind in (2, 5) or not parent:  # a request, as telemetry_query.ENTRY defines one
            minute = start.replace(second=0, microsecond=0)
            self.durations.setdefault((minute, service, name), []).append(duration_ns)
            self.errors[(minute, service, name)] = (self.errors.get((minute, service, name), 0)
                                                    + (status == 2))

    def rows(self) -> dict[tuple[datetime, str, str], tuple[int, int, bytes, datetime]]:
        with self.engine.connect() as conn:
            found = conn.execute(sqlalchemy.text(
                "SELECT minute, service, operation, requests, errors, sketch, rolled_at "
                "FROM rollups")).all()
        return {(r[0].astimezone(UTC), r[1], r[2]): (r[3], r[4], bytes(r[5]), r[6])
                for r in found}


@pytest.fixture
def spans(platform_env: dict[str, str]) -> Iterator[Spans]:
    engine = sqlalchemy.create_engine(platform_env["DATABASE_URL"])
    telemetry_store.forget_known()
    today = datetime.now(UTC).date()
    with engine.begin() as conn:
        telemetry_store.ensure_partitions(conn, "spans", {
            BASE.date(), (BASE + timedelta(days=1)).date(), today - timedelta(days=1), today})
    try:
        yield Spans(engine)
    finally:
        engine.dispose()


def lower_quantile(values: list[int], q: float) -> int:
    return sorted(values)[math.floor(q * (len(values) - 1))]


def test_closed_minutes_are_rolled_up_exactly(spans: Spans) -> None:
    rng = random.Random(8)
    for minute in range(3):
        for n in range(rng.randint(50, 300)):
            start = BASE + minute * MINUTE + timedelta(microseconds=rng.randrange(60_000_000))
            duration = max(0, round(rng.lognormvariate(15, 1.5))) if n else 0
            status = 2 if rng.random() < 0.1 else rng.choice((0, 1))
            spans.insert(start, duration, status=status)
            spans.insert(start, duration * 2, service="api", name="consume", kind=5,
                         parent=True)
        # Not requests: a client span and an internal span inside a trace.
        spans.insert(BASE + minute * MINUTE, 5, kind=3, parent=True)
        spans.insert(BASE + minute * MINUTE, 5, kind=1, parent=True, name="GET /cart")
        # A root span of any kind is a request.
        spans.insert(BASE + minute * MINUTE + timedelta(seconds=59.999), 7_000_000, kind=1,
                     name="cron job")
    spans.insert(BASE + 3 * MINUTE, 1_000, name="open minute")  # still open at `now`

    result = rollup.roll_up(BASE + 3 * MINUTE + timedelta(seconds=30))

    assert result.end == BASE + 3 * MINUTE and result.changed == result.rows == 9
    rows = spans.rows()
    assert set(rows) == set(spans.durations) - {(BASE + 3 * MINUTE, "shop", "open minute")}
    for key, (requests, errors, data, _) in rows.items():
        durations = spans.durations[key]
        assert (requests, errors) == (len(durations), spans.errors[key])
        sketch = LatencySketch.from_bytes(data)
        assert sketch.count == requests and sketch.sum == sum(durations)
        assert (sketch.min, sketch.max) == (min(durations), max(durations))
        for q in (0.5, 0.9, 0.95, 0.99):
            truth = lower_quantile(durations, q)
            estimate = sketch.quantile(q)
            assert estimate is not None
            assert abs(estimate - truth) <= 0.01 * truth * (1 + 1e-9), (key, q)
    # Merging the three minutes' sketches answers the three minutes' p95 within 1%.
    union = [d for m in range(3) for d in spans.durations[(BASE + m * MINUTE, "shop", "GET /cart")]]
    merged = LatencySketch.merged(LatencySketch.from_bytes(rows[(BASE + m * MINUTE, "shop",
                                                                 "GET /cart")][2])
                                  for m in range(3))
    p95 = merged.quantile(0.95)
    assert p95 is not None and abs(p95 - lower_quantile(union, 0.95)) <= 0.0101 * p95


def test_duplicate_and_replayed_ticks_change_nothing(spans: Spans) -> None:
    for minute in range(5):
        for n in range(20):
            spans.insert(BASE + minute * MINUTE + timedelta(seconds=n), 1_000_000 * (n + 1),
                         status=2 if n % 7 == 0 else 0)
    now = BASE + 5 * MINUTE + timedelta(seconds=1)
    first = rollup.roll_up(now)
    before = spans.rows()
    assert first.changed == 5 and len(before) == 5

    again = rollup.roll_up(now)  # a duplicate tick
    assert again.rows == 3 and again.changed == 0  # the lateness minutes recomputed, unchanged
    assert spans.rows() == before  # not even rolled_at moved

    with spans.engine.begin() as conn:  # replay everything from scratch
        conn.execute(sqlalchemy.text("DELETE FROM rollup_state"))
    replayed = rollup.roll_up(now)
    assert replayed.rows == 5 and replayed.changed == 0
    assert spans.rows() == before


def test_a_ten_minute_gap_is_caught_up(spans: Spans) -> None:
    spans.insert(BASE, 1_000)
    rollup.roll_up(BASE + MINUTE)
    for minute in range(1, 11):
        spans.insert(BASE + minute * MINUTE + timedelta(seconds=30), 1_000 * minute)
    result = rollup.roll_up(BASE + 11 * MINUTE + timedelta(seconds=5))  # ten ticks were lost
    assert (result.start, result.end, result.minutes) == (BASE + MINUTE, BASE + 11 * MINUTE, 10)
    assert set(spans.rows()) == {(BASE + m * MINUTE, "shop", "GET /cart") for m in range(11)}


def test_catch_up_is_bounded_per_run(spans: Spans) -> None:
    spans.insert(BASE, 1_000)
    rollup.roll_up(BASE + MINUTE)
    late = BASE + (rollup.MAX_MINUTES + 40) * MINUTE
    first = rollup.roll_up(late)
    assert first.minutes == rollup.MAX_MINUTES and first.start == BASE + MINUTE
    second = rollup.roll_up(late)
    assert second.start == BASE + (rollup.MAX_MINUTES + 1) * MINUTE
    assert second.end == late


def test_a_late_span_within_the_allowance_corrects_its_minute(spans: Spans) -> None:
    key = (BASE + 2 * MINUTE, "shop", "GET /cart")
    spans.insert(BASE + 2 * MINUTE, 1_000_000)
    rollup.roll_up(BASE + 3 * MINUTE + timedelta(seconds=2))
    assert spans.rows()[key][:2] == (1, 0)
    # Arrives just under two minutes after its minute ended: the next tick counts it.
    spans.insert(BASE + 2 * MINUTE + timedelta(seconds=59), 9_000_000, status=2)
    result = rollup.roll_up(BASE + 4 * MINUTE + timedelta(seconds=58))
    assert result.changed == 1
    requests, errors, data, _ = spans.rows()[key]
    assert (requests, errors) == (2, 1)
    assert LatencySketch.from_bytes(data) == LatencySketch().extend([1_000_000, 9_000_000])
    # Later than the allowance: stored, but its minute is no longer recomputed.
    spans.insert(BASE + timedelta(seconds=1), 1_000)
    spans.insert(BASE + 2 * MINUTE + timedelta(seconds=1), 1_000)
    rollup.roll_up(BASE + 8 * MINUTE)
    assert spans.rows()[key][:2] == (2, 1)


def test_a_run_holding_the_lock_makes_others_skip(spans: Spans) -> None:
    spans.insert(BASE, 1_000)
    with spans.engine.begin() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(hashtext('telemetry_rollup'))"))
        assert rollup.roll_up(BASE + 2 * MINUTE).skipped
    assert spans.rows() == {}
    assert not rollup.roll_up(BASE + 2 * MINUTE).skipped
    assert len(spans.rows()) == 1


def test_the_scheduled_function_rolls_up_the_closed_minutes(
        spans: Spans, platform_env: dict[str, str], run_dir: Path) -> None:
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - 2 * MINUTE
    spans.insert(minute + timedelta(seconds=3), 4_000_000, service="checkout", name="POST /pay")
    spans.insert(minute + timedelta(seconds=4), 6_000_000, service="checkout", name="POST /pay",
                 status=2)
    tick = next(s for s in TOPOLOGY.schedules if s.name == "rollup-every-minute")
    with deployed("rollup", platform_env, run_dir) as bridge:
        for _ in range(2):  # a duplicate tick changes nothing
            fire(tick, PROJECT, pubsub_v1.PublisherClient())
        deadline = time.monotonic() + 30
        while sum(d.status == 204 for d in bridge.deliveries) < 2:
            if time.monotonic() > deadline:
                pytest.fail(f"rollup did not run: {bridge.deliveries}")
            time.sleep(0.05)
    rows: dict[Any, Any] = spans.rows()
    assert rows[(minute, "checkout", "POST /pay")][:2] == (2, 1)


def test_closed_hours_are_merged_once_and_equal_their_minutes(identity: Any) -> None:
    from shared import db, rollup
    from shared.sketch import LatencySketch

    now = datetime.now(UTC).replace(second=0, microsecond=0)
    hour = rollup.floor_hour(now) - 3 * rollup.HOUR
    with db.transaction() as conn:
        telemetry_store.ensure_partitions(conn, "spans", {hour.date(), now.date()})
    for minute in range(0, 120, 7):
        identity.sql(
            "INSERT INTO spans (trace_id, span_id, start_time, duration_ns, service, name, kind) "
            "VALUES (:t, :s, :at, :d, 'svc', 'op', 2)", t=os.urandom(16), s=os.urandom(8),
            at=hour + minute * rollup.MINUTE, d=(minute + 1) * 1000)
    rollup.roll_up(hour + 180 * rollup.MINUTE)  # backfills the three hours
    rows = identity.sql("SELECT hour, requests, sketch FROM rollups_hourly ORDER BY hour")
    assert [(h.astimezone(UTC), r) for h, r, _ in rows] == [(hour, 9), (hour + rollup.HOUR, 9)]
    minutes = identity.sql("SELECT sketch FROM rollups WHERE minute < :e",
                           e=hour + rollup.HOUR)
    merged = LatencySketch()
    for (data,) in minutes:
        merged.merge(LatencySketch.from_bytes(bytes(data)))
    assert LatencySketch.from_bytes(bytes(rows[0][2])).quantile(0.9) == merged.quantile(0.9)
    with db.transaction() as conn:  # a repeated run merges nothing new and changes nothing
        assert rollup.roll_up_hours(conn, hour + 179 * rollup.MINUTE) == 0
    assert identity.sql("SELECT count(*) FROM rollups_hourly") == [(2,)]
