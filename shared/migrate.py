"""Apply database migrations: `python -m shared.migrate [revision]` (default: head).

Run as its own step (a Cloud Run job on deploy; the local cloud at start-up), never on a request.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MIGRATIONS = Path(__file__).with_name("migrations")


def upgrade(revision: str = "head") -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    command.upgrade(config, revision)


APP_ROLE = "app_rw"


def grant_app_users(users: list[str]) -> None:
    """Give the functions' database users (Cloud SQL IAM users, one per service account) read
    and write on every table, now and for tables later migrations create. Idempotent."""
    import sqlalchemy

    from shared import db

    statements = [
        f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') "
        f"THEN CREATE ROLE {APP_ROLE} NOLOGIN; END IF; END $$",
        f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_ROLE}",
        f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {APP_ROLE}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT, UPDATE ON SEQUENCES "
        f"TO {APP_ROLE}",
    ]
    with db.transaction() as conn:
        for statement in statements:
            conn.execute(sqlalchemy.text(statement))
        for user in users:
            exists = conn.execute(sqlalchemy.text("SELECT 1 FROM pg_roles WHERE rolname = :u"),
                                  {"u": user}).first()
            if exists is None:
                raise RuntimeError(f"database user {user!r} does not exist")
            quoted = '"' + user.replace('"', '""') + '"'
            conn.execute(sqlalchemy.text(f"GRANT {APP_ROLE} TO {quoted}"))


def current_revision() -> str | None:
    """The revision the database is at (None when never migrated)."""
    import sqlalchemy

    from shared import db

    with db.engine().connect() as conn:
        exists = conn.execute(sqlalchemy.text("SELECT to_regclass('alembic_version')")).scalar()
        if exists is None:
            return None
        return conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalar()


if __name__ == "__main__":
    from shared.bootstrap import init

    init()
    upgrade(sys.argv[1] if len(sys.argv) > 1 else "head")
    # Set by the deployment: the functions' IAM database users, comma-separated.
    app_users = [u.strip() for u in os.environ.get("DB_APP_USERS", "").split(",") if u.strip()]
    if app_users:
        grant_app_users(app_users)
