"""Server-side overhead of a chat turn: wall time of `POST /conversations/{id}/turns` minus the
model latency configured on the Vertex AI stand-in, at 1 and at N concurrent conversations, and
time to the first streamed byte. Runs the real chat_turn function in-process (functions-framework
app, router, auth, PostgreSQL, outbox publish to the Pub/Sub emulator, google-genai over HTTP to
the stand-in, which runs in its own process as Vertex AI would); HTTP parsing by gunicorn is not
included. Every scenario starts from fresh conversations, so in the 1-conversation rows the
history sent to the model grows from 1 to 2 x turns messages, as in a real long chat.

    python -m bench.chat_turn [--turns 40] [--concurrency 20] [--model-latency-ms 200]
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.machine import summary
from emulators.proc import exit_on_sigterm

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "a long and unusual passphrase"  # noqa: S105 - a benchmark account


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _app(name: str) -> Any:
    from functions_framework import create_app

    return create_app(name, str(REPO / f"functions/{name}/main.py"))  # type: ignore[no-untyped-call]


def _wait_for_standin(port: int) -> None:
    import urllib.request

    for _ in range(200):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/__standin/health",
                                        timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the Vertex AI stand-in did not start")


def _setup_conversations(count: int, tag: int) -> list[tuple[dict[str, str], str]]:
    auth, characters, conversations = (_app(n).test_client()
                                       for n in ("auth", "characters", "conversations"))
    out = []
    for i in range(count):
        tokens = auth.post("/signup", json={"email": f"bench{tag}-{i}@example.com",
                                            "password": PASSWORD, "display_name": "B"}).json
        who = {"Authorization": f"Bearer {tokens['access_token']}",
               "X-Forwarded-For": f"10.9.{tag}.{i % 250}"}
        character = characters.post("/characters", headers=who, json={
            "name": "Mina", "description": "A barista.", "greeting": "Welcome!"}).json
        conversation = conversations.post("/conversations", headers=who,
                                          json={"character_id": character["id"]}).json
        out.append((who, conversation["id"]))
    return out


def _turns(conversations: list[tuple[dict[str, str], str]], turns: int, model_s: float,
           stream: bool) -> tuple[list[float], list[float]]:
    app = _app("chat_turn")
    overheads: list[float] = []
    first_bytes: list[float] = []
    lock = threading.Lock()

    def one(client: Any, index: int, who: dict[str, str], conversation: str) -> None:
        headers = who | ({"Accept": "text/event-stream"} if stream else {})
        started = time.perf_counter()
        resp = client.post(f"/conversations/{conversation}/turns", headers=headers,
                           json={"message": f"Turn {index}: one latte please"}, buffered=False)
        first = None
        for _chunk in resp.response:
            first = first or time.perf_counter()
        resp.close()
        total = time.perf_counter() - started
        if resp.status_code not in (200, 201):
            raise SystemExit(f"turn failed: {resp.status_code}")
        with lock:
            overheads.append((total - model_s) * 1000)
            if stream and first is not None:
                first_bytes.append((first - started) * 1000)

    def run(worker: int) -> None:
        """One user per worker, turn after turn, as a chat client does (a second turn on a
        conversation while one is running is refused with 409 conversation_changed)."""
        client = app.test_client()
        who, conversation = conversations[worker]
        for index in range(worker, turns, len(conversations)):
            one(client, index, who, conversation)

    workers = len(conversations)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, range(workers)))
    return overheads, first_bytes


def _healthz(count: int) -> list[float]:
    """The floor of this harness: the framework and router with no work."""
    client = _app("chat_turn").test_client()
    times = []
    for _ in range(count):
        started = time.perf_counter()
        client.get("/healthz")
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=40, help="turns per scenario")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--model-latency-ms", type=float, default=200.0)
    args = parser.parse_args()
    exit_on_sigterm()

    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    from emulators.bridge import ensure_topics
    from emulators.postgres import start_postgres
    from emulators.proc import free_port, spawn
    from emulators.services import start_pubsub_emulator
    from infra.topology import TOPOLOGY
    from shared import clients, migrate, tokens

    model_s = args.model_latency_ms / 1000
    with tempfile.TemporaryDirectory(prefix="bench-chat-") as tmp:
        pg = start_postgres(Path(tmp))
        pubsub = start_pubsub_emulator(Path(tmp), "bench")
        port = free_port()
        standin = spawn("vertex-standin", [sys.executable, "-m", "emulators.vertex_standin",
                                           "--port", str(port),
                                           "--latency-ms", str(args.model_latency_ms)],
                        Path(tmp), cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)})
        try:
            os.environ |= {"DATABASE_URL": pg.url, "APP_ENV": "local",
                           "GOOGLE_CLOUD_PROJECT": "bench", "PUBSUB_EMULATOR_HOST": pubsub.host,
                           "GENAI_BASE_URL": f"http://127.0.0.1:{port}",
                           "JWT_SIGNING_KEYS": json.dumps([tokens.generate_signing_key()])}
            clients.reset()
            ensure_topics(TOPOLOGY, "bench", pubsub_v1.PublisherClient())
            migrate.upgrade()
            _wait_for_standin(port)
            n = args.concurrency
            _turns(_setup_conversations(1, 99), 3, model_s, stream=False)  # imports, pools
            rows: list[tuple[str, list[float], list[float]]] = [
                ("baseline: GET /healthz, same client", _healthz(args.turns), [])]
            for label, count, stream in (("1 conversation, JSON", 1, False),
                                         (f"{n} conversations, JSON", n, False),
                                         ("1 conversation, SSE", 1, True),
                                         (f"{n} conversations, SSE", n, True)):
                pool = _setup_conversations(count, len(rows) - 1)
                overhead, first = _turns(pool, args.turns, model_s, stream)
                rows.append((label, overhead, first))
        finally:
            standin.stop()
            clients.publisher().stop()
            pubsub.stop()
            pg.stop()
    out = [f"Machine: {summary()}, {time.strftime('%Y-%m-%d')}. Stand-in model latency "
           f"{args.model_latency_ms:g} ms; {args.turns} turns per row.", "",
           "| scenario | overhead p50 | overhead p99 | first streamed byte p50 |",
           "| --- | --- | --- | --- |"]
    for label, overhead, first in rows:
        ttfb = f"{statistics.median(first):.1f} ms" if first else "-"
        out.append(f"| {label} | {statistics.median(overhead):.1f} ms "
                   f"| {pct(overhead, 99):.1f} ms | {ttfb} |")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
