"""Cold-start benchmark: each manifest function against a hello-world functions-framework function.

Per function, N times: the wall time from spawning `python -m functions_framework` (gunicorn, as
deployed) to the first 200 from `GET /healthz`, and, in a fresh interpreter, the import time of
`functions_framework` plus `create_app` for its module. Runs are interleaved round-robin so that
machine noise lands on the baseline and the functions alike; compare the ratios, not the times.

    python -m bench.cold_start [--runs N] [--out bench/results/cold_start.json] [--markdown]
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.machine import cpu_model, cpus
from emulators.functions import REPO_ROOT, function_env, start_function
from emulators.proc import LOOPBACK, StartupError, free_port
from infra.topology import TOPOLOGY, Function, Trigger

TARGET_RATIO = 1.5
POLL_S = 0.005  # fine-grained, so polling adds at most ~5 ms to a figure
READY_TIMEOUT_S = 30.0
HEAVY = ("sqlalchemy", "google.cloud.pubsub_v1", "google.cloud.firestore", "google.cloud.storage",
         "google.genai", "grpc", "jwt", "alembic", "pg8000", "psycopg")
# Port 9 (discard) is closed on loopback: a health route that touched the DB or Pub/Sub would
# fail or hang instead of answering, which is part of what this benchmark shows.
BASE_ENV = {"APP_ENV": "local", "GOOGLE_CLOUD_PROJECT": "bench",
            "DATABASE_URL": f"postgresql+psycopg://bench:bench@{LOOPBACK}:9/bench",
            "PUBSUB_EMULATOR_HOST": f"{LOOPBACK}:9", "PATH": os.environ.get("PATH", "")}

# Runs in a fresh interpreter, timing what functions-framework does before serving: import
# itself (flask, werkzeug, ...), then load the function's module via create_app.
PROBE = """
import json, sys, time
t0 = time.perf_counter()
import functions_framework
t1 = time.perf_counter()
functions_framework.create_app(sys.argv[1], sys.argv[2])
t2 = time.perf_counter()
heavy = [m for m in sys.argv[3].split(",") if m in sys.modules]
sys.stdout.write("\\n" + json.dumps({"framework": (t1 - t0) * 1e3, "module": (t2 - t1) * 1e3,
                                     "heavy": heavy}) + "\\n")
