"""Runs each manifest function as its own functions-framework process (gunicorn, as deployed),
with the manifest's env plus the local cloud's endpoints."""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Callable, Mapping
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


def _signing_keys() -> str:
    from shared.tokens import generate_signing_key

    return json.dumps([generate_signing_key("local-1")])


# Secrets whose value has a shape; any other secret gets a random token.
def _sealing_keys() -> str:
    # The fixed local key, so rows sealed in-process (tests) open in the functions and back.
    from shared.sealed import local_key_list

    return local_key_list()


_SECRET_FACTORIES: dict[str, Callable[[], str]] = {"JWT_SIGNING_KEYS": _signing_keys,
                                                   "WEBHOOK_SECRET_KEYS": _sealing_keys}


def local_secrets(functions: tuple[Function, ...]) -> dict[str, str]:
    """Local values for the manifest's Secret Manager secrets (production: Secret Manager)."""
    names = {name for f in functions for name in f.secrets}
    return {name: _SECRET_FACTORIES.get(name, lambda: secrets.token_urlsafe(32))()
            for name in sorted(names)}


def function_env(function: Function, base: Mapping[str, str], port: int,
                 secret_values: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a deployed function would see, pointed at the local cloud. Each function
    gets only the secrets the manifest gives it."""
    own_secrets = {name: (secret_values or {})[name] for name in function.secrets
                   if name in (secret_values or {})}
    if not function.exports_spans:  # the telemetry pipeline does not trace itself
        base = {k: v for k, v in base.items() if not k.startswith("OTEL_EXPORTER_OTLP_")}
    env = dict(base) | function.runtime_env() | own_secrets | {
        "K_SERVICE": function.name,
        "FUNCTION_TARGET": function.entry_point,
        "PORT": str(port),
        "CLOUD_RUN_TIMEOUT_SECONDS": str(function.timeout_s),
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONUNBUFFERED": "1",
    }
    return env


def start_function(function: Function, base_env: Mapping[str, str], log_dir: Path,
                   source_root: Path = REPO_ROOT, port: int | None = None,
                   secret_values: Mapping[str, str] | None = None) -> RunningFunction:
    """Spawn the function; call `wait_ready` (or `start_functions`) before using it."""
    port = port or free_port()
    argv = [
        sys.executable, "-m", "functions_framework",
        "--target", function.entry_point,
        "--source", str(source_root / function.source / "main.py"),
        "--host", LOOPBACK, "--port", str(port),
    ]
    process = spawn(f"fn-{function.name}", argv, log_dir,
                    env=function_env(function, base_env, port, secret_values), cwd=source_root)
    return RunningFunction(function, f"http://{LOOPBACK}:{port}", process)


def wait_ready(running: RunningFunction, timeout: float = 30.0) -> None:
    wait_until(lambda: http_ok(f"{running.url}/healthz"), f"function {running.function.name}",
               timeout=timeout, process=running.process)


def start_functions(functions: tuple[Function, ...], base_env: Mapping[str, str], log_dir: Path,
                    source_root: Path = REPO_ROOT, ports: Mapping[str, int] | None = None,
                    secret_values: Mapping[str, str] | None = None) -> list[RunningFunction]:
    """Start all functions at once (they boot in parallel), then wait for each to be healthy."""
    running = [start_function(f, base_env, log_dir, source_root, (ports or {}).get(f.name),
                              secret_values) for f in functions]
    try:
        for item in running:
            wait_ready(item)
    except Exception:
        for item in running:
            item.process.stop()
        raise
    return running
