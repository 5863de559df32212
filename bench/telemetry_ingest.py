"""Telemetry ingest throughput.

1. **Writer alone vs raw COPY**: the same span rows (as `span_ingest` publishes them) written by
   `span_writer.store` (COPY into staging, then INSERT ... ON CONFLICT DO NOTHING into the day
   partition, error announcement) and by a bare `COPY spans FROM STDIN` into the same table of
   the same database, batch by batch, interleaved. Target: the writer at >= 50% of raw COPY.
2. **End to end**: OTLP/HTTP protobuf requests (1,000 spans each) from concurrent clients to the
   real `span_ingest` process, through the Pub/Sub emulator and the push bridge, to the real
   `span_writer` process, until every span is visible in PostgreSQL. Target: >= 10,000
   spans/s on this 2-core machine (everything above shares its two cores).

    python -m bench.telemetry_ingest [--spans 200000] [--clients 4]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.machine import summary
from emulators.proc import exit_on_sigterm

SPANS_PER_REQUEST = 1000
PROJECT = "bench"
SERVICES = ("checkout", "catalog", "payments", "search")
OPERATIONS = ("GET /cart", "POST /orders", "GET /items/{id}", "SELECT items", "charge")


def otlp_request(spans: int, seed: int) -> bytes:
    """An ExportTraceServiceRequest of `spans` spans: traces of 10 spans, 8 attributes each,
    1% errors, in the last minute."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    rng = random.Random(seed)
    request = ExportTraceServiceRequest()
    now = time.time_ns()
    resource_spans = request.resource_spans.add()
    for key, value in (("service.name", SERVICES[seed % len(SERVICES)]),
                       ("deployment.environment.name", "bench"),
                       ("service.version", "1.4.2"), ("host.name", f"host-{seed % 7}")):
        attribute = resource_spans.resource.attributes.add()
        attribute.key, attribute.value.string_value = key, value
    scope = resource_spans.scope_spans.add()
    scope.scope.name = "bench"
    trace_id = b""
    root = b""
    for i in range(spans):
        span = scope.spans.add()
        if i % 10 == 0:
            trace_id, root = rng.randbytes(16), b""
        span.trace_id, span.span_id = trace_id, rng.randbytes(8)
        if root:
            span.parent_span_id = root
        else:
            root = span.span_id
        span.name = OPERATIONS[i % len(OPERATIONS)]
        span.kind = 2 if i % 10 == 0 else 3
        start = now - rng.randrange(60_000_000_000)
        span.start_time_unix_nano, span.end_time_unix_nano = start, start + rng.randrange(
            100_000, 900_000_000)
        for key, value in (("http.request.method", "GET"), ("http.route", span.name),
                           ("http.response.status_code", "200"), ("net.peer.name", "db"),
                           ("db.system", "postgresql"), ("user.id", f"u-{i % 97}"),
                           ("code.function", "handle"), ("thread.name", "worker-3")):
            attribute = span.attributes.add()
            attribute.key, attribute.value.string_value = key, value
        if rng.random() < 0.01:
            span.status.code, span.status.message = 2, "boom"
    return bytes(request.SerializeToString())


def csv_batch(raw: bytes) -> bytes:
    from shared import otlp

    outcome = otlp.Outcome()
    otlp.span_rows(otlp.parse_traces(raw, "protobuf", outcome), "", outcome)
    return otlp.encode_csv(outcome.rows)


def writer_vs_copy(batches: list[bytes]) -> tuple[float, float]:
    """Spans/s of span_writer.store and of a bare COPY, over the same batches, interleaved
    (the COPY rows get fresh ids so neither run skips duplicates of the other)."""
    from shared import db, span_writer, telemetry_store
    from shared.otlp import SPAN_COLUMNS

    with db.transaction() as conn:
        telemetry_store.apply_retention(conn, 7)
    writer_s = copy_s = 0.0
    rows = 0
    for data in batches:
        batch = span_writer.Batch("traces", data, None)
        started = time.perf_counter()
        span_writer.store(batch)
        writer_s += time.perf_counter() - started
        renamed = _fresh_ids(data)
        started = time.perf_counter()
        with db.transaction() as conn:
            span_writer.copy_rows(conn, "spans", SPAN_COLUMNS, renamed)
        copy_s += time.perf_counter() - started
        rows += data.count(b"\n")
    return rows / writer_s, rows / copy_s


def _fresh_ids(data: bytes) -> bytes:
    """The same rows with another span id (its first byte changed), so they are new spans."""
    out = []
    for line in data.split(b"\n"):
        if line:
            first, second, rest = line.split(b",", 2)  # trace id, span id (\x + hex), rest
            flipped = b"00" if second[2:4] == b"ff" else b"ff"
            out.append(b",".join((first, b"\\x" + flipped + second[4:], rest)))
    return b"\n".join(out) + b"\n"


