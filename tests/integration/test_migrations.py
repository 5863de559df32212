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


def test_function_database_users_get_read_write_after_migrating(
        postgres: PostgresHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the deploy's migration job does for the functions' Cloud SQL IAM users."""
    from shared import clients, db, migrate

    url = fresh_database(postgres)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("APP_ENV", "test")
    clients.reset()
    migrate.upgrade()
    user = "users-fn@unit-project.iam"
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{user}') "
            f"THEN CREATE ROLE \"{user}\" LOGIN PASSWORD 'pw'; END IF; END $$"))
    with pytest.raises(RuntimeError, match="does not exist"):
        migrate.grant_app_users(["nobody@unit-project.iam"])
    migrate.grant_app_users([user])
    migrate.grant_app_users([user])  # every deploy runs it again
    # A table a later migration creates is covered by the default privileges.
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE later (id int)"))
    as_function = sqlalchemy.create_engine(
        sqlalchemy.make_url(url).set(username=user, password="pw"))
    try:
        with as_function.begin() as conn:
            conn.execute(sqlalchemy.text(
                "INSERT INTO rate_limits (key, tokens, updated_at) VALUES ('k', 1, now())"))
            conn.execute(sqlalchemy.text("INSERT INTO later VALUES (1)"))
            assert conn.execute(sqlalchemy.text("SELECT count(*) FROM later")).scalar() == 1
        with pytest.raises(sqlalchemy.exc.ProgrammingError), as_function.begin() as conn:
            conn.execute(sqlalchemy.text("DROP TABLE later"))  # read-write, not owner
    finally:
        as_function.dispose()
        admin.dispose()
        db.engine().dispose()
        clients.reset()
