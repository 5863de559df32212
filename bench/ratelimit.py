"""Rate-limit decision latency under concurrency, against a `SELECT 1` baseline.

Starts its own PostgreSQL (as the local cloud does), applies the migrations, then has C threads,
each holding its own pooled connection, make N decisions each, every one in its own transaction
as the router once did: BEGIN, the statement and COMMIT, a round trip each (psycopg). The
autocommit scenarios send the statement alone, one round trip, as the router does now.
Scenarios: one hot
key shared by every caller (the row lock serializes them), a key per caller, a new key per
decision (the INSERT path); each is set against `SELECT 1` run the same way, so the ratio shows
the statement's own cost. Scenarios run round-robin for a few rounds so drift hits them all.
Target (the issue): p99 < 5 ms with 20 callers on loopback.

    python -m bench.ratelimit [--callers 20] [--per-caller 500] [--warmup 50] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import sqlalchemy

from bench.machine import summary
from emulators.postgres import start_postgres
from emulators.proc import exit_on_sigterm
from shared.ratelimit import Limit, take

TARGET_P99_MS = 5.0
# Generous enough that the hot key is not denied all the time; the statement is the same
# either way (a denial still updates the row).
LIMIT = Limit("bench", 1000, 200)
Op = Callable[[sqlalchemy.Connection, int, int], object]


@dataclass(frozen=True)
class Result:
    name: str
    autocommit: bool
    latencies_ms: list[float]
    wall_s: float
    allowed: int | None

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def select_one(conn: sqlalchemy.Connection, caller: int, i: int) -> object:
    return conn.execute(sqlalchemy.text("SELECT 1")).scalar_one()


def hot_key(conn: sqlalchemy.Connection, caller: int, i: int) -> object:
    return take(conn, LIMIT, "ip:192.0.2.1").allowed


def key_per_caller(conn: sqlalchemy.Connection, caller: int, i: int) -> object:
    return take(conn, LIMIT, f"ip:10.0.0.{caller}").allowed


def new_key_each(conn: sqlalchemy.Connection, caller: int, i: int) -> object:
    return take(conn, LIMIT, f"ip:10.1.{caller}.{i}").allowed


# (name, operation, autocommit): autocommit drops the BEGIN and COMMIT round trips.
SCENARIOS: list[tuple[str, Op, bool]] = [
    ("SELECT 1 (baseline)", select_one, False),
    ("take: one hot key", hot_key, False),
    ("take: key per caller", key_per_caller, False),
    ("take: new key each", new_key_each, False),
    ("SELECT 1, autocommit", select_one, True),
    ("take: one hot key, autocommit", hot_key, True),
    ("take: key per caller, autocommit", key_per_caller, True),
]


def run(engine: sqlalchemy.Engine, name: str, op: Op, autocommit: bool, callers: int,
        per_caller: int, warmup: int, round_no: int, rate: float = 0.0) -> Result:
    gate = threading.Barrier(callers + 1)
    isolation = "AUTOCOMMIT" if autocommit else "READ COMMITTED"

    def once(conn: sqlalchemy.Connection, c: int, i: int) -> object:
        if autocommit:  # no begin(): its commit() would still send COMMIT (3 round trips)
            return op(conn, c, i)
        with conn.begin():
            return op(conn, c, i)

    def caller(c: int) -> list[tuple[float, object]]:
        with engine.connect().execution_options(isolation_level=isolation) as conn:
            for i in range(warmup):
                once(conn, c, -1 - i - round_no * warmup)
            gate.wait()
            out = []
            # Open loop (rate > 0): each caller sends on a fixed schedule, staggered, and latency
            # counts from the scheduled time, so queueing behind a slow call is not hidden.
            t0 = time.perf_counter() + (c / (rate * callers) if rate else 0.0)
            for i in range(per_caller):
                began = time.perf_counter()
                if rate:
                    scheduled = t0 + i / rate
                    if scheduled > began:
                        time.sleep(scheduled - began)
                    began = scheduled
                outcome = once(conn, c, i + round_no * per_caller)
                out.append(((time.perf_counter() - began) * 1e3, outcome))
            return out

    with ThreadPoolExecutor(callers) as pool:
        futures = [pool.submit(caller, c) for c in range(callers)]
        gate.wait()  # every caller connected and warmed up
        started = time.perf_counter()
        samples = [s for f in futures for s in f.result()]
        wall = time.perf_counter() - started
    allowed = None if op is select_one else sum(1 for _, ok in samples if ok is True)
    return Result(name, autocommit, [ms for ms, _ in samples], wall, allowed)


def machine(engine: sqlalchemy.Engine, source: str) -> str:
    with engine.connect() as conn:
        server = str(conn.execute(sqlalchemy.text("SHOW server_version")).scalar_one())
    return (f"{summary()}, "
            f"PostgreSQL {server.split()[0]} ({source}, fsync off, loopback TCP), "
            f"SQLAlchemy {metadata.version('sqlalchemy')}, psycopg {metadata.version('psycopg')}")


def markdown(results: list[Result], about: str, callers: int, per_caller: int,
             rounds: int, rate: float = 0.0) -> str:
    # Each take against the SELECT 1 with the same round trips (same commit mode).
    base = {r.autocommit: r for r in results if r.allowed is None}
    lines = [
        "## Rate-limit decisions", "",
        f"{callers} concurrent callers x {per_caller} decisions per scenario, in {rounds} rounds "
        f"(each in its own transaction, or autocommit), "
        + (f"each caller at {rate:g}/s on a fixed schedule (open loop, {rate * callers:g}/s "
           "offered), " if rate else "each caller as fast as it can (closed loop), ")
        + f"{about}. "
        f"Target: p99 < {TARGET_P99_MS:g} ms.", "",
        "| scenario | p50 ms | p90 ms | p99 ms | max ms | decisions/s "
        "| p50, p99 vs SELECT 1 | allowed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        flag = " **over target**" if r.pct(99) >= TARGET_P99_MS else ""
        allowed = "-" if r.allowed is None else f"{r.allowed}/{len(r.latencies_ms)}"
        lines.append(
            f"| {r.name}{flag} | {r.pct(50):.2f} | {r.pct(90):.2f} | {r.pct(99):.2f} "
            f"| {max(r.latencies_ms):.2f} | {len(r.latencies_ms) / r.wall_s:,.0f} "
            f"| {r.pct(50) / base[r.autocommit].pct(50):.2f}x, "
            f"{r.pct(99) / base[r.autocommit].pct(99):.2f}x | {allowed} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--callers", type=int, default=20)
    parser.add_argument("--per-caller", type=int, default=500,
                        help="decisions per caller and scenario, split over the rounds")
    parser.add_argument("--warmup", type=int, default=50, help="uncounted decisions per caller")
    parser.add_argument("--rate-per-caller", type=float, default=0.0,
                        help="decisions/s per caller on a fixed schedule; 0: as fast as possible")
    parser.add_argument("--rounds", type=int, default=5,
                        help="scenarios run round-robin this many times, so drift hits all")
    args = parser.parse_args(argv)
    exit_on_sigterm()  # a killed benchmark still stops its PostgreSQL

    with tempfile.TemporaryDirectory(prefix="bench-ratelimit-") as tmp:
        handle = start_postgres(Path(tmp))
        engine: sqlalchemy.Engine | None = None
        try:
            os.environ.update({"DATABASE_URL": handle.url, "APP_ENV": "local",
                               "GOOGLE_CLOUD_PROJECT": os.environ.get("GOOGLE_CLOUD_PROJECT",
                                                                      "bench")})
            from shared import clients, db, migrate

            clients.reset()
            migrate.upgrade()
            db.engine().dispose()  # the migration's small pool; the bench uses its own
            engine = sqlalchemy.create_engine(handle.url, pool_size=args.callers,
                                              max_overflow=0)
            samples: dict[str, list[Result]] = {name: [] for name, _, _ in SCENARIOS}
            each = max(1, args.per_caller // args.rounds)
            for round_no in range(args.rounds):
                shift = round_no % len(SCENARIOS)  # no scenario always runs first or last
                for name, op, autocommit in SCENARIOS[shift:] + SCENARIOS[:shift]:
                    samples[name].append(run(engine, name, op, autocommit, args.callers, each,
                                             args.warmup, round_no, args.rate_per_caller))
                sys.stderr.write(f"round {round_no + 1}/{args.rounds} done\n")
            merged = [Result(name, rs[0].autocommit, [ms for r in rs for ms in r.latencies_ms],
                             sum(r.wall_s for r in rs),
                             None if rs[0].allowed is None else sum(r.allowed or 0 for r in rs))
                      for name, rs in samples.items()]
            about = machine(engine, handle.source)
        finally:
            if engine is not None:
                engine.dispose()
            handle.stop()
    sys.stdout.write(markdown(merged, about, args.callers, each * args.rounds, args.rounds,
                              args.rate_per_caller))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
