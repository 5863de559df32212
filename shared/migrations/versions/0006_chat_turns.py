"""Chat turns: daily token usage per user (quota), and how far a conversation's running
summary reaches (turns up to that message are folded into it, not sent again).

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE token_usage (
            user_id uuid NOT NULL REFERENCES users (id),
            day     date NOT NULL,
            tokens  bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (user_id, day)
        )
    """)
    op.execute("ALTER TABLE conversations ADD COLUMN summary_upto_seq bigint NOT NULL DEFAULT 0")


def downgrade() -> None:
    op.execute("ALTER TABLE conversations DROP COLUMN summary_upto_seq")
    op.execute("DROP TABLE token_usage")
