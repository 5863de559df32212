"""Circuit breaker state per model, shared by every instance of every function that calls it.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE model_breakers (
            model                text PRIMARY KEY,
            consecutive_failures integer NOT NULL DEFAULT 0,
            open_until           timestamptz,
            updated_at           timestamptz NOT NULL DEFAULT now()
        )
    """)


def downgrade() -> None:
    op.execute("DROP TABLE model_breakers")
