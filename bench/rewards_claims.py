"""Reward claims per second with concurrent clients, p99 latency, and double grants.

Starts its own PostgreSQL (as the local cloud does), applies the migrations, creates the users
and one active event whose reward has a global budget, then runs the claim path as the
`reward_claim` handler does after authentication: `idempotency.begin` (its own transaction)
and `claims.claim` (evaluate the conditions against the activity facts, take the user's slot,
ledger entries, the outbox row, the stored response, the budget decrement; one transaction),
through the product's own engine (one instance's pool). Not measured: HTTP, token checks and
the Pub/Sub publish after commit (the outbox rows are left for the relay).

Scenarios:
- distinct users: C clients, each claiming for users no one else claims for (every claim is
  a grant); the budget equals the number of claims, so it ends at exactly 0.
- contention: C clients claim for the same users at the same time, each with its own
  Idempotency-Key, on an event whose budget covers only half the users; every grant beyond
  one per user, or beyond the budget, is counted as a double grant / overspend (must be 0).

    python -m bench.rewards_claims [--clients 50] [--claims 4000] [--contended-users 100]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy

from bench.machine import summary
from emulators.postgres import start_postgres
from emulators.proc import exit_on_sigterm

if TYPE_CHECKING:
    from shared.outbox import OutboxTransaction

TARGET_PER_S = 500.0


@dataclass(frozen=True)
class Result:
    name: str
    latencies_ms: list[float]
    wall_s: float
    granted: int
    refused: int

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@contextmanager
def unpublished() -> Iterator[OutboxTransaction]:
    """A claim transaction whose events stay in the outbox (no Pub/Sub in this benchmark)."""
    from shared import db
    from shared.outbox import OutboxTransaction

    with db.transaction() as conn:
        yield OutboxTransaction(conn)


def one_claim(user_id: str, event_id: str) -> bool:
    """What the handler does after authentication; True when granted."""
    from shared import claims, errors, idempotency

    scope, key = f"reward_claim:{user_id}", str(uuid.uuid4())
    stored = idempotency.begin(scope, key, idempotency.request_hash({"event": event_id}))
    assert stored is None
    try:
        status, _ = claims.claim(user_id, event_id, claims.Idempotency(scope, key),
                                 transaction=unpublished)
    except errors.AppError:
        idempotency.abandon(scope, key)
        return False
    return status == 201


def make_users(engine: sqlalchemy.Engine, count: int) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(
            "INSERT INTO users (id, email, display_name) VALUES (:id, :email, 'bench')"),
            [{"id": i, "email": f"{i}@bench.example"} for i in ids])
    return ids


def make_event(engine: sqlalchemy.Engine, creator: str, budget: int) -> str:
    from shared import reward_events

    now = datetime.now(UTC)
    with engine.begin() as conn:
        event = reward_events.create(conn, creator, {
            "title": "bench", "status": "active",
            "starts_at": (now - timedelta(days=1)).isoformat(),
            "ends_at": (now + timedelta(days=1)).isoformat(),
            "conditions": [{"type": "chat_messages", "min": 1}],
            "rewards": [{"type": "points", "quantity": 1, "budget": budget}]})
    return str(event["id"])


def give_activity(engine: sqlalchemy.Engine, users: list[str]) -> None:
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(
            "INSERT INTO activity_facts (user_id, kind, key, occurred_at) "
            "VALUES (:u, 'chat_message', :k, now())"),
            [{"u": u, "k": str(uuid.uuid4())} for u in users])


def _client_threads(work: list[list[tuple[str, str]]], gate: Any
                    ) -> tuple[list[tuple[float, bool]], float, float]:
    """Run one thread per client (after `gate`); (samples, started, finished) in epoch s."""
    ready = threading.Barrier(len(work) + 1)

    def client(jobs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        ready.wait()
        out = []
        for user, event in jobs:
            began = time.perf_counter()
            granted = one_claim(user, event)
            out.append(((time.perf_counter() - began) * 1e3, granted))
        return out

    with ThreadPoolExecutor(len(work)) as pool:
        futures = [pool.submit(client, jobs) for jobs in work]
        gate.wait()  # every process's clients start together
        started = time.time()
        ready.wait()
        samples = [s for f in futures for s in f.result()]
        return samples, started, time.time()


def _process(work: list[list[tuple[str, str]]], gate: Any, results: Any) -> None:
    from shared import clients, db

    clients.reset()  # this process's own engine and pool, like another function instance
    # Built before the threads start: the cached getter is not locked, and 50 threads calling
    # it at once on a cold cache would each build an engine (and a pool) of their own.
    db.engine()
    try:
        results.put(_client_threads(work, gate))
    except BaseException as exc:
        results.put(exc)  # the parent must not wait for results that will never come
        raise
    finally:
        db.engine().dispose()


def run(name: str, processes: int, work: list[list[tuple[str, str]]]) -> Result:
    """The clients' work, split over `processes` (each a separate instance with its own pool;
    one process is one CPU at most, as the GIL allows)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    gate, results = ctx.Barrier(processes), ctx.Queue()
    children = [ctx.Process(target=_process, args=(work[p::processes], gate, results))
                for p in range(processes)]
    for child in children:
        child.start()
    parts = [results.get() for _ in children]
    for child in children:
        child.join()
    for part in parts:
        if isinstance(part, BaseException):
            raise RuntimeError(f"a client process failed: {part!r}")
    samples = [s for part in parts for s in part[0]]
    wall = max(p[2] for p in parts) - min(p[1] for p in parts)
    granted = sum(1 for _, ok in samples if ok)
    return Result(name, [ms for ms, _ in samples], wall, granted, len(samples) - granted)


