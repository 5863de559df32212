"""Uploads: signed-URL issue latency and finalize throughput.

Starts its own PostgreSQL and fake-gcs-server (as the local cloud does), applies the
migrations, then:

1. issue latency: `POST /uploads` through the real `upload` function app in process
   (functions-framework's Flask app: token check with its session lookup, body validation,
   character/quota checks, the record's INSERT, V4 signing with the local key), one request at a
   time, after a warm-up; the signing step alone is timed too, to show its share;
2. finalize throughput: N objects PUT to their quarantine names first, then the finalize logic
   (`shared.upload_finalize.finalize`, what the consumer runs per notification: record lock,
   object metadata, ranged read of the first bytes, copy out of quarantine, delete, accept)
   over all of them with W worker threads, as the consumer's concurrency would.

Everything is on loopback on this machine, so the numbers are the code's and the emulators'
costs, not Cloud Storage's (whose per-request latency is tens of milliseconds).

    python -m bench.uploads [--issues 500] [--warmup 50] [--objects 300] [--workers 1,4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

from bench.machine import summary
from emulators.postgres import start_postgres
from emulators.proc import exit_on_sigterm
from emulators.services import local_signing_key, start_fake_gcs

REPO = Path(__file__).resolve().parent.parent
BUCKET = "uploads"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _caller() -> dict[str, str]:
    """A user with a session, made the way sign-up makes them (events are left in the
    outbox: no Pub/Sub here), and its bearer header."""
    from shared import accounts, db
    from shared.outbox import OutboxTransaction

    with db.transaction() as conn:
        pair = accounts.signup(OutboxTransaction(conn), "bench@example.com",
                               "a long and unusual passphrase", "Bench")
    return {"Authorization": f"Bearer {pair.access_token}"}


def issue_latency(issues: int, warmup: int, png: bytes) -> dict[str, float]:
    from functions_framework import create_app

    from shared import storage_signing, uploads

    upload = create_app(  # type: ignore[no-untyped-call]
        "upload", str(REPO / "functions/upload/main.py")).test_client()
    headers = _caller()
    body = {"purpose": "attachment", "content_type": "image/png", "size": len(png),
            "filename": "bench.png"}
    latencies: list[float] = []
    for i in range(warmup + issues):
        started = time.perf_counter()
        resp = upload.post("/uploads", json=body, headers=headers)
        elapsed = (time.perf_counter() - started) * 1000
        if resp.status_code != 201:
            raise RuntimeError(f"issue failed: {resp.status_code} {resp.get_data(as_text=True)}")
        if i >= warmup:
            latencies.append(elapsed)
    blob = uploads.bucket().blob("quarantine/bench/sign-only")
    signing: list[float] = []
    for _ in range(issues):
        started = time.perf_counter()
        storage_signing.signed_url(blob, "PUT", timedelta(minutes=15), content_type="image/png",
                                   headers={"x-goog-content-length-range": "1,1",
                                            "x-goog-if-generation-match": "0"})
        signing.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": pct(latencies, 50), "p90_ms": pct(latencies, 90),
            "p99_ms": pct(latencies, 99), "mean_ms": statistics.fmean(latencies),
            "sign_p50_ms": pct(signing, 50), "sign_p99_ms": pct(signing, 99)}


def prepare_objects(count: int, png: bytes, owners: int) -> list[str]:
    """Pending records of `owners` users with their objects in quarantine, as after the
    clients' PUTs."""
    import uuid

    import sqlalchemy

    from shared import db, uploads

    users = [str(uuid.uuid4()) for _ in range(owners)]
    with db.transaction() as conn:
        for user in users:
            conn.execute(sqlalchemy.text("INSERT INTO users (id, display_name) "
                                         "VALUES (:id, 'bench')"), {"id": user})
    names = []
    for i in range(count):
        with db.transaction() as conn:
            record = uploads.create(conn, users[i % owners], {
                "purpose": "attachment", "content_type": "image/png", "size": len(png)},
                "signed_url")
        uploads.bucket().blob(record.object_name).upload_from_string(
            png, content_type="image/png")
        names.append(record.object_name)
    return names


