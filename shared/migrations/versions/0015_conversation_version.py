"""A version per conversation, bumped by every change to its active path (a turn, an edit, a
regeneration, a swipe). A turn is stored by one statement that bumps the version only if it is
still the one the turn was built on: the row update waits for a concurrent turn's lock and
re-checks the version after it, so two turns can never both extend the same path.

Revision ID: 0015
Revises: 0014
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE conversations ADD COLUMN version bigint NOT NULL DEFAULT 0")


def downgrade() -> None:
    op.execute("ALTER TABLE conversations DROP COLUMN version")
