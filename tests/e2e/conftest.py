"""The whole local stack, started once for the e2e tier exactly as `make dev` starts it
(`python -m emulators up`), in its own run folder, and stopped at the end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
# Small limits so the e2e tier reaches the quota, the summary and the breaker in a few turns
# (`python -m emulators up --env KEY=VALUE`); everything else is as `make dev` runs it.
E2E_SETTINGS = {"CHAT_DAILY_TOKEN_QUOTA": "20000", "CHAT_HISTORY_BUDGET_TOKENS": "400",
                "GENAI_TIMEOUT_S": "2", "GENAI_BREAKER_COOLDOWN_S": "3"}


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    run_dir = tmp_path_factory.mktemp("stack")
    endpoints_file = run_dir / "endpoints.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulators", "up", "--run-dir", str(run_dir), "--no-schedules",
         *(arg for key, value in E2E_SETTINGS.items() for arg in ("--env", f"{key}={value}"))],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not endpoints_file.exists():
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            pytest.fail(f"local cloud failed to start:\n{out}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("local cloud did not start within 120 s")
        time.sleep(0.1)
    endpoints: dict[str, Any] = json.loads(endpoints_file.read_text())
    endpoints["_process"] = proc
    try:
        yield endpoints
    finally:
        stop_stack(proc)


def stop_stack(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
