"""The local cloud's command line.

    python -m emulators up [--run-dir DIR] [--no-schedules]   start everything; Ctrl-C stops it
    python -m emulators down [--run-dir DIR]                   stop a running stack
    python -m emulators fire SCHEDULE [--run-dir DIR]          fire one schedule now
    python -m emulators endpoints [--run-dir DIR]              print a running stack's endpoints
    python -m emulators check                                  check prerequisites
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from emulators.proc import PrerequisiteMissing, StartupError, kill_group, pid_alive

LOCAL_CURRENT = Path(__file__).resolve().parent.parent / ".local" / "current"


def _endpoints(run_dir: str | None) -> tuple[Path, dict[str, Any]]:
    base = Path(run_dir) if run_dir else LOCAL_CURRENT.resolve()
    path = base / "endpoints.json"
    if not path.exists():
        sys.exit(f"no running stack found at {base} (start one with `make dev`)")
    return base, json.loads(path.read_text())


def cmd_up(args: argparse.Namespace) -> int:
    from emulators.stack import Stack, new_run_dir

    run_dir = Path(args.run_dir) if args.run_dir else new_run_dir()
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
        handlers=[logging.FileHandler(run_dir / "logs" / "stack.log")],
    )
    stack = Stack(run_dir, schedules_enabled=not args.no_schedules, extra_env=dict(args.env))
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        endpoints = stack.up()
    except (PrerequisiteMissing, StartupError) as exc:
        sys.stderr.write(f"local cloud did not start: {exc}\n")
        return 1
    sys.stdout.write(_summary(endpoints, run_dir))
    sys.stdout.flush()
    stopping.wait()
    sys.stdout.write("stopping the local cloud...\n")
    stack.down()
    (run_dir / "endpoints.json").unlink(missing_ok=True)
    sys.stdout.write("stopped.\n")
    return 0


def _summary(endpoints: dict[str, Any], run_dir: Path) -> str:
    lines = [f"local cloud up in {endpoints['startup_seconds']} s",
             f"  endpoints file   {run_dir / 'endpoints.json'}",
             f"  logs             {run_dir / 'logs'}",
             f"  gateway          {endpoints['gateway_url']}/<function>/...",
             f"  database         {endpoints['database_url']}",
             f"  pubsub           {endpoints['pubsub_emulator_host']}",
             f"  firestore        {endpoints['firestore_emulator_host']}",
             f"  storage          {endpoints['storage_emulator_host']}",
             f"  vertex ai        {endpoints['vertex_ai_url']}",
             "  functions:"]
    lines += [f"    {name:<16} {url}" for name, url in endpoints["functions"].items()]
    lines.append("press Ctrl-C (or run `python -m emulators down`) to stop\n")
    return "\n".join(lines)


def cmd_down(args: argparse.Namespace) -> int:
    base, endpoints = _endpoints(args.run_dir)
    pid = int(endpoints["supervisor_pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)
    # Backstop: a supervisor killed hard leaves its children; end each group we recorded.
    for child in endpoints.get("pids", {}).values():
        kill_group(int(child), timeout=5)
    (base / "endpoints.json").unlink(missing_ok=True)
    sys.stdout.write("stopped.\n")
    return 0


def cmd_fire(args: argparse.Namespace) -> int:
    from infra.topology import TOPOLOGY

    _, endpoints = _endpoints(args.run_dir)
    schedule = next((s for s in TOPOLOGY.schedules if s.name == args.schedule), None)
    if schedule is None:
        names = ", ".join(s.name for s in TOPOLOGY.schedules)
        sys.exit(f"unknown schedule {args.schedule!r}; known: {names}")
    os.environ["PUBSUB_EMULATOR_HOST"] = endpoints["pubsub_emulator_host"]
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    from emulators.scheduler import fire

    message_id = fire(schedule, endpoints["project"], pubsub_v1.PublisherClient())
    sys.stdout.write(f"fired {schedule.name} -> {schedule.topic} (message {message_id})\n")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from emulators.services import missing_prerequisites

    missing = missing_prerequisites()
    if missing:
        sys.stderr.write("the local cloud needs:\n  - " + "\n  - ".join(missing) + "\n")
        return 1
    sys.stdout.write("local cloud prerequisites: ok\n")
    return 0


def cmd_endpoints(args: argparse.Namespace) -> int:
    _, endpoints = _endpoints(args.run_dir)
    sys.stdout.write(json.dumps(endpoints, indent=2) + "\n")
    return 0


def _setting(value: str) -> tuple[str, str]:
    key, sep, setting = value.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return key, setting


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emulators", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the local cloud")
    up.add_argument("--no-schedules", action="store_true", help="do not fire cron schedules")
    up.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", type=_setting,
                    help="a setting for every function, e.g. CHAT_DAILY_TOKEN_QUOTA=5000 "
                         "(repeatable)")
    for name in ("up", "down", "endpoints"):
        target = up if name == "up" else sub.add_parser(name)
        target.add_argument("--run-dir", help="run folder (default: .local/current)")
    sub.add_parser("check", help="check the local cloud's prerequisites")
    fire_p = sub.add_parser("fire", help="fire one schedule now")
    fire_p.add_argument("schedule")
    fire_p.add_argument("--run-dir")
    args = parser.parse_args(argv)
    handlers = {"up": cmd_up, "down": cmd_down, "fire": cmd_fire, "endpoints": cmd_endpoints,
                "check": cmd_check}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
