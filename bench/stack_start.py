"""Local cloud start-up: wall time from `python -m emulators up` to its endpoints file (every
service healthy, migrations applied, every function answering /healthz), and to a clean stop.

    python -m bench.stack_start [--runs N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def one_run() -> tuple[float, float, float]:
    """(seconds to endpoints file, the stack's own start-up figure, seconds to stop)."""
    with tempfile.TemporaryDirectory(prefix="stack-bench-") as tmp:
        run_dir = Path(tmp)
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "emulators", "up", "--run-dir", str(run_dir),
             "--no-schedules"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        endpoints = run_dir / "endpoints.json"
        while not endpoints.exists():
            if proc.poll() is not None:
                raise SystemExit(f"stack failed to start; logs in {run_dir / 'logs'}")
            time.sleep(0.02)
        up = time.monotonic() - started
        own = float(json.loads(endpoints.read_text())["startup_seconds"])
        stopping = time.monotonic()
        subprocess.run([sys.executable, "-m", "emulators", "down", "--run-dir", str(run_dir)],
                       cwd=REPO, check=True, capture_output=True)
        proc.wait(timeout=60)
        return up, own, time.monotonic() - stopping


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    runs = [one_run() for _ in range(args.runs)]
    rows = [("up (command to endpoints file)", [r[0] for r in runs]),
            ("up (stack's own figure)", [r[1] for r in runs]),
            ("down (command to every process gone)", [r[2] for r in runs])]
    sys.stdout.write("| measure | min | median | max |\n| --- | --- | --- | --- |\n")
    for name, values in rows:
        sys.stdout.write(f"| {name} | {min(values):.2f} s | {statistics.median(values):.2f} s "
                         f"| {max(values):.2f} s |\n")


if __name__ == "__main__":
    main()
