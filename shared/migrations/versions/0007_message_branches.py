"""Message branches: regenerate and edit add siblings under the same parent, so alternatives
are looked up by parent.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX messages_parent ON messages (parent_id)")


def downgrade() -> None:
    op.execute("DROP INDEX messages_parent")
