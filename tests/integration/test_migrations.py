"""Migrations apply from zero, report their revision, and round-trip down and up."""

from __future__ import annotations

import pytest
import sqlalchemy

from emulators.postgres import PostgresHandle
from tests.integration.conftest import fresh_database

PLATFORM_TABLES = {"outbox", "processed_messages", "idempotency_keys", "users", "sessions",
                   "refresh_tokens", "login_attempts", "rate_limits", "account_restrictions",
                   "cleanup_jobs"}


def _head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from shared import migrate

    config = Config()
    config.set_main_option("script_location", str(migrate.MIGRATIONS))
    (head,) = ScriptDirectory.from_config(config).get_heads()
    return str(head)


def _tables(url: str) -> set[str]:
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sqlalchemy.text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars().all()
    engine.dispose()
    return set(rows)


def test_migrations_from_zero_and_back(postgres: PostgresHandle,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from alembic import command
    from alembic.config import Config

    from shared import clients, migrate

    url = fresh_database(postgres)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("APP_ENV", "test")
    clients.reset()
    assert _tables(url) == set()
    assert migrate.current_revision() is None

    migrate.upgrade()
    assert PLATFORM_TABLES <= _tables(url)
    assert migrate.current_revision() == _head()

    migrate.upgrade()  # re-running is a no-op, as on every deploy
    assert migrate.current_revision() == _head()

    config = Config()
    config.set_main_option("script_location", str(migrate.MIGRATIONS))
    command.downgrade(config, "base")
    assert _tables(url) == {"alembic_version"}
    migrate.upgrade()
    assert PLATFORM_TABLES <= _tables(url)
    from shared import db

    db.engine().dispose()
    clients.reset()
