"""Rollups: the time to roll up one minute holding 100,000 request spans, and a service's p95
over 24 hours from the rollups against the same number computed from raw spans, in the same run.

Starts its own PostgreSQL (as the local cloud does), applies the migrations and generates spans
server-side (INSERT ... SELECT generate_series; server spans with lognormal-ish durations):

1. one minute of `--burst` spans for service `burst`: `rollup.compute` + `rollup.upsert` of that
   minute, timed (target: under 2 s for 100,000 spans);
2. `--day` spans over the last 24 hours for service `steady` (5 operations), rolled up once
   (setup, not timed); then, alternately, the service's p95 over the 24 hours from raw spans
   (`percentile_disc`) and from the rollups (`telemetry_metrics.totals`, what the services
   overview uses for long ranges: 23 hourly and the edge minutes' sketches per operation,
   merged), each `--runs` times. Targets: >= 20x faster, within 1% of exact.

    python -m bench.rollup [--burst 100000] [--day 3000000] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.machine import summary
from emulators.proc import exit_on_sigterm

FILL = """
INSERT INTO spans (trace_id, span_id, start_time, duration_ns, service, environment, name,
                   kind, status_code)
SELECT decode(md5(:service || g::text), 'hex'), substring(decode(md5('s' || :service || g::text),
       'hex') from 1 for 8),
       CAST(:start AS timestamptz) + make_interval(secs => mod(g, :spread)::float8
           * :seconds / :spread),
       (1000000 * exp(mod(g * 7919, 1000) / 200.0))::bigint,
       :service, 'bench', 'GET /op/' || mod(g, 5), 2, CASE WHEN mod(g, 100) = 0 THEN 2 ELSE 0 END
FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) g
"""


def fill(conn: object, service: str, start: datetime, seconds: float, count: int) -> None:
    import sqlalchemy

    for lo in range(0, count, 500_000):
        hi = min(lo + 500_000, count) - 1
        conn.execute(sqlalchemy.text(FILL), {  # type: ignore[attr-defined]
            "service": service, "start": start, "seconds": seconds, "spread": count,
            "lo": lo, "hi": hi})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burst", type=int, default=100_000)
    parser.add_argument("--day", type=int, default=3_000_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    exit_on_sigterm()

    import sqlalchemy

    from emulators.postgres import start_postgres
    from shared import clients, db, migrate, rollup, telemetry_store
    from shared.telemetry_metrics import totals

    with tempfile.TemporaryDirectory(prefix="bench-rollup-") as tmp:
        pg = start_postgres(Path(tmp))
        try:
            os.environ |= {"DATABASE_URL": pg.url, "APP_ENV": "local",
                           "GOOGLE_CLOUD_PROJECT": "bench"}
            clients.reset()
            migrate.upgrade()
            now = datetime.now(UTC).replace(second=0, microsecond=0)
            burst_minute = now - timedelta(minutes=2)
            day_start = now - timedelta(days=1)
            with db.transaction() as conn:
                for day in {day_start.date(), now.date(), burst_minute.date()}:
                    telemetry_store.ensure_partitions(conn, "spans", [day])
                fill(conn, "burst", burst_minute, 59.9, args.burst)
                fill(conn, "steady", day_start, 86_400 - 1, args.day)
            with db.autocommit_engine().connect() as c:
                c.execute(sqlalchemy.text("VACUUM ANALYZE spans"))

            burst_times = []
            for _ in range(args.runs):
                started = time.perf_counter()
                with db.transaction() as conn:
                    found = rollup.compute(conn, burst_minute, burst_minute + rollup.MINUTE,
                                           "AND service = :service", {"service": "burst"})
                    rollup.upsert(conn, found)
                burst_times.append(time.perf_counter() - started)
            assert sum(r.requests for r in found.values()) == args.burst

            with db.transaction() as conn:  # setup: the day rolled up, as the ticks would
                rollup.upsert(conn, rollup.compute(conn, day_start, now))
                conn.execute(sqlalchemy.text(
                    "INSERT INTO rollup_state (name, last_minute) VALUES (:n, :m) "
                    "ON CONFLICT (name) DO UPDATE SET last_minute = excluded.last_minute"),
                    {"n": rollup.STATE, "m": now - rollup.MINUTE})
                while rollup.roll_up_hours(conn, now - rollup.MINUTE):
                    pass  # the hourly merge, as the ticks would have done it
            raw_times, rollup_times = [], []
            for _ in range(args.runs):
                started = time.perf_counter()
                with db.transaction() as conn:
                    exact = float(conn.execute(sqlalchemy.text(
                        "SELECT percentile_disc(0.95) WITHIN GROUP (ORDER BY duration_ns) "
                        "FROM spans WHERE service = 'steady' AND kind = 2 "
                        "AND start_time >= :s AND start_time < :e"),
                        {"s": day_start, "e": now}).scalar_one())
                raw_times.append(time.perf_counter() - started)
                started = time.perf_counter()
                with db.transaction() as conn:
                    merged = totals(conn, day_start, now, None, "service", "steady")
                estimate = merged["steady"].sketch.quantile(0.95) or 0.0
                rollup_times.append(time.perf_counter() - started)
            rows = (f"{args.day:,} spans for `steady` over 24 h (5 operations), "
                    f"{args.burst:,} spans for `burst` in one minute")
        finally:
            pg.stop()
    raw_ms, rolled_ms = statistics.median(raw_times) * 1000, statistics.median(rollup_times) * 1000
    out = [f"Machine: {summary()}, {time.strftime('%Y-%m-%d')}. {rows}; {args.runs} runs each, "
           "medians.", "",
           "| measure | time | note |", "| --- | --- | --- |",
           f"| roll up one minute of {args.burst:,} spans (compute + upsert) | "
           f"{statistics.median(burst_times) * 1000:,.0f} ms | target < 2 s |",
           f"| p95 over 24 h from raw spans (`percentile_disc`, baseline) | {raw_ms:,.0f} ms | "
           f"{exact / 1e6:,.3f} ms |",
           f"| p95 over 24 h from rollups (hourly + edge minutes, merged sketches) | "
           f"{rolled_ms:,.0f} ms | "
           f"{estimate / 1e6:,.3f} ms: {raw_ms / rolled_ms:,.1f}x faster, "
           f"{abs(estimate - exact) / exact * 100:.2f}% from exact |"]
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
