"""Conversations and their messages.

Messages carry a global `seq` (bigserial) so "newest first" pages are stable while new messages
arrive, a `parent_id` and `active` flag so later turns can branch (regenerate, edit), and a
generated full-text vector for searching one's own messages.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE conversations (
            id              uuid PRIMARY KEY,
            user_id         uuid NOT NULL REFERENCES users (id),
            character_id    uuid NOT NULL REFERENCES characters (id),
            title           text NOT NULL,
            summary         text NOT NULL DEFAULT '',  -- older turns folded by chat_turn
            created_at      timestamptz NOT NULL DEFAULT now(),
            updated_at      timestamptz NOT NULL DEFAULT now(),
            last_message_at timestamptz NOT NULL DEFAULT now(),
            deleted_at      timestamptz
        )
    """)
    op.execute("CREATE INDEX conversations_user_recent ON conversations "
               "(user_id, last_message_at DESC, id DESC) WHERE deleted_at IS NULL")
    op.execute("""
        CREATE TABLE messages (
            id              uuid PRIMARY KEY,
            seq             bigserial NOT NULL UNIQUE,
            conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            parent_id       uuid REFERENCES messages (id),
            role            text NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
            content         text NOT NULL,
            active          boolean NOT NULL DEFAULT true,
            input_tokens    integer NOT NULL DEFAULT 0,
            output_tokens   integer NOT NULL DEFAULT 0,
            created_at      timestamptz NOT NULL DEFAULT now(),
            search          tsvector GENERATED ALWAYS AS (to_tsvector('simple', content)) STORED
        )
    """)
    op.execute("CREATE INDEX messages_conversation_seq ON messages (conversation_id, seq DESC)")
    op.execute("CREATE INDEX messages_search ON messages USING gin (search)")


def downgrade() -> None:
    op.execute("DROP TABLE messages")
    op.execute("DROP TABLE conversations")
