"""Apply database migrations: `python -m shared.migrate [revision]` (default: head).

Run as its own step (a Cloud Run job on deploy; the local cloud at start-up), never on a request.
"""

from __future__ import annotations

import sys
from pathlib import Path

MIGRATIONS = Path(__file__).with_name("migrations")


def upgrade(revision: str = "head") -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    command.upgrade(config, revision)


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
