"""Platform tables: transactional outbox, consumer dedupe ids, idempotency records.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE outbox (
            id              bigserial PRIMARY KEY,
            event_id        text NOT NULL UNIQUE,
            topic           text NOT NULL,
            payload         bytea NOT NULL,
            attributes      jsonb NOT NULL DEFAULT '{}'::jsonb,
            created_at      timestamptz NOT NULL DEFAULT now(),
            published_at    timestamptz,
            attempts        integer NOT NULL DEFAULT 0,
            last_error      text,
            next_attempt_at timestamptz NOT NULL DEFAULT now()
        )
    """)
    # The relay scans only what is still unpublished.
    op.execute("CREATE INDEX outbox_pending ON outbox (next_attempt_at) "
               "WHERE published_at IS NULL")
    op.execute("CREATE INDEX outbox_published ON outbox (published_at) "
               "WHERE published_at IS NOT NULL")
    op.execute("""
        CREATE TABLE processed_messages (
            consumer     text NOT NULL,
            key          text NOT NULL,
            processed_at timestamptz NOT NULL DEFAULT now(),
            expires_at   timestamptz NOT NULL,
            PRIMARY KEY (consumer, key)
        )
    """)
    op.execute("CREATE INDEX processed_messages_expiry ON processed_messages (expires_at)")
    op.execute("""
        CREATE TABLE idempotency_keys (
            scope           text NOT NULL,
            key             text NOT NULL,
            request_hash    text NOT NULL,
            status          text NOT NULL CHECK (status IN ('in_progress', 'completed')),
            response_status integer,
            response_body   jsonb,
            created_at      timestamptz NOT NULL DEFAULT now(),
            expires_at      timestamptz NOT NULL,
            PRIMARY KEY (scope, key)
        )
    """)
    op.execute("CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at)")


def downgrade() -> None:
    op.execute("DROP TABLE idempotency_keys")
    op.execute("DROP TABLE processed_messages")
    op.execute("DROP TABLE outbox")
