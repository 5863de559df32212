"""The whole local cloud: backing services, migrations, every manifest function, the push
bridge, the scheduler and the gateway, started together and stopped together.

Every process logs into one run folder (`.local/runs/<run-id>/logs/`); the endpoints are written
to `<run folder>/endpoints.json` (and `.local/current` points at the newest run), so tests and
tools find them. Everything listens on free loopback ports, so two stacks never collide.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from emulators import services
from emulators.bridge import DEFAULT_BACKOFF_SCALE, Bridge, ensure_topics
from emulators.functions import REPO_ROOT, RunningFunction, local_secrets, start_functions
from emulators.gateway import Gateway
from emulators.postgres import start_postgres
from emulators.proc import (
    LOOPBACK,
    ManagedProcess,
    PrerequisiteMissing,
    StartupError,
    free_port,
    http_ok,
    spawn,
    wait_until,
)
from emulators.scheduler import Scheduler
from infra.topology import TOPOLOGY, Topology

log = logging.getLogger("emulators.stack")
LOCAL_DIR = REPO_ROOT / ".local"
PROJECT = "local-project"


def new_run_dir(base: Path = LOCAL_DIR) -> Path:
    run_id = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{os.getpid()}"
    run_dir = base / "runs" / run_id
    (run_dir / "logs").mkdir(parents=True)
    current = base / "current"
    tmp = base / f".current-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.relative_to(base))
    tmp.replace(current)  # atomic: a reader never sees a missing link
    return run_dir


@dataclass
class Stack:
    run_dir: Path
    topology: Topology = TOPOLOGY
    project: str = PROJECT
    backoff_scale: float = DEFAULT_BACKOFF_SCALE
    schedules_enabled: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)  # `up --env KEY=VALUE`
    source_root: Path = REPO_ROOT
    endpoints: dict[str, Any] = field(default_factory=dict)
    _stops: list[Callable[[], None]] = field(default_factory=list)
    _processes: list[ManagedProcess] = field(default_factory=list)
    bridge: Bridge | None = None

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    def up(self) -> dict[str, Any]:
        """Start everything; on any failure stop what started and re-raise."""
        started = time.monotonic()
        try:
            self._start(started)
        except BaseException:
            self.down()
            raise
        return self.endpoints

    def _start(self, started: float) -> None:
        missing = services.missing_prerequisites()
        if missing:
            raise PrerequisiteMissing("the local cloud needs:\n  - " + "\n  - ".join(missing))
        run = self.run_dir
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures: list[Future[Any]] = [
                pool.submit(start_postgres, run),
                pool.submit(services.start_pubsub_emulator, run, self.project),
                pool.submit(services.start_firestore_emulator, run, self.project),
                pool.submit(self._start_vertex),
            ]
        # Register every service that did start before raising, so down() stops them all.
        errors = [f.exception() for f in futures if f.exception() is not None]
        for future in futures:
            if future.exception() is None and hasattr(future.result(), "stop"):
                self._stops.append(future.result().stop)
        if errors:
            raise errors[0]  # type: ignore[misc]
        pg, pubsub, firestore, vertex_url = (f.result() for f in futures)
        os.environ["PUBSUB_EMULATOR_HOST"] = pubsub.host  # for the bridge and scheduler clients
        from google.cloud import pubsub_v1  # type: ignore[attr-defined]

        ensure_topics(self.topology, self.project, pubsub_v1.PublisherClient())
        bucket = self.topology.buckets[0] if self.topology.buckets else None
        gcs = services.start_fake_gcs(
            run, self.project, pubsub.host, [b.name for b in self.topology.buckets],
            bucket.notification_topic if bucket else None,
        )
        self._stops.append(gcs.stop)
        # Ports are chosen first so every function can be told where the auth JWKS lives.
        ports = {f.name: free_port() for f in self.topology.functions}
        env = self._base_env(pg.url, pubsub.host, firestore.host, gcs.url, vertex_url) | \
            self.extra_env
        if "auth" in ports:
            env["JWT_JWKS_URL"] = f"http://{LOOPBACK}:{ports['auth']}/.well-known/jwks.json"
        if "span_ingest" in ports:
            # The product observes itself: every function's spans go to its own span_ingest,
            # which locally takes telemetry without an ingest token.
            env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT":
                   f"http://{LOOPBACK}:{ports['span_ingest']}/v1/traces",
                   "TELEMETRY_ANONYMOUS_INGEST": "true"} | env
        self._migrate(env)
        functions = start_functions(self.topology.functions, env, self.log_dir, self.source_root,
                                    ports, local_secrets(self.topology.functions))
        self._stops.extend(f.process.stop for f in functions)
        self._processes.extend(f.process for f in functions)
        urls = {f.function.name: f.url for f in functions}
        self.bridge = Bridge(self.topology, self.project, urls, self.backoff_scale)
        self.bridge.start()
        self._stops.append(self.bridge.stop)
        if self.schedules_enabled:
            scheduler = Scheduler(self.topology.schedules, self.project)
            scheduler.start()
            self._stops.append(scheduler.stop)
        gateway = Gateway(urls)
        gateway.start()
        self._stops.append(gateway.stop)
        self.endpoints = self._describe(pg, pubsub, firestore, gcs, vertex_url, gateway, functions,
                                        time.monotonic() - started)
        path = run / "endpoints.json"
        path.write_text(json.dumps(self.endpoints, indent=2) + "\n")

    def _start_vertex(self) -> str:
        port = free_port()
        process = spawn("vertex-standin", [sys.executable, "-m", "emulators.vertex_standin",
                                           "--port", str(port)], self.log_dir, cwd=REPO_ROOT,
                        env=os.environ | {"PYTHONPATH": str(REPO_ROOT)})
        self._stops.append(process.stop)
        self._processes.append(process)
        url = f"http://{LOOPBACK}:{port}"
        wait_until(lambda: http_ok(f"{url}/__standin/health"), "Vertex AI stand-in",
                   process=process)
        return url

    def _base_env(self, db_url: str, pubsub: str, firestore: str, gcs: str, vertex: str
                  ) -> dict[str, str]:
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "SSL_CERT_FILE", "TMPDIR")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        return env | {
            "APP_ENV": "local",
            "GOOGLE_CLOUD_PROJECT": self.project,
            "DATABASE_URL": db_url,
            "PUBSUB_EMULATOR_HOST": pubsub,
            "FIRESTORE_EMULATOR_HOST": firestore,
            "STORAGE_EMULATOR_HOST": gcs,
            "STORAGE_SIGNING_KEY": services.local_signing_key(self.project),
            "GENAI_BASE_URL": vertex,
        }

    def _migrate(self, env: dict[str, str]) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "shared.migrate"], env=env | {"PYTHONPATH": str(REPO_ROOT)},
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
        )
        (self.log_dir / "migrate.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise StartupError(f"migrations failed:\n{result.stderr[-2000:]}")

    def _describe(self, pg: Any, pubsub: Any, firestore: Any, gcs: Any, vertex: str,
                  gateway: Gateway, functions: list[RunningFunction], seconds: float
                  ) -> dict[str, Any]:
        return {
            "project": self.project,
            "run_dir": str(self.run_dir),
            "supervisor_pid": os.getpid(),
            "startup_seconds": round(seconds, 2),
            "database_url": pg.url,
            "pubsub_emulator_host": pubsub.host,
            "firestore_emulator_host": firestore.host,
            "storage_emulator_host": gcs.url,
            "vertex_ai_url": vertex,
            "gateway_url": gateway.url,
            "functions": {f.function.name: f.url for f in functions},
            "function_gateway_urls": {f.function.name: f"{gateway.url}/{f.function.name}"
                                      for f in functions},
            "buckets": [b.name for b in self.topology.buckets],
            "pids": {p.name: p.pid for p in self._all_processes(pg, pubsub, firestore, gcs)},
        }

    def _all_processes(self, *handles: Any) -> list[ManagedProcess]:
        found = [h.process for h in handles if getattr(h, "process", None) is not None]
        return found + self._processes

    def down(self) -> None:
        """Stop everything this stack started, newest first."""
        while self._stops:
            stop = self._stops.pop()
            try:
                stop()
            except Exception:
                log.exception("error while stopping")
