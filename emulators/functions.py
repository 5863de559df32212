"""Runs each manifest function as its own functions-framework process (gunicorn, as deployed),
with the manifest's env plus the local cloud's endpoints."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from emulators.proc import LOOPBACK, ManagedProcess, free_port, http_ok, spawn, wait_until
from infra.topology import Function

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class RunningFunction:
    function: Function
    url: str
    process: ManagedProcess


def secret_env(functions: tuple[Function, ...]) -> dict[str, str]:
    """Local values for the manifest's Secret Manager secrets (production: Secret Manager)."""
    return {name: secrets.token_urlsafe(32) for f in functions for name in f.secrets}


def function_env(function: Function, base: Mapping[str, str], port: int) -> dict[str, str]:
    """The environment a deployed function would see, pointed at the local cloud."""
    env = dict(base) | dict(function.env) | {
        "K_SERVICE": function.name,
        "FUNCTION_TARGET": function.entry_point,
        "PORT": str(port),
        # gunicorn gthread: one thread per concurrent request, as Cloud Run's concurrency.
        "THREADS": str(function.concurrency),
        "CLOUD_RUN_TIMEOUT_SECONDS": str(function.timeout_s),
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONUNBUFFERED": "1",
    }
    return env


def start_function(function: Function, base_env: Mapping[str, str], log_dir: Path,
                   source_root: Path = REPO_ROOT) -> RunningFunction:
    """Spawn the function; call `wait_ready` (or `start_functions`) before using it."""
    port = free_port()
    argv = [
        sys.executable, "-m", "functions_framework",
        "--target", function.entry_point,
        "--source", str(source_root / function.source / "main.py"),
        "--host", LOOPBACK, "--port", str(port),
    ]
    process = spawn(f"fn-{function.name}", argv, log_dir,
                    env=function_env(function, base_env, port), cwd=source_root)
    return RunningFunction(function, f"http://{LOOPBACK}:{port}", process)


def wait_ready(running: RunningFunction, timeout: float = 30.0) -> None:
    wait_until(lambda: http_ok(f"{running.url}/healthz"), f"function {running.function.name}",
               timeout=timeout, process=running.process)


def start_functions(functions: tuple[Function, ...], base_env: Mapping[str, str], log_dir: Path,
                    source_root: Path = REPO_ROOT) -> list[RunningFunction]:
    """Start all functions at once (they boot in parallel), then wait for each to be healthy."""
    running = [start_function(f, base_env, log_dir, source_root) for f in functions]
    try:
        for item in running:
            wait_ready(item)
    except Exception:
        for item in running:
            item.process.stop()
        raise
    return running
