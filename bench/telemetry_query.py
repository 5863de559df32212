"""Query latency of telemetry_query over many stored spans: trace by id and span search.

Starts its own PostgreSQL (as the local cloud does), applies the migrations, and fills the real
`spans` schema (daily partitions, every index) server-side with INSERT ... SELECT
generate_series, in batches: traces of 10 spans spread evenly over the last 7 days (one
partition per day), 20 services, 50 operations each, 1% errors, realistic attributes and
resources. Then runs each query the way the function's handlers do (the product's engine, the
read-only bounded transaction, the domain functions; not HTTP and token checks), one at a time:

- trace by id (native: spans in tree order + correlated logs; Jaeger: `GET /api/traces/{id}`)
- span search: one service's last hour, newest first, first page and the next page (cursor);
  one service + operation + minimum duration over 24 hours, slowest first
- Jaeger search: one service's last hour, 20 traces
- Jaeger dependencies (links between services) over the last hour and over 24 hours

    python -m bench.telemetry_query [--spans 10000000] [--batch 500000] [--queries 200]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import sqlalchemy

from bench.machine import summary
from emulators.postgres import start_postgres
from emulators.proc import exit_on_sigterm

SPANS_PER_TRACE = 10
SERVICES = 20
OPERATIONS = 50
DAYS = 7
CURSOR_KEY = "bench-cursor-key"  # signs the cursors of this run only

FILL = """
INSERT INTO spans (trace_id, span_id, parent_span_id, start_time, duration_ns, tenant, service,
                   environment, name, kind, status_code, status_message, attributes, resource,
                   events, links, scope)
SELECT decode(md5('t' || (g / 10)::text), 'hex'),
       decode(substr(md5('s' || g::text), 1, 16), 'hex'),
       CASE WHEN mod(g, 10) = 0 THEN NULL
            ELSE decode(substr(md5('s' || (g - mod(g, 10))::text), 1, 16), 'hex') END,
       CAST(:end AS timestamptz)
           - make_interval(secs => (CAST(:traces AS bigint) - g / 10) * CAST(:spacing AS float8))
           + make_interval(secs => mod(g, 10) * 0.002),
       CASE WHEN mod(g, 10) = 0 THEN 20000000 + (random() * random() * 480000000)::bigint
            ELSE (random() * 18000000)::bigint END,
       '',
       'svc-' || (mod(g / 10 + mod(g, 10) / 3, 20)),
       'prod',
       CASE WHEN mod(g, 10) = 0 THEN 'GET /route/' || mod(g / 10, 50)
            ELSE 'SELECT table_' || mod(g, 50) END,
       CASE WHEN mod(g, 10) = 0 THEN 2 ELSE 3 END,
       CASE WHEN mod(g, 100) = 0 THEN 2 ELSE 0 END,
       CASE WHEN mod(g, 100) = 0 THEN 'upstream failed' ELSE '' END,
       jsonb_build_object('http.route', '/route/' || mod(g / 10, 50),
                          'http.response.status_code',
                          CASE WHEN mod(g, 100) = 0 THEN 500 ELSE 200 END,
                          'user.id', mod(g * 7919, 100000)),
       jsonb_build_object('service.name', 'svc-' || (mod(g / 10 + mod(g, 10) / 3, 20)),
                          'host.name', 'host-' || mod(g, 50), 'deployment.environment', 'prod'),
       '[]', '[]', 'bench'
FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) g
"""


def fill(engine: sqlalchemy.Engine, spans: int, batch: int, end: datetime) -> float:
    """Insert `spans` spans ending at `end`; the seconds it took."""
    from shared import telemetry_store

    traces = spans // SPANS_PER_TRACE
    spacing = (DAYS * 86400 - 3600) / traces
    with engine.begin() as conn:
        telemetry_store.ensure_partitions(conn, "spans", {
            (end - timedelta(days=d)).date() for d in range(DAYS + 1)})
        telemetry_store.ensure_partitions(conn, "logs", {
            (end - timedelta(days=d)).date() for d in range(DAYS + 1)})
    started = time.perf_counter()
    for lo in range(0, traces * SPANS_PER_TRACE, batch):
        hi = min(lo + batch, traces * SPANS_PER_TRACE) - 1
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(FILL), {"lo": lo, "hi": hi, "end": end,
                                                 "traces": traces, "spacing": spacing})
        done = hi + 1
        rate = done / (time.perf_counter() - started)
        sys.stderr.write(f"  {done:,} spans ({rate:,.0f}/s)\n")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sqlalchemy.text("VACUUM ANALYZE spans"))
    return time.perf_counter() - started


def trace_hex(number: int) -> str:
    import hashlib

    return hashlib.md5(f"t{number}".encode(), usedforsecurity=False).hexdigest()


def measure(name: str, queries: int, run: Callable[[int], Any]) -> tuple[str, list[float]]:
    for i in range(min(20, max(1, queries // 5))):  # warm the pool and the plan cache
        run(-1 - i)
    samples = []
    for i in range(queries):
        began = time.perf_counter()
        run(i)
        samples.append((time.perf_counter() - began) * 1000)
    return name, samples


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def scenarios(traces: int, queries: int, now: datetime) -> list[tuple[str, list[float]]]:
    from shared import telemetry_jaeger as jaeger
    from shared import telemetry_query as tq
    from shared.pagination import PageRequest
    from shared.telemetry_params import Window

    rng = random.Random(7)
    ids = [trace_hex(rng.randrange(traces)) for _ in range(queries + 20)]
    hour = Window(now - timedelta(hours=1), now)
    day = Window(now - timedelta(days=1), now)
    first = PageRequest(20, None, "bench")
    results = []

    def native_trace(i: int) -> None:
        with tq.reading() as conn:
            found = tq.trace(conn, ids[i], None)
        assert found["spanCount"] == SPANS_PER_TRACE

    def jaeger_trace(i: int) -> None:
        with tq.reading() as conn:
            found = jaeger.get_trace(conn, ids[i], None)
        assert len(found["data"][0]["spans"]) == SPANS_PER_TRACE

    def service_page(i: int) -> None:
        filters = tq.SpanFilters(service=f"svc-{i % SERVICES}")
        with tq.reading() as conn:
            page = tq.span_page(conn, filters, hour, None, first, CURSOR_KEY, "start_time", "desc")
        assert len(page["items"]) == 20

    def service_next_page(i: int) -> None:
        from shared.pagination import decode_cursor

        filters = tq.SpanFilters(service=f"svc-{i % SERVICES}")
        with tq.reading() as conn:
            page = tq.span_page(conn, filters, hour, None, first, CURSOR_KEY, "start_time", "desc")
            position = decode_cursor(page["nextCursor"], CURSOR_KEY)
            position.pop("@")
            tq.span_page(conn, filters, hour, None, PageRequest(20, position, "bench"), CURSOR_KEY,
                         "start_time", "desc")

    def slow_operation(i: int) -> None:
        filters = tq.SpanFilters(service=f"svc-{i % SERVICES}",
                                 name=f"GET /route/{i % OPERATIONS}", min_duration_ns=100_000_000)
        with tq.reading() as conn:
            tq.span_page(conn, filters, day, None, first, CURSOR_KEY, "duration", "desc")

    def jaeger_search(i: int) -> None:
        query = jaeger.TraceQuery(f"svc-{i % SERVICES}", None, {}, hour, None, None, 20, ())
        with tq.reading() as conn:
            found = jaeger.search(conn, query, None)
        assert len(found["data"]) == 20

    def jaeger_services(i: int) -> None:
        with tq.reading() as conn:
            assert len(jaeger.services(conn, None)) == SERVICES

    def jaeger_operations(i: int) -> None:
        with tq.reading() as conn:
            assert jaeger.operations(conn, f"svc-{i % SERVICES}", None, None)

    def overview(i: int) -> None:
        with tq.reading() as conn:
            assert len(tq.services_overview(conn, hour, None)["items"]) == SERVICES

    def ranking(i: int) -> None:
        with tq.reading() as conn:
            tq.endpoints(conn, f"svc-{i % SERVICES}", hour, None, "p95", "desc", 20)

    def unfiltered_page(i: int) -> None:
        with tq.reading() as conn:
            tq.span_page(conn, tq.SpanFilters(), hour, None, first, CURSOR_KEY, "start_time",
                         "desc")

    def dependencies_hour(i: int) -> None:
        with tq.reading() as conn:
            assert jaeger.dependencies(conn, jaeger.DependencyQuery(now, hour.end - hour.start,
                                                                    None), None)

    def dependencies_day(i: int) -> None:
        with tq.reading() as conn:
            assert jaeger.dependencies(conn, jaeger.DependencyQuery(now, day.end - day.start,
                                                                    None), None)

    def tenant_services(i: int) -> None:
        with tq.reading() as conn:
            assert jaeger.services(conn, "nobody") == []

    def floor(i: int) -> None:
        with tq.reading() as conn:
            conn.exec_driver_sql("SELECT 1")

    heavy = max(5, queries // 20)
    for name, runs, run in (
            ("baseline: `SELECT 1` in the same bounded transaction", queries, floor),
            ("trace by id (native, with logs)", queries, native_trace),
            ("trace by id (Jaeger)", queries, jaeger_trace),
            ("span search: service, last hour, page 1", queries, service_page),
            ("span search: service, last hour, pages 1+2", queries, service_next_page),
            ("span search: service+operation+minDuration, 24 h, slowest", queries,
             slow_operation),
            ("Jaeger search: service, last hour, 20 traces", queries, jaeger_search),
            ("Jaeger services (every tenant)", queries, jaeger_services),
            ("Jaeger operations of a service", queries, jaeger_operations),
            ("services overview, last hour (percentile_cont)", heavy, overview),
            ("endpoint ranking of a service, last hour", queries, ranking),
            ("span search: no filter, last hour, page 1", heavy, unfiltered_page),
            ("Jaeger services of a tenant with no spans", heavy, tenant_services),
            ("Jaeger dependencies, last hour", heavy, dependencies_hour),
            ("Jaeger dependencies, 24 h (the UI's default)", max(3, heavy // 5),
             dependencies_day)):
        results.append(measure(name, runs, run))
        sys.stderr.write(f"  measured {name}\n")
    return results


def markdown(results: list[tuple[str, list[float]]], spans: int, fill_s: float, size: str,
             about: str) -> str:
    lines = [
        "## Telemetry queries", "",
        f"{spans:,} stored spans ({spans // SPANS_PER_TRACE:,} traces of {SPANS_PER_TRACE}, "
        f"{SERVICES} services, spread over {DAYS} days (8 daily partitions); {size} with indexes; "
        "generated "
        f"server-side in {fill_s:,.0f} s), {about}. Queries one at a time through the domain "
        "functions in their read-only, statement-bounded transaction (`bench/telemetry_query.py`).",
        "", "| query | runs | p50 ms | p99 ms | max ms |", "| --- | --- | --- | --- | --- |"]
    for name, samples in results:
        lines.append(f"| {name} | {len(samples)} | {pct(samples, 50):.1f} "
                     f"| {pct(samples, 99):.1f} | {max(samples):.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--spans", type=int, default=10_000_000)
    parser.add_argument("--batch", type=int, default=500_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args(argv)
    exit_on_sigterm()  # a killed benchmark still stops its PostgreSQL

    with tempfile.TemporaryDirectory(prefix="bench-telemetry-") as tmp:
        handle = start_postgres(Path(tmp))
        try:
            os.environ.update({"DATABASE_URL": handle.url, "APP_ENV": "local",
                               "GOOGLE_CLOUD_PROJECT": os.environ.get("GOOGLE_CLOUD_PROJECT",
                                                                      "bench")})
            from shared import clients, db, migrate

            clients.reset()
            migrate.upgrade()
            engine = sqlalchemy.create_engine(handle.url)
            now = datetime.now(UTC)
            fill_s = fill(engine, args.spans, args.batch, now)
            with engine.connect() as conn:
                size = str(conn.execute(sqlalchemy.text(
                    "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_inherits i "
                    "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
                    "WHERE p.relname = 'spans'")).scalar_one())
                server = str(conn.execute(sqlalchemy.text("SHOW server_version")).scalar_one())
            results = scenarios(args.spans // SPANS_PER_TRACE, args.queries, now)
            about = (f"{summary()}, PostgreSQL {server.split()[0]} ({handle.source}, loopback "
                     f"TCP, default settings), SQLAlchemy {metadata.version('sqlalchemy')}, "
                     f"psycopg {metadata.version('psycopg')}")
            sys.stdout.write(markdown(results, args.spans, fill_s, size, about))
            engine.dispose()
            db.engine().dispose()
        finally:
            handle.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
