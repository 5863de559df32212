"""Real backing services for the integration tier: PostgreSQL and the official Pub/Sub emulator,
started once per session on free ports, and the platform pointed at them per test."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy

from emulators import services
from emulators.bridge import Bridge
from emulators.functions import start_functions
from emulators.postgres import PostgresHandle, start_postgres
from infra.topology import TOPOLOGY, Topology
from tests.integration.identity_fixtures import REPO, Identity

PROJECT = "it-project"


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("localcloud")


@pytest.fixture(scope="session")
def postgres(run_dir: Path) -> Iterator[PostgresHandle]:
    handle = start_postgres(run_dir)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def pubsub_host(run_dir: Path) -> Iterator[str]:
    handle = services.start_pubsub_emulator(run_dir, PROJECT)
    try:
        yield handle.host
    finally:
        handle.stop()


def fresh_database(postgres: PostgresHandle) -> str:
    """A new empty database on the session server; its SQLAlchemy URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(postgres.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return str(sqlalchemy.make_url(postgres.url).set(database=name).render_as_string(
        hide_password=False))


@pytest.fixture
def platform_env(postgres: PostgresHandle, pubsub_host: str, monkeypatch: pytest.MonkeyPatch
                 ) -> Iterator[dict[str, str]]:
    """The process environment a function would see, on a fresh migrated database."""
    from shared import clients, migrate

    env = {
        "APP_ENV": "test",
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "DATABASE_URL": fresh_database(postgres),
        "PUBSUB_EMULATOR_HOST": pubsub_host,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    clients.reset()
    migrate.upgrade()
    try:
        yield env
    finally:
        from shared import db

        for cached in (db.engine, db.autocommit_engine):
            if cached.cache_info().currsize:
                cached().dispose()
        clients.reset()


def unique(prefix: str) -> str:
    """The Pub/Sub emulator cannot be reset: every test uses its own names."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@contextmanager
def deployed(function: str, env: dict[str, str], run_dir: Path) -> Iterator[Bridge]:
    """Run one manifest function as its own process, with the bridge delivering its manifest
    subscriptions to it, as the local cloud does; yields the bridge (its `deliveries`)."""
    topology = Topology(
        functions=(TOPOLOGY.function(function),),
        topics=TOPOLOGY.topics,
        subscriptions=TOPOLOGY.subscriptions_for(function),
        schedules=(),
        buckets=(),
    )
    (running,) = start_functions(topology.functions, env | {"PATH": "/usr/bin:/bin"},
                                 run_dir / "logs")
    bridge = Bridge(topology, PROJECT, {function: running.url},
                    subscription_suffix=f"-{uuid.uuid4().hex[:8]}")
    bridge.start()
    try:
        yield bridge
    finally:
        bridge.stop()
        running.process.stop()


@pytest.fixture
def identity(platform_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
             ) -> Iterator[Identity]:
    """In-process `auth` and `users` functions (the real functions-framework app) on a real,
    migrated database and the Pub/Sub emulator, with a freshly generated signing key."""
    from functions_framework import create_app
    from google.cloud import pubsub_v1

    from emulators.bridge import ensure_topics
    from shared import clients, tokens

    key = tokens.generate_signing_key("it-1")
    monkeypatch.setenv("JWT_SIGNING_KEYS", json.dumps([key]))
    monkeypatch.setenv("JWT_ISSUER", "https://auth.test")
    monkeypatch.setenv("JWT_AUDIENCE", "chat-rewards-apm")
    for name, value in TOPOLOGY.function("auth").runtime_env().items():
        if name.startswith("RATE_LIMIT_"):
            monkeypatch.setenv(name, value)
    clients.reset()
    ensure_topics(TOPOLOGY, PROJECT, pubsub_v1.PublisherClient())
    auth_app = create_app("auth", str(REPO / "functions/auth/main.py"))
    users_app = create_app("users", str(REPO / "functions/users/main.py"))
    engine = sqlalchemy.create_engine(platform_env["DATABASE_URL"])
    try:
        yield Identity(auth_app.test_client(), users_app.test_client(), engine, key)
    finally:
        engine.dispose()
