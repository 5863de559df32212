"""Alembic environment: migrations run as their own step (`python -m shared.migrate`), never on a
request or at import. The connection comes from the same settings as the functions."""

from __future__ import annotations

from alembic import context as alembic_context

from shared import db

with db.engine().connect() as connection:
    alembic_context.configure(connection=connection, target_metadata=None,
                              transaction_per_migration=True)
    with alembic_context.begin_transaction():
        alembic_context.run_migrations()
    connection.commit()