def end_to_end(requests_body: list[bytes], clients: int, env: dict[str, str], run: Path,
               expected: int) -> float:
    import requests
    import sqlalchemy

    from emulators.bridge import Bridge
    from emulators.functions import start_functions
    from infra.topology import TOPOLOGY, Topology

    names = ("span_ingest", "span_writer")
    topology = Topology(functions=tuple(TOPOLOGY.function(n) for n in names),
                        topics=TOPOLOGY.topics,
                        subscriptions=tuple(s for s in TOPOLOGY.subscriptions
                                            if s.function == "span_writer"),
                        schedules=(), buckets=())
    running = start_functions(topology.functions, env | {"PATH": "/usr/bin:/bin"},
                              run / "logs")
    urls = {item.function.name: item.url for item in running}
    bridge = Bridge(topology, PROJECT, urls)
    bridge.start()
    engine = sqlalchemy.create_engine(env["DATABASE_URL"])
    try:
        with engine.connect() as conn:
            before = conn.execute(sqlalchemy.text("SELECT count(*) FROM spans")).scalar_one()
        session = requests.Session()

        def send(body: bytes) -> None:
            for _ in range(20):
                resp = session.post(f"{urls['span_ingest']}/v1/traces", data=body, timeout=60,
                                    headers={"Content-Type": "application/x-protobuf"})
                if resp.status_code == 200:
                    return
                time.sleep(float(resp.headers.get("Retry-After", "0.2")))
            raise SystemExit(f"ingest kept failing: {resp.status_code} {resp.text[:200]}")

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(send, requests_body))
        while True:
            with engine.connect() as conn:
                count = conn.execute(sqlalchemy.text("SELECT count(*) FROM spans")).scalar_one()
            if count - before >= expected:
                break
            if time.perf_counter() - started > 180:
                raise SystemExit(f"only {count - before} of {expected} spans arrived")
            time.sleep(0.05)
        return expected / (time.perf_counter() - started)
    finally:
        engine.dispose()
        bridge.stop()
        for item in running:
            item.process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=200_000)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    exit_on_sigterm()

    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    from emulators.bridge import ensure_topics
    from emulators.postgres import start_postgres
    from emulators.services import start_pubsub_emulator
    from infra.topology import TOPOLOGY
    from shared import clients, migrate

    count = max(1, args.spans // SPANS_PER_REQUEST)
    bodies = [otlp_request(SPANS_PER_REQUEST, seed) for seed in range(count)]
    with tempfile.TemporaryDirectory(prefix="bench-telemetry-") as tmp:
        run = Path(tmp)
        pg = start_postgres(run)
        pubsub = start_pubsub_emulator(run, PROJECT)
        try:
            env = {"DATABASE_URL": pg.url, "APP_ENV": "local", "GOOGLE_CLOUD_PROJECT": PROJECT,
                   "PUBSUB_EMULATOR_HOST": pubsub.host, "TELEMETRY_ANONYMOUS_INGEST": "true"}
            os.environ |= env
            clients.reset()
            ensure_topics(TOPOLOGY, PROJECT, pubsub_v1.PublisherClient())
            migrate.upgrade()
            started = time.perf_counter()
            # The writer comparison gets its own spans: the end-to-end run must find none of
            # its spans already stored.
            batches = [csv_batch(otlp_request(SPANS_PER_REQUEST, count + seed))
                       for seed in range(max(1, count // 2))]
            convert_rate = len(batches) * SPANS_PER_REQUEST / (time.perf_counter() - started)
            writer_rate, copy_rate = writer_vs_copy(batches)
            e2e = end_to_end(bodies, args.clients, env, run, count * SPANS_PER_REQUEST)
        finally:
            clients.publisher().stop()
            pubsub.stop()
            pg.stop()
    rows = [f"Machine: {summary()}, {time.strftime('%Y-%m-%d')}. "
            f"{SPANS_PER_REQUEST} spans per request, 8 attributes each.", "",
            "| measure | spans/s | vs raw COPY |", "| --- | --- | --- |",
            f"| raw `COPY spans FROM STDIN` (baseline) | {copy_rate:,.0f} | 1.00x |",
            f"| `span_writer.store` (COPY in a savepoint; duplicates via staging + ON CONFLICT; "
            f"errors announced) "
            f"| {writer_rate:,.0f} | {writer_rate / copy_rate:.2f}x |",
            f"| OTLP protobuf -> rows (decode + checks + CSV, one core) | {convert_rate:,.0f} "
            f"| - |",
            f"| end to end ({args.clients} clients -> span_ingest -> Pub/Sub -> span_writer "
            f"-> visible) | {e2e:,.0f} | - |"]
    sys.stdout.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