def finalize_throughput(names: list[str], workers: int) -> dict[str, float]:
    from shared.upload_finalize import ObjectEvent, finalize

    def one(name: str) -> tuple[str, float]:
        started = time.perf_counter()
        outcome = finalize(ObjectEvent("OBJECT_FINALIZE", BUCKET, name, None))
        return outcome, (time.perf_counter() - started) * 1000

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, names))
    wall = time.perf_counter() - started
    outcomes = {outcome for outcome, _ in results}
    if outcomes != {"accepted"}:
        raise RuntimeError(f"unexpected outcomes: {outcomes}")
    each = [ms for _, ms in results]
    return {"objects": len(names), "workers": workers, "objects_per_s": len(names) / wall,
            "p50_ms": pct(each, 50), "p99_ms": pct(each, 99)}


def markdown(issue: dict[str, float], finals: list[dict[str, float]], issues: int,
             about: str) -> str:
    lines = [
        f"Machine: {about}", "",
        f"Signed-URL issue, `POST /uploads` in process, {issues} requests one at a time:", "",
        "| p50 | p90 | p99 | mean | signing alone p50 / p99 |",
        "|---:|---:|---:|---:|---:|",
        f"| {issue['p50_ms']:.2f} ms | {issue['p90_ms']:.2f} ms | {issue['p99_ms']:.2f} ms | "
        f"{issue['mean_ms']:.2f} ms | {issue['sign_p50_ms']:.2f} / {issue['sign_p99_ms']:.2f} ms |",
        "", "Finalize (per object: lock, metadata, ranged read, copy, delete, accept):", "",
        "| workers | objects | objects/s | p50 per object | p99 per object |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {f['workers']:.0f} | {f['objects']:.0f} | {f['objects_per_s']:.1f} | "
              f"{f['p50_ms']:.1f} ms | {f['p99_ms']:.1f} ms |" for f in finals]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--issues", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--objects", type=int, default=300, help="objects per worker setting")
    parser.add_argument("--workers", default="1,4", help="comma-separated thread counts")
    parser.add_argument("--owners", type=int, default=100,
                        help="users the objects belong to (one user's objects share a row)")
    parser.add_argument("--json", action="store_true", help="also print the raw numbers")
    args = parser.parse_args(argv)
    exit_on_sigterm()  # a killed benchmark still stops its services

    from shared import cards

    png = cards.placeholder_image(64)
    with tempfile.TemporaryDirectory(prefix="bench-uploads-") as tmp:
        pg = start_postgres(Path(tmp))
        gcs = None
        try:
            gcs = start_fake_gcs(Path(tmp), "bench", None, [BUCKET], None)
            from shared.tokens import generate_signing_key

            os.environ.update({
                "DATABASE_URL": pg.url, "APP_ENV": "local", "GOOGLE_CLOUD_PROJECT": "bench",
                "STORAGE_EMULATOR_HOST": gcs.url, "STORAGE_SIGNING_KEY": local_signing_key("b"),
                "UPLOADS_BUCKET": BUCKET, "LOG_LEVEL": "WARNING",
                "JWT_SIGNING_KEYS": json.dumps([generate_signing_key("bench-1")])})
            for name in ("RATE_LIMIT_CLASS", "RATE_LIMIT_RATE", "RATE_LIMIT_BURST"):
                os.environ.pop(name, None)
            from shared import clients, migrate

            clients.reset()
            migrate.upgrade()
            issue = issue_latency(args.issues, args.warmup, png)
            sys.stderr.write("issue latency done\n")
            finals = []
            for workers in (int(w) for w in args.workers.split(",")):
                names = prepare_objects(args.objects, png, args.owners)
                finals.append(finalize_throughput(names, workers))
                sys.stderr.write(f"finalize with {workers} workers done\n")
            from shared import db

            db.engine().dispose()
        finally:
            if gcs is not None:
                gcs.stop()
            pg.stop()
    sys.stdout.write(markdown(issue, finals, args.issues, summary()))
    if args.json:
        sys.stdout.write(json.dumps({"issue": issue, "finalize": finals}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
