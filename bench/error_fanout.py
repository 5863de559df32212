"""Error fan-out throughput (errors/s) through `error_groups.handle_errors`, the domain function
the `error_fanout` consumer calls per delivery, against a real PostgreSQL and the official
Firestore emulator (both started here, as the local cloud does).

Each delivery is one `telemetry.error_batch` envelope: aggregation and fingerprinting in Python,
the claim of the envelope id, the group upserts, distinct users, per-minute counts, the
notification decisions (one transaction), and the Firestore feed (one batch per delivery:
group documents, one counter shard each, the newest errors per service; then pruning the
latest-errors lists). No webhook destinations exist, so no deliveries are published.

Scenarios:
- storm: every error has one fingerprint (messages differ only in numbers), many users;
- mixed: errors spread over `--fingerprints` fingerprints in 10 services;
- mixed, database only: the same without the Firestore feed (what the feed costs).

    python -m bench.error_fanout [--envelopes 20] [--batch 2000] [--fingerprints 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.machine import summary
from emulators.postgres import start_postgres
from emulators.proc import exit_on_sigterm
from emulators.services import start_firestore_emulator

PROJECT = "bench"


@dataclass(frozen=True)
class Result:
    name: str
    errors: int
    wall_s: float
    per_envelope_ms: list[float]
    notifications: int

    @property
    def rate(self) -> float:
        return self.errors / self.wall_s


def make_errors(n: int, fingerprints: int, seed: int, at: datetime, tenant: str
                ) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        fp = (seed * n + i) % fingerprints
        out.append({
            "kind": "span", "trace_id": uuid.uuid4().hex, "span_id": uuid.uuid4().hex[:16],
            "tenant": tenant, "service": f"svc-{fp % 10}", "environment": "prod",
            "name": "GET /orders", "time": (at + timedelta(milliseconds=i)).isoformat(),
            "message": f"operation {fp} failed after {i} ms for order {seed * n + i}",
            "user_id": f"user-{i % 500}", "exception_type": f"Error{fp}",
            "exception_message": f"operation {fp} failed after {i} ms for order {seed * n + i}",
            "stacktrace": 'Traceback (most recent call last):\n'
                          f'  File "/app/mod{fp}.py", line {i % 90 + 1}, in handler\n'
                          '    raise Error()'})
    return out


def run(name: str, envelopes: int, batch: int, fingerprints: int, feed: bool) -> Result:
    """Each scenario in its own tenant: its fingerprints are new to it."""
    from shared import error_groups
    from shared.events import Envelope

    at = datetime.now(UTC) - timedelta(minutes=10)
    prepared = [Envelope("telemetry.error_batch",
                         {"errors": make_errors(batch, fingerprints, seed, at, name)})
                for seed in range(envelopes)]
    times, notified = [], 0
    started = time.perf_counter()
    for envelope in prepared:
        began = time.perf_counter()
        outcome = error_groups.handle_errors(envelope, feed=feed)
        times.append((time.perf_counter() - began) * 1e3)
        notified += len(outcome.notifications)
    return Result(name, envelopes * batch, time.perf_counter() - started, times, notified)


def markdown(results: list[Result], envelopes: int, batch: int) -> str:
    lines = ["## Error fan-out", "",
             f"{summary()}. `error_groups.handle_errors` (see `bench/error_fanout.py`): "
             f"{envelopes} envelopes of {batch:,} errors per scenario, one after another (one "
             "instance, one delivery at a time), real PostgreSQL and the Firestore emulator.",
             "", "| scenario | errors | errors/s | ms per envelope (median) | notifications |",
             "| --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r.name} | {r.errors:,} | {r.rate:,.0f} "
                     f"| {statistics.median(r.per_envelope_ms):.0f} | {r.notifications} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--envelopes", type=int, default=20)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--fingerprints", type=int, default=200)
    args = parser.parse_args(argv)
    exit_on_sigterm()  # a killed benchmark still stops its PostgreSQL and emulator

    with tempfile.TemporaryDirectory(prefix="bench-errors-") as tmp:
        postgres = start_postgres(Path(tmp))
        firestore = None
        try:
            firestore = start_firestore_emulator(Path(tmp), PROJECT)
            os.environ.update({"DATABASE_URL": postgres.url, "APP_ENV": "local",
                               "GOOGLE_CLOUD_PROJECT": PROJECT,
                               "FIRESTORE_EMULATOR_HOST": firestore.host})
            from shared import clients, migrate

            clients.reset()
            migrate.upgrade()
            run("warm-up", 2, 200, 5, feed=True)
            results = [
                run("storm (1 fingerprint)", args.envelopes, args.batch, 1, feed=True),
                run(f"mixed ({args.fingerprints} fingerprints)", args.envelopes, args.batch,
                    args.fingerprints, feed=True),
                run(f"mixed ({args.fingerprints} fingerprints), database only",
                    args.envelopes, args.batch, args.fingerprints, feed=False),
            ]
            sys.stdout.write(markdown(results, args.envelopes, args.batch))
        finally:
            from shared import db

            if db.engine.cache_info().currsize:
                db.engine().dispose()
            if firestore is not None:
                firestore.stop()
            postgres.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
