"""The whole local cloud over HTTP, as `make dev` runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from emulators.proc import pid_alive
from infra.topology import TOPOLOGY
from tests.e2e.conftest import REPO, stop_stack

pytestmark = pytest.mark.e2e
TRACE = "0af7651916cd43dd8448eb211c80319c"


def _log_lines(stack: dict[str, Any], function: str) -> list[dict[str, Any]]:
    path = Path(stack["run_dir"]) / "logs" / f"fn-{function}.log"
    lines = []
    for raw in path.read_text().splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue  # gunicorn's own start-up lines are not JSON
    return lines


def _wait(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail("condition not met in time")


def test_endpoints_file_describes_the_stack(stack: dict[str, Any]) -> None:
    assert set(stack["functions"]) == {f.name for f in TOPOLOGY.functions}
    for key in ("database_url", "pubsub_emulator_host", "firestore_emulator_host",
                "storage_emulator_host", "vertex_ai_url", "gateway_url"):
        assert stack[key]
    assert stack["startup_seconds"] > 0


@pytest.mark.parametrize("function", [f.name for f in TOPOLOGY.functions])
def test_every_function_answers_health_through_the_gateway(stack: dict[str, Any],
                                                           function: str) -> None:
    resp = requests.get(f"{stack['gateway_url']}/{function}/healthz", timeout=10,
                        headers={"traceparent": f"00-{TRACE}-b7ad6b7169203331-01"})
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "service": function}
    assert resp.headers["X-Trace-Id"] == TRACE


def test_response_trace_id_is_on_the_functions_log_lines(stack: dict[str, Any]) -> None:
    resp = requests.get(f"{stack['gateway_url']}/maintenance/nope", timeout=10)
    assert resp.status_code == 404
    trace = resp.headers["X-Trace-Id"]
    assert resp.json()["traceId"] == trace
    expected = f"projects/{stack['project']}/traces/{trace}"
    _wait(lambda: any(line.get("logging.googleapis.com/trace") == expected
                      for line in _log_lines(stack, "maintenance")))


def test_fired_schedule_is_delivered_to_its_function(stack: dict[str, Any]) -> None:
    before = len(_log_lines(stack, "outbox_relay"))
    result = subprocess.run(
        [sys.executable, "-m", "emulators", "fire", "outbox-sweep", "--run-dir",
         stack["run_dir"]], cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    assert "fired outbox-sweep" in result.stdout
    _wait(lambda: any(line["message"].startswith("outbox relay:")
                      for line in _log_lines(stack, "outbox_relay")[before:]))
    (delivery,) = [line for line in _log_lines(stack, "outbox_relay")[before:]
                   if line["message"].startswith("delivery ")]
    assert delivery["subscription"].endswith("/outbox-relay.outbox-tick")


def test_a_second_stack_runs_alongside_and_stop_leaves_no_process(
        stack: dict[str, Any], tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulators", "up", "--run-dir", str(tmp_path), "--no-schedules"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(lambda: (tmp_path / "endpoints.json").exists() or proc.poll() is not None, 120)
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        second = json.loads((tmp_path / "endpoints.json").read_text())
        ours = {stack["gateway_url"], stack["pubsub_emulator_host"], *stack["functions"].values()}
        theirs = {second["gateway_url"], second["pubsub_emulator_host"],
                  *second["functions"].values()}
        assert not ours & theirs
        for url in second["functions"].values():
            assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
        pids = list(second["pids"].values())
        assert pids and all(pid_alive(pid) for pid in pids)

        subprocess.run([sys.executable, "-m", "emulators", "down", "--run-dir", str(tmp_path)],
                       cwd=REPO, check=True, timeout=90, capture_output=True)
        proc.wait(timeout=30)
        assert [pid for pid in pids if pid_alive(pid)] == []
        assert not (tmp_path / "endpoints.json").exists()
        # The first stack is untouched.
        assert requests.get(f"{stack['gateway_url']}/maintenance/healthz",
                            timeout=10).status_code == 200
    finally:
        stop_stack(proc)