def double_grants(engine: sqlalchemy.Engine, event_id: str) -> tuple[int, int, int]:
    """(grants beyond one per user, units paid beyond the budget, ledger imbalance)."""
    with engine.connect() as conn:
        extra = conn.execute(sqlalchemy.text(
            "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM reward_claims "
            "WHERE event_id = :e AND status = 'granted' GROUP BY user_id) g"),
            {"e": event_id}).scalar_one()
        over = conn.execute(sqlalchemy.text(
            "SELECT (SELECT coalesce(sum(amount), 0) FROM reward_ledger l JOIN reward_claims c "
            "ON c.id = l.claim_id WHERE c.event_id = :e AND l.amount > 0) - budget "
            "FROM event_rewards WHERE event_id = :e"), {"e": event_id}).scalar_one()
        imbalance = conn.execute(sqlalchemy.text(
            "SELECT coalesce(sum(l.amount), 0) FROM reward_ledger l JOIN reward_claims c "
            "ON c.id = l.claim_id WHERE c.event_id = :e"), {"e": event_id}).scalar_one()
    return int(extra), max(0, int(over or 0)), int(imbalance)


def markdown(results: list[tuple[Result, tuple[int, int, int]]], about: str, clients: int,
             processes: int) -> str:
    lines = [
        "## Reward claims", "",
        f"{clients} concurrent clients (threads) spread over {processes} process(es), each "
        "with the product's engine (10 pooled connections, as one function instance), "
        f"{about}. Each claim: `idempotency.begin` + `claims.claim` (see "
        f"`bench/rewards_claims.py`). Target: at least {TARGET_PER_S:g} claims/s on distinct "
        "users; 0 double grants.", "",
        "| scenario | claims | granted | refused | claims/s | p50 ms | p99 ms | max ms "
        "| double grants | overspent units | ledger sum |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r, (extra, over, imbalance) in results:
        lines.append(
            f"| {r.name} | {len(r.latencies_ms)} | {r.granted} | {r.refused} "
            f"| {len(r.latencies_ms) / r.wall_s:,.0f} | {r.pct(50):.1f} | {r.pct(99):.1f} "
            f"| {max(r.latencies_ms):.1f} | {extra} | {over} | {imbalance} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--claims", type=int, default=4000,
                        help="claims in the distinct-users scenario (one user each)")
    parser.add_argument("--contended-users", type=int, default=100,
                        help="users every client claims for in the contention scenario")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--processes", type=int, default=2,
                        help="processes the clients are spread over (function instances)")
    args = parser.parse_args(argv)
    exit_on_sigterm()  # a killed benchmark still stops its PostgreSQL

    with tempfile.TemporaryDirectory(prefix="bench-rewards-") as tmp:
        handle = start_postgres(Path(tmp))
        engine: sqlalchemy.Engine | None = None
        try:
            os.environ.update({"DATABASE_URL": handle.url, "APP_ENV": "local",
                               "GOOGLE_CLOUD_PROJECT": os.environ.get("GOOGLE_CLOUD_PROJECT",
                                                                      "bench")})
            from shared import clients, migrate

            clients.reset()
            migrate.upgrade()
            engine = sqlalchemy.create_engine(handle.url)
            total = args.warmup + args.claims
            users = make_users(engine, total + args.contended_users + 1)
            creator, contended = users[-1], users[total:total + args.contended_users]
            give_activity(engine, users[:-1])
            results: list[tuple[Result, Any]] = []

            warm = make_event(engine, creator, args.warmup)
            run("warm-up", args.processes, [[(u, warm) for u in users[c:args.warmup:args.clients]]
                                          for c in range(args.clients)])
            event = make_event(engine, creator, args.claims)
            distinct = users[args.warmup:total]
            result = run("distinct users", args.processes,
                         [[(u, event) for u in distinct[c::args.clients]]
                          for c in range(args.clients)])
            results.append((result, double_grants(engine, event)))

            hot = make_event(engine, creator, args.contended_users // 2)
            result = run("contention: every client claims for the same users", args.processes,
                         [[(u, hot) for u in contended] for _ in range(args.clients)])
            results.append((result, double_grants(engine, hot)))
            with engine.connect() as conn:
                server = str(conn.execute(sqlalchemy.text("SHOW server_version")).scalar_one())
            about = (f"{summary()}, PostgreSQL {server.split()[0]} ({handle.source}, loopback "
                     f"TCP), SQLAlchemy {metadata.version('sqlalchemy')}, "
                     f"psycopg {metadata.version('psycopg')}")
        finally:
            from shared import db

            if db.engine.cache_info().currsize:
                db.engine().dispose()
            if engine is not None:
                engine.dispose()
            handle.stop()
    sys.stdout.write(markdown(results, about, args.clients, args.processes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
