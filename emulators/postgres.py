"""PostgreSQL for the local cloud: an existing server named by DATABASE_URL, else a throwaway
cluster from the system's binaries, else from the binaries bundled in the `pgserver` wheel."""

from __future__ import annotations

import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pg8000.native
from pg8000.exceptions import Error as Pg8000Error
from sqlalchemy.engine import URL

from emulators.proc import (
    LOOPBACK,
    ManagedProcess,
    PrerequisiteMissing,
    StartupError,
    free_port,
    spawn,
    wait_until,
)

PG_USER = "postgres"
PG_DATABASE = "app"
# Debian/Ubuntu install each major version under here; the highest one wins.
PG_SYSTEM_ROOT = Path("/usr/lib/postgresql")
# Found by location rather than imported: importing pgserver pulls in psutil/fasteners for nothing.
PGSERVER_PACKAGE = "pgserver"
INSTALL_HINT = "install PostgreSQL (`apt-get install postgresql`) or `pip install pgserver`"
START_TIMEOUT = 30.0


@dataclass
class PostgresHandle:
    url: str  # SQLAlchemy: postgresql+psycopg://USER:PASS@HOST:PORT/DB
    dsn: str  # libpq URI (psql, psycopg): postgresql://USER:PASS@HOST:PORT/DB
    host: str
    port: int
    user: str
    password: str
    database: str
    source: str  # "external" (DATABASE_URL), "system" or "pgserver"
    startup_seconds: float
    process: ManagedProcess | None = None  # the postmaster itself; None for an external server
    temp_dir: Path | None = None  # cluster + socket dir, removed by stop()
    drop_database: Callable[[], None] | None = None  # an external server: this run's database

    @property
    def env(self) -> dict[str, str]:
        return {"DATABASE_URL": self.url}

    def stop(self) -> None:
        """Fast-shutdown our server and delete its cluster; on an external server, drop only
        this run's database."""
        if self.drop_database is not None:
            self.drop_database()
            self.drop_database = None
        if self.process is not None:
            self.process.stop()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_postgres(run_dir: Path) -> PostgresHandle:
    began = time.monotonic()
    external = os.environ.get("DATABASE_URL")
    if external:
        return _use_external(external, began)
    bindir, source = find_postgres_bindir()
    return _start_cluster(run_dir, bindir, source, began)


def normalize_url(text: str) -> URL:
    """Any postgres:// or postgresql[+driver]:// URL, for the driver the product ships (the
    local cloud's own admin connections use pg8000's native API)."""
    from shared.db import driver_url

    return driver_url(text)


