"""Server-side overhead of a chat turn: wall time of `POST /conversations/{id}/turns` over
loopback HTTP minus the model latency configured on the Vertex AI stand-in, at 1 and at N
concurrent conversations, and time to the first streamed byte.

The `chat_turn` function runs as deployed: functions-framework under gunicorn (gthread, the
manifest's per-instance concurrency as threads), with the manifest's environment (rate limit
included), PostgreSQL, the outbox publish to the Pub/Sub emulator, and google-genai over HTTP to
the stand-in in its own process as Vertex AI would be. `--instances K` runs K such processes and
spreads the conversations over them, as Cloud Run spreads requests over instances. The clients
run in this process, one keep-alive connection per conversation, each sending its turns one
after another, their starts spread over one model latency. The baseline is `GET /healthz`
through the same client and server in the same run.

    python -m bench.chat_turn [--turns 40] [--concurrency 20] [--turns-each 20]
                              [--instances K,...] [--model-latency-ms 200]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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


Conversation = tuple[dict[str, str], str]  # (headers of its user, conversation id)


def _setup_conversations(count: int, tag: int) -> list[Conversation]:
    """Users, characters and conversations, made in-process (not measured)."""
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


@dataclass
class Row:
    label: str
    overheads: list[float] = field(default_factory=list)
    first_bytes: list[float] = field(default_factory=list)
    cpu_ms: float = 0.0  # CPU time of the chat_turn processes during the row


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its children (gunicorn's workers)."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return total
    return total + sum(_process_cpu_s(int(child)) for child in children)


def _post_turn(conn: http.client.HTTPConnection, who: dict[str, str], conversation: str,
               text: str, stream: bool) -> tuple[float, float | None]:
    """(seconds to the whole answer, seconds to its first body byte)."""
    body = json.dumps({"message": text})
    headers = who | {"Content-Type": "application/json"} | (
        {"Accept": "text/event-stream"} if stream else {})
    started = time.perf_counter()
    conn.request("POST", f"/conversations/{conversation}/turns", body=body, headers=headers)
    resp = conn.getresponse()
    first = None
    while resp.read1(65536):
        first = first or time.perf_counter()
    resp.read()  # ends the response, so the connection is free for the next request
    total = time.perf_counter() - started
    if resp.status not in (200, 201):
        raise SystemExit(f"turn failed: {resp.status}")
    return total, (first - started if first is not None else None)


def _turns(urls: list[str], conversations: list[Conversation], turns_each: int, model_s: float,
           stream: bool, row: Row) -> None:
    """Each conversation is one client on its own connection to the instance it is assigned,
    sending its turns one after another (a second turn on a conversation while one is running
    is refused with 409 conversation_changed, as a chat client would not do)."""
    lock = threading.Lock()

    def run(index: int) -> None:
        # Users do not all press send in the same millisecond: the clients start spread over
        # one model latency, so the N conversations are N turns in flight at any moment, not
        # a burst of N every model latency.
        time.sleep(index * model_s / len(conversations))
        who, conversation = conversations[index]
        url = urls[index % len(urls)].removeprefix("http://")
        conn = http.client.HTTPConnection(url, timeout=60)
        try:
            for turn in range(turns_each):
                total, first = _post_turn(conn, who, conversation,
                                          f"Turn {turn}: one latte please", stream)
                with lock:
                    row.overheads.append((total - model_s) * 1000)
                    if stream and first is not None:
                        row.first_bytes.append(first * 1000)
        finally:
            conn.close()

    with ThreadPoolExecutor(len(conversations)) as pool:
        list(pool.map(run, range(len(conversations))))


def _healthz(url: str, count: int) -> Row:
    """The floor of this harness: HTTP over loopback, gunicorn, the framework and the router
    with no work."""
    row = Row("baseline: GET /healthz, same client and server")
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    for _ in range(count):
        started = time.perf_counter()
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        row.overheads.append((time.perf_counter() - started) * 1000)
    conn.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=40,
                        help="turns of the single conversation (its history grows to 2x this)")
    parser.add_argument("--concurrency", type=int, default=20, help="concurrent conversations")
    parser.add_argument("--turns-each", type=int, default=20,
                        help="turns per conversation in the concurrent rows")
    parser.add_argument("--instances", default=None,
                        help="instance counts for the concurrent rows, e.g. 1,2 (default: as "
                             "many as Cloud Run needs at the manifest's concurrency)")
    parser.add_argument("--model-latency-ms", type=float, default=200.0)
    args = parser.parse_args()
    exit_on_sigterm()

    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    from emulators.bridge import ensure_topics
    from emulators.functions import start_function, wait_ready
    from emulators.postgres import start_postgres
    from emulators.proc import free_port, spawn
    from emulators.services import start_pubsub_emulator
    from infra.topology import TOPOLOGY
    from shared import clients, migrate, tokens

    model_s = args.model_latency_ms / 1000
    function = TOPOLOGY.function("chat_turn")
    instance_counts = ([int(n) for n in args.instances.split(",")] if args.instances
                       else [-(-args.concurrency // function.concurrency)])
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-chat-") as tmp:
        pg = start_postgres(Path(tmp))
        pubsub = start_pubsub_emulator(Path(tmp), "bench")
        port = free_port()
        standin = spawn("vertex-standin", [sys.executable, "-m", "emulators.vertex_standin",
                                           "--port", str(port),
                                           "--latency-ms", str(args.model_latency_ms)],
                        Path(tmp), cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)})
        instances: list[Any] = []
        try:
            keys = json.dumps([tokens.generate_signing_key()])
            base = {"DATABASE_URL": pg.url, "APP_ENV": "local", "GOOGLE_CLOUD_PROJECT": "bench",
                    "PUBSUB_EMULATOR_HOST": pubsub.host,
                    "GENAI_BASE_URL": f"http://127.0.0.1:{port}"}
            # Tokens made here must carry the issuer and audience the function checks.
            token_env = {k: v for k, v in function.runtime_env().items()
                         if k.startswith("JWT_")}
            os.environ |= base | token_env | {"JWT_SIGNING_KEYS": keys}
            clients.reset()
            ensure_topics(TOPOLOGY, "bench", pubsub_v1.PublisherClient())
            migrate.upgrade()
            _wait_for_standin(port)
            instances = [start_function(function, os.environ | base, Path(tmp) / f"instance-{i}",
                                        secret_values={"JWT_SIGNING_KEYS": keys})
                         for i in range(max(instance_counts))]
            for instance in instances:
                wait_ready(instance)
            urls = [instance.url for instance in instances]
            # Warm every instance (imports, pools, the first model call), not measured.
            _turns(urls, _setup_conversations(len(urls), 99), 3, model_s, False, Row("warm-up"))
            rows.append(_healthz(urls[0], 200))
            n = args.concurrency
            scenarios = [("1 conversation, JSON", 1, args.turns, False, 1),
                         ("1 conversation, SSE", 1, args.turns, True, 1)]
            scenarios += [(f"{n} conversations, JSON, {k} instance{'s' if k > 1 else ''}",
                           n, args.turns_each, False, k) for k in instance_counts]
            scenarios += [(f"{n} conversations, SSE, {k} instance{'s' if k > 1 else ''}",
                           n, args.turns_each, True, k) for k in instance_counts]
            pids = [instance.process.popen.pid for instance in instances]
            for tag, (label, count, turns_each, stream, k) in enumerate(scenarios):
                row = Row(label)
                conversations = _setup_conversations(count, tag)
                cpu_before = sum(_process_cpu_s(pid) for pid in pids)
                _turns(urls[:k], conversations, turns_each, model_s, stream, row)
                row.cpu_ms = (sum(_process_cpu_s(pid) for pid in pids) - cpu_before) * 1000
                rows.append(row)
        finally:
            for instance in instances:
                instance.process.stop()
            standin.stop()
            clients.publisher().stop()
            pubsub.stop()
            pg.stop()
    out = [f"Machine: {summary()}, {time.strftime('%Y-%m-%d')}. Stand-in model latency "
           f"{args.model_latency_ms:g} ms; chat_turn as deployed (gunicorn gthread, "
           f"{function.concurrency} threads per instance).", "",
           "| scenario | turns | overhead p50 | overhead p99 | first streamed byte p50 "
           "| chat_turn CPU per turn |",
           "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        ttfb = f"{statistics.median(row.first_bytes):.1f} ms" if row.first_bytes else "-"
        cpu = f"{row.cpu_ms / len(row.overheads):.1f} ms" if row.cpu_ms else "-"
        out.append(f"| {row.label} | {len(row.overheads)} | "
                   f"{statistics.median(row.overheads):.1f} ms "
                   f"| {pct(row.overheads, 99):.1f} ms | {ttfb} | {cpu} |")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
