"""Process plumbing for the local cloud: free ports, spawning with per-process logs, readiness
polling and clean shutdown of whole process groups."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"


class StartupError(RuntimeError):
    """A local service did not come up; the message names it and shows its log tail."""


class PrerequisiteMissing(RuntimeError):
    """Something the local cloud needs is not installed; the message says how to install it."""


def exit_on_sigterm() -> None:
    """Turn SIGTERM (what `timeout` and process managers send) into SystemExit, so `finally`
    blocks run and servers this process started (in their own sessions) are stopped."""

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def free_port() -> int:
    """A port that is free on loopback right now (the OS picks it, so two stacks never collide)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass
class ManagedProcess:
    """A child started in its own session, so stopping it ends everything it started too."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    stop_hook: Callable[[], None] | None = field(default=None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        if self.stop_hook is not None:
            try:
                self.stop_hook()
            except Exception:  # the group kill below is the backstop
                logging.getLogger("emulators.proc").exception("stop hook of %s failed", self.name)
        kill_group(self.popen.pid, timeout)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass


def kill_group(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group led by `pid`, then SIGKILL whatever is left after `timeout`."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        # The leader already exited and was reaped (Popen.poll() reaps), but spawn() made it lead
        # its own group, and that group id lives on while any child it left behind does.
        pgid = pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _stat_fields(pid_dir: Path) -> list[str] | None:
    """/proc/<pid>/stat after the command name: [state, ppid, pgrp, ...]; None if gone."""
    try:
        return (pid_dir / "stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None


def _group_alive(pgid: int) -> bool:
    """True while any non-zombie process is in group `pgid` (killpg also sees zombies)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for entry in Path("/proc").iterdir():
        fields = _stat_fields(entry) if entry.name.isdigit() else None
        if fields and len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def spawn(
    name: str,
    argv: Sequence[str],
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> ManagedProcess:
    """Start `argv` in a new session with stdout+stderr appended to `log_dir/<name>.log`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
        )
    return ManagedProcess(name=name, popen=popen, log_path=log_path)


def wait_until(
    ready: Callable[[], bool],
    what: str,
    timeout: float = 30.0,
    process: ManagedProcess | None = None,
    interval: float = 0.05,
) -> None:
    """Poll `ready` until true; fail fast (with the log tail) if `process` dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if process is not None and not process.alive():
            raise StartupError(f"{what} exited during start-up:\n{process.log_tail()}")
        time.sleep(interval)
    tail = f":\n{process.log_tail()}" if process is not None else ""
    raise StartupError(f"{what} was not ready after {timeout:.0f}s{tail}")


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when GET `url` answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
            return bool(200 <= resp.status < 300)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def pid_alive(pid: int) -> bool:
    """True while `pid` runs. A zombie (exited, not yet reaped by its parent) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat_fields(Path(f"/proc/{pid}"))
    return fields is None or fields[0] != "Z"
