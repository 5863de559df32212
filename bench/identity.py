"""Identity benchmarks: login latency with the chosen argon2id parameters, and access-token
verification throughput on one core with a cached JWKS.

Login goes through the real `auth` function in-process (functions-framework's app, the router,
the database on a local PostgreSQL, the outbox), measured against `GET /healthz` through the same
app as the baseline. Verification runs `shared.auth.verify_token` with the JWKS resolver used in
production (PyJWKClient against a JWKS served on loopback, cache warm), against PyJWT's bare
`jwt.decode` with the key in hand as the baseline. Target (the issue): >= 5,000 verifications/s
per core.

    python -m bench.identity [--logins 60] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.machine import summary
from emulators.proc import exit_on_sigterm

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "a long and unusual passphrase"  # noqa: S105 - a benchmark account


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def timed(call: Callable[[], Any], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def bench_login(logins: int) -> list[tuple[str, list[float]]]:
    from functions_framework import create_app
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    from emulators.bridge import ensure_topics
    from emulators.postgres import start_postgres
    from emulators.services import start_pubsub_emulator
    from infra.topology import TOPOLOGY
    from shared import clients, migrate, passwords, tokens

    with tempfile.TemporaryDirectory(prefix="bench-identity-") as tmp:
        pg = start_postgres(Path(tmp))
        pubsub = start_pubsub_emulator(Path(tmp), "bench")
        try:
            # Login publishes its event after commit, as in production (here to the emulator).
            os.environ |= {"DATABASE_URL": pg.url, "APP_ENV": "local",
                           "GOOGLE_CLOUD_PROJECT": "bench",
                           "JWT_SIGNING_KEYS": json.dumps([tokens.generate_signing_key()]),
                           "PUBSUB_EMULATOR_HOST": pubsub.host}
            clients.reset()
            ensure_topics(TOPOLOGY, "bench", pubsub_v1.PublisherClient())
            migrate.upgrade()
            client = create_app(  # type: ignore[no-untyped-call]
                "auth", str(REPO / "functions/auth/main.py")).test_client()
            assert client.post("/signup", json={"email": "bench@example.com", "password": PASSWORD,
                                                "display_name": "Bench"}).status_code == 201
            body = {"email": "bench@example.com", "password": PASSWORD}
            stored = passwords.hash_password(PASSWORD)
            # Failures are throttled per address after 5, so each failing login uses its own.
            wrong = iter(range(logins))
            for n in range(logins):
                _expect(client.post("/signup", json={
                    "email": f"w{n}@example.com", "password": PASSWORD,
                    "display_name": "W"}), 201)
            unknown = iter(range(logins))
            rows = [
                ("GET /healthz (baseline)", timed(lambda: client.get("/healthz"), logins)),
                ("argon2id verify alone", timed(
                    lambda: passwords.verify_password(stored, PASSWORD), logins)),
                ("POST /login", timed(lambda: _expect(client.post("/login", json=body), 200),
                                      logins)),
                ("POST /login, wrong password (401)", timed(lambda: _expect(client.post(
                    "/login", json={"email": f"w{next(wrong)}@example.com",
                                    "password": "not the password at all"}), 401), logins)),
                ("POST /login, unknown email (401)", timed(lambda: _expect(client.post(
                    "/login", json={"email": f"nobody{next(unknown)}@example.com",
                                    "password": "not the password at all"}), 401), logins)),
            ]
        finally:
            clients.publisher().stop()
            pubsub.stop()
            pg.stop()
    return rows


def _expect(resp: Any, status: int) -> None:
    if resp.status_code != status:
        raise SystemExit(f"unexpected {resp.status_code}: {resp.get_data(as_text=True)}")


def bench_verify(seconds: float) -> list[tuple[str, float]]:
    import jwt

    from shared import tokens
    from shared.auth import jwks_resolver, verify_token

    key = tokens.parse_signing_keys(json.dumps([tokens.generate_signing_key("b1")]))[0]
    body = json.dumps({"keys": [key.public_jwk]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    now = int(time.time())
    claims = {"iss": "https://bench", "aud": "bench", "sub": "u", "roles": ["user"],
              "sid": "s", "jti": "j", "iat": now, "nbf": now, "exp": now + 3600}
    token = jwt.encode(claims, key.private_key, algorithm="RS256", headers={"kid": "b1"})
    public = key.private_key.public_key()
    resolver = jwks_resolver(f"http://127.0.0.1:{server.server_address[1]}/jwks.json")
    resolver(token)  # warm the JWKS cache: the steady state of a running instance
    try:
        return [
            ("jwt.decode with the key in hand (baseline)", _rate(lambda: jwt.decode(
                token, public, algorithms=["RS256"], audience="bench"), seconds)),
            ("shared.auth.verify_token, cached JWKS", _rate(lambda: verify_token(
                token, resolver, issuer="https://bench", audience="bench"), seconds)),
        ]
    finally:
        server.shutdown()


def _rate(call: Callable[[], Any], seconds: float) -> float:
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(100):
            call()
        count += 100
    return count / (time.perf_counter() - started)


def machine() -> str:
    return f"{summary()}, {time.strftime('%Y-%m-%d')}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--logins", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    exit_on_sigterm()  # a killed benchmark still stops its PostgreSQL
    from shared import passwords

    out = [f"Machine: {machine()}. argon2id m={passwords.MEMORY_KIB} KiB, "
           f"t={passwords.ITERATIONS}, p={passwords.PARALLELISM}.\n",
           "| login path | p50 | p99 | max |", "| --- | --- | --- | --- |"]
    for name, samples in bench_login(args.logins):
        out.append(f"| {name} | {statistics.median(samples):.1f} ms | {pct(samples, 99):.1f} ms "
                   f"| {max(samples):.1f} ms |")
    rates = bench_verify(args.seconds)
    out += ["", "| verification, one thread | per second | ratio |", "| --- | --- | --- |"]
    out += [f"| {name} | {rate:,.0f} | {rate / rates[0][1]:.2f}x |" for name, rate in rates]
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