"""


@dataclass(frozen=True)
class Baseline(Function):
    """The hello-world function, shaped like a manifest entry so it starts by the same code path."""

    @property
    def source(self) -> str:
        return "bench/hello"


BASELINE = Baseline(name="hello", trigger=Trigger.HTTP, entry_point="hello")


def healthz_status(port: int) -> int | None:
    # The socket timeout bounds the read too: once gunicorn's master has bound the port, a
    # connection waits in the backlog until the worker accepts it, so the answer arrives as soon
    # as the worker is up, without a polling delay.
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=5.0)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def cold_start_ms(fn: Function, log_dir: Path) -> float:
    """Spawn to first 200 on /healthz; raises StartupError (with the log tail) if it never is."""
    started = time.monotonic()  # start_function only picks a port (~0.1 ms) before Popen
    running = start_function(fn, BASE_ENV, log_dir)
    port = int(running.url.rsplit(":", 1)[1])
    try:
        last: int | None = None
        while time.monotonic() - started < READY_TIMEOUT_S:
            last = healthz_status(port)
            if last == 200:
                return (time.monotonic() - started) * 1e3
            if not running.process.alive():
                raise StartupError(f"{fn.name} exited before /healthz answered 200:\n"
                                   f"{running.process.log_tail()}")
            time.sleep(POLL_S)
        raise StartupError(f"{fn.name}: no 200 from /healthz after {READY_TIMEOUT_S:.0f}s "
                           f"(last status {last}):\n{running.process.log_tail()}")
    finally:
        running.process.stop()  # kills the process group and waits, so runs never overlap


def import_probe(fn: Function) -> dict[str, Any]:
    argv = [sys.executable, "-c", PROBE, fn.entry_point, str(REPO_ROOT / fn.source / "main.py"),
            ",".join(HEAVY)]
    done = subprocess.run(argv, env=function_env(fn, BASE_ENV, free_port()), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise StartupError(f"{fn.name}: importing failed:\n{done.stderr[-2000:]}")
    # The module's own start-up may log to stdout; the probe's result is the last line.
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def machine() -> dict[str, Any]:
    model = cpu_model()
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    return {"nproc": cpus(), "cpu": model,
            "memory_gib": round(mem_kb / 1024**2, 1), "python": platform.python_version(),
            "functions_framework": metadata.version("functions-framework"),
            "gunicorn": metadata.version("gunicorn"),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def run(runs: int, warmup: int) -> dict[str, Any]:
    fns: list[Function] = [BASELINE, *TOPOLOGY.functions]
    raw: dict[str, dict[str, list[float]]] = {
        f.name: {"cold": [], "import": [], "framework": [], "module": []} for f in fns}
    heavy: dict[str, set[str]] = {f.name: set() for f in fns}
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        # Round-robin (hello, fn1, fn2, hello, ...) so drift hits every function equally; the
        # warm-up rounds fill the page cache and write .pyc files, which production images have.
        for i in range(warmup + runs):
            for fn in fns:
                cold = cold_start_ms(fn, Path(tmp))
                probe = import_probe(fn)
                heavy[fn.name].update(probe["heavy"])
                if i < warmup:
                    continue
                raw[fn.name]["cold"].append(cold)
                raw[fn.name]["framework"].append(probe["framework"])
                raw[fn.name]["module"].append(probe["module"])
                raw[fn.name]["import"].append(probe["framework"] + probe["module"])
            sys.stderr.write(f"round {i + 1}/{warmup + runs} done\n")
    base = {k: statistics.median(v) for k, v in raw[BASELINE.name].items()}
    results = []
    for fn in fns:
        stats = {k: spread(v) for k, v in raw[fn.name].items()}
        ratios = {k: stats[k]["median"] / base[k] for k in ("cold", "import")}
        results.append({"name": fn.name, "baseline": fn is BASELINE, "ms": stats,
                        "samples_ms": raw[fn.name], "ratio": ratios,
                        "over_target": any(r > TARGET_RATIO for r in ratios.values()),
                        "heavy_modules_at_import": sorted(heavy[fn.name])})
    return {"machine": machine(), "runs": runs, "warmup_rounds": warmup,
            "target_ratio": TARGET_RATIO, "functions": results}


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]

    def mmm(s: dict[str, float]) -> str:
        return f"{s['min']:.0f} / **{s['median']:.0f}** / {s['max']:.0f}"

    lines = [
        "## Cold start", "",
        f"{report['runs']} interleaved runs (after {report['warmup_rounds']} warm-up round), "
        f"{m['date']}: {m['nproc']} CPU ({m['cpu']}), {m['memory_gib']} GiB, Python "
        f"{m['python']}, functions-framework {m['functions_framework']}, gunicorn "
        f"{m['gunicorn']}. Times in ms as min / **median** / max; ratio = median / hello "
        f"median; target: ratio <= {report['target_ratio']}.", "",
        "| function | cold start (spawn to 200 /healthz) | ratio | import (framework + module) "
        "| ratio | module beyond framework | heavy SDKs at import |",
        "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["functions"]:
        name = f"{r['name']} (baseline)" if r["baseline"] else r["name"]
        flag = " **over target**" if r["over_target"] else ""
        heavy = ", ".join(r["heavy_modules_at_import"]) or "none"
        lines.append(f"| {name}{flag} | {mmm(r['ms']['cold'])} | {r['ratio']['cold']:.2f}x "
                     f"| {mmm(r['ms']['import'])} | {r['ratio']['import']:.2f}x "
                     f"| {mmm(r['ms']['module'])} | {heavy} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1, help="uncounted rounds first")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench/results/cold_start.json")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    try:
        report = run(max(1, args.runs), max(0, args.warmup))
    except StartupError as exc:  # a function that never gets healthy is a bug, not noise
        sys.stderr.write(f"cold-start benchmark failed: {exc}\n")
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    flagged = [r["name"] for r in report["functions"] if r["over_target"]]
    sys.stderr.write(f"wrote {args.out}; over {TARGET_RATIO}x: {', '.join(flagged) or 'none'}\n")
    if args.markdown:
        sys.stdout.write(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
