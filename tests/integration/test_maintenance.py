"""The real `maintenance` function, fired by its schedule, prunes what has expired and keeps
what has not."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy
from google.cloud import pubsub_v1

from emulators.scheduler import fire
from infra.topology import TOPOLOGY
from tests.integration.conftest import PROJECT, deployed

SEED = [
    "INSERT INTO processed_messages (consumer, key, expires_at) VALUES "
    "('c', 'old', now() - interval '1 day'), ('c', 'live', now() + interval '1 day')",
    "INSERT INTO idempotency_keys (scope, key, request_hash, status, expires_at) VALUES "
    "('s', 'old', 'h', 'completed', now() - interval '1 hour'), "
    "('s', 'stuck', 'h', 'in_progress', now() - interval '1 hour'), "
    "('s', 'live', 'h', 'completed', now() + interval '1 hour')",
    "INSERT INTO rate_limits (key, tokens, updated_at) VALUES "
    "('auth:ip:1.2.3.4', 20, now() - interval '2 days'), ('auth:ip:5.6.7.8', 3, now())",
    "INSERT INTO outbox (event_id, topic, payload, published_at) VALUES "
    "('e-old', 't', '', now() - interval '30 days'), ('e-new', 't', '', now()), "
    "('e-pending', 't', '', NULL)",
]


def _keys(engine: sqlalchemy.Engine) -> dict[str, set[str]]:
    with engine.connect() as conn:
        return {
            "dedupe": set(conn.execute(sqlalchemy.text(
                "SELECT key FROM processed_messages")).scalars()),
            "idempotency": set(conn.execute(sqlalchemy.text(
                "SELECT key FROM idempotency_keys")).scalars()),
            "outbox": set(conn.execute(sqlalchemy.text("SELECT event_id FROM outbox")).scalars()),
            "buckets": set(conn.execute(sqlalchemy.text("SELECT key FROM rate_limits")).scalars()),
        }


def test_daily_maintenance_prunes_only_what_expired(platform_env: dict[str, str],
                                                     run_dir: Path) -> None:
    engine = sqlalchemy.create_engine(platform_env["DATABASE_URL"])
    with engine.begin() as conn:
        for statement in SEED:
            conn.execute(sqlalchemy.text(statement))
    expected = {"dedupe": {"live"}, "idempotency": {"live"}, "outbox": {"e-new", "e-pending"},
                "buckets": {"auth:ip:5.6.7.8"}}
    daily = next(s for s in TOPOLOGY.schedules if s.name == "maintenance-daily")
    try:
        with deployed("maintenance", platform_env, run_dir) as bridge:
            for _ in range(2):  # a duplicate tick changes nothing more
                fire(daily, PROJECT, pubsub_v1.PublisherClient())
            deadline = time.monotonic() + 20
            while sum(d.status == 204 for d in bridge.deliveries) < 2:
                if time.monotonic() > deadline:
                    pytest.fail(f"maintenance did not run: {bridge.deliveries}")
                time.sleep(0.05)
        assert _keys(engine) == expected
    finally:
        engine.dispose()