def find_postgres_bindir() -> tuple[Path, str]:
    """The directory holding `initdb` and `postgres`, and where it came from."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        # Follow the symlink (e.g. /usr/local/bin/initdb) to the directory that has `postgres` too.
        bindir = Path(initdb).resolve().parent
        if (bindir / "postgres").is_file():
            return bindir, "system"
    versions = [
        p.parent for p in PG_SYSTEM_ROOT.glob("*/bin/postgres") if p.parent.parent.name.isdigit()
    ]
    if versions:
        return max(versions, key=lambda b: int(b.parent.name)), "system"
    spec = importlib.util.find_spec(PGSERVER_PACKAGE)
    if spec is not None and spec.origin is not None:
        bindir = Path(spec.origin).parent / "pginstall" / "bin"
        if (bindir / "postgres").is_file():
            return bindir, "pgserver"
    raise PrerequisiteMissing(
        f"PostgreSQL not found (no initdb/pg_ctl on PATH, nothing under {PG_SYSTEM_ROOT}/*/bin, "
        f"no pgserver package, no DATABASE_URL): {INSTALL_HINT}"
    )


def _connect(
    url: URL, database: str | None = None, timeout: float = 2.0
) -> pg8000.native.Connection:
    return pg8000.native.Connection(
        user=url.username or PG_USER,
        password=url.password,
        host=url.host or LOOPBACK,
        port=url.port or 5432,
        database=database or url.database,
        timeout=timeout,
    )


def _handle(
    url: URL,
    source: str,
    began: float,
    process: ManagedProcess | None = None,
    temp_dir: Path | None = None,
) -> PostgresHandle:
    return PostgresHandle(
        url=url.render_as_string(hide_password=False),
        dsn=url.set(drivername="postgresql").render_as_string(hide_password=False),
        host=url.host or LOOPBACK,
        port=url.port or 5432,
        user=url.username or PG_USER,
        password=str(url.password or ""),
        database=url.database or "",
        source=source,
        startup_seconds=time.monotonic() - began,
        process=process,
        temp_dir=temp_dir,
    )


def _use_external(text: str, began: float) -> PostgresHandle:
    """Use the server in DATABASE_URL, in a database of this run's own (created here, dropped
    by stop()), so migrations start from zero and two stacks on one server never collide."""
    url = normalize_url(text)
    try:
        admin = _connect(url, timeout=5.0)
    except (Pg8000Error, OSError) as exc:
        raise StartupError(
            f"DATABASE_URL server {url.render_as_string()} is not reachable: {exc}"
        ) from exc
    name = f"localcloud_{secrets.token_hex(6)}"
    try:
        admin.run(f'CREATE DATABASE "{name}"')
    except Pg8000Error as exc:
        raise StartupError(
            f"cannot create a database for this run on {url.render_as_string()} "
            f"(the DATABASE_URL role needs CREATEDB): {exc}"
        ) from exc
    finally:
        admin.close()
    handle = _handle(url.set(database=name), "external", began)
    handle.drop_database = lambda: _drop_database(url, name)
    return handle


def _drop_database(url: URL, name: str) -> None:
    conn = _connect(url, timeout=5.0)
    try:
        conn.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


def _run_as() -> tuple[list[str], pwd.struct_passwd | None]:
    """Command prefix that drops root: PostgreSQL refuses to run as root."""
    if os.geteuid() != 0:
        return [], None
    try:
        account = pwd.getpwnam(PG_USER)
    except KeyError:
        raise PrerequisiteMissing(
            f"PostgreSQL refuses to run as root and there is no '{PG_USER}' system user to run "
            f"it as: `useradd --system --user-group {PG_USER}` (Debian's postgresql package "
            "creates it), or run as a non-root user"
        ) from None
    # setpriv execs in place, so the spawned pid is the postmaster; `runuser -u` forks and waits,
    # which would leave us holding runuser's pid instead of the server's.
    if shutil.which("setpriv"):
        drop = ["setpriv", f"--reuid={PG_USER}", f"--regid={PG_USER}", "--init-groups", "--"]
        return drop, account
    return ["runuser", "-u", PG_USER, "--"], account


def _start_cluster(run_dir: Path, bindir: Path, source: str, began: float) -> PostgresHandle:
    prefix, account = _run_as()
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # In /tmp, not run_dir: the postgres user must traverse every parent (a checkout under /root or
    # /work may not allow that), and the socket path must stay under the 107-byte sun_path limit.
    temp_dir = Path(tempfile.mkdtemp(prefix="localcloud-pg-"))
    try:
        password = secrets.token_hex(16)  # hex: nothing to escape in URLs or DSNs
        pgdata, sockets, pwfile = temp_dir / "pgdata", temp_dir / "sock", temp_dir / "pwfile"
        sockets.mkdir()
        pwfile.write_text(password + "\n")  # private: mkdtemp made temp_dir 0700
        if account is not None:
            for path in (temp_dir, sockets, pwfile):
                os.chown(path, account.pw_uid, account.pw_gid)
        initdb = [
            *prefix, str(bindir / "initdb"), "-D", str(pgdata), "-U", PG_USER,
            "--auth=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C",
            "--no-sync",  # a throwaway cluster: skip the fsyncs (they cost seconds on slow disks)
        ]  # fmt: skip
        with (logs / "postgres-initdb.log").open("wb") as log:
            done = subprocess.run(initdb, stdout=log, stderr=subprocess.STDOUT, cwd=temp_dir)
        pwfile.unlink()
        if done.returncode != 0:
            tail = (logs / "postgres-initdb.log").read_text(errors="replace")[-3000:]
            raise StartupError(
                f"initdb ({bindir}) failed with exit code {done.returncode}:\n{tail}"
            )
        port = free_port()
        argv = [
            *prefix, str(bindir / "postgres"), "-D", str(pgdata),
            "-p", str(port), "-k", str(sockets),
            "-c", f"listen_addresses={LOOPBACK}",
            # Durability off: a throwaway test/dev cluster, and commits get several times faster.
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
        ]  # fmt: skip
        process = spawn("postgres", argv, logs, cwd=temp_dir)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    process.stop_hook = lambda: _fast_shutdown(process)
    url = URL.create("postgresql+psycopg", PG_USER, password, LOOPBACK, port, PG_DATABASE)
    try:
        wait_until(lambda: _accepts(url), f"postgres ({bindir})", START_TIMEOUT, process)
        conn = _connect(url, database="postgres")
        try:
            conn.run(f"CREATE DATABASE {PG_DATABASE}")
        finally:
            conn.close()
    except BaseException:
        process.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return _handle(url, source, began, process=process, temp_dir=temp_dir)


def _accepts(url: URL) -> bool:
    try:
        _connect(url, database="postgres", timeout=1.0).close()
    except (Pg8000Error, OSError):
        return False
    return True


def _fast_shutdown(process: ManagedProcess) -> None:
    # SIGINT is PostgreSQL's "fast" shutdown: it ends open sessions. The SIGTERM that the group kill
    # sends is "smart" shutdown, which waits for pooled client connections to go away.
    if process.alive():
        os.kill(process.pid, signal.SIGINT)
        process.popen.wait(timeout=10)
