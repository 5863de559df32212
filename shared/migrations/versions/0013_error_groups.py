"""Error fan-out (`shared.error_groups`, `shared.webhooks`).

`error_groups`: one row per fingerprint (tenant, service, exception type, normalized message, top
frame) with its counts and state (`open`, `resolved`). `error_group_users`: the distinct users a
group affected (exact, capped per group), with when each was last affected (threshold windows).
`error_group_minutes`: occurrences per group and minute (threshold windows). `notifications`:
what was announced (deterministic ids: a redelivery cannot announce twice). `webhooks`:
destinations managed by operators; `webhook_deliveries`: one row per notification and
destination, `delivered_at` set once the receiver accepted it.

Revision ID: 0013
Revises: 0012
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE error_groups (
            fingerprint    text PRIMARY KEY,
            tenant         text NOT NULL,
            service        text NOT NULL,
            environment    text NOT NULL,
            exception_type text NOT NULL,
            message        text NOT NULL,
            top_frame      text NOT NULL,
            sample_message text NOT NULL,
            occurrences    bigint NOT NULL DEFAULT 0 CHECK (occurrences >= 0),
            users          bigint NOT NULL DEFAULT 0 CHECK (users >= 0),
            status         text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved')),
            first_seen     timestamptz NOT NULL,
            last_seen      timestamptz NOT NULL,
            resolved_at    timestamptz,
            updated_at     timestamptz NOT NULL DEFAULT now()
        )
    """)
    op.execute("CREATE INDEX error_groups_service_last_seen ON error_groups (service, last_seen)")
    op.execute("""
        CREATE TABLE error_group_users (
            fingerprint text NOT NULL REFERENCES error_groups ON DELETE CASCADE,
            user_id     text NOT NULL,
            last_seen   timestamptz NOT NULL,
            PRIMARY KEY (fingerprint, user_id)
        )
    """)
    op.execute("""
        CREATE TABLE error_group_minutes (
            fingerprint text NOT NULL REFERENCES error_groups ON DELETE CASCADE,
            minute      timestamptz NOT NULL,
            occurrences bigint NOT NULL CHECK (occurrences > 0),
            PRIMARY KEY (fingerprint, minute)
        )
    """)
    op.execute("""
        CREATE TABLE notifications (
            id          uuid PRIMARY KEY,
            kind        text NOT NULL,
            subject     text NOT NULL,
            summary     text NOT NULL,
            payload     jsonb NOT NULL,
            occurred_at timestamptz NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now()
        )
    """)
    op.execute("CREATE INDEX notifications_subject_kind ON notifications "
               "(subject, kind, occurred_at)")
    op.execute("""
        CREATE TABLE webhooks (
            id         uuid PRIMARY KEY,
            name       text NOT NULL,
            url        text NOT NULL,
            format     text NOT NULL CHECK (format IN ('generic', 'slack', 'alertmanager')),
            kinds      text[] NOT NULL,
            enabled    boolean NOT NULL DEFAULT true,
            secret     text NOT NULL,
            created_by uuid,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )
    """)
    op.execute("""
        CREATE TABLE webhook_deliveries (
            id              uuid PRIMARY KEY,
            notification_id uuid NOT NULL REFERENCES notifications ON DELETE CASCADE,
            webhook_id      uuid NOT NULL REFERENCES webhooks ON DELETE CASCADE,
            attempts        integer NOT NULL DEFAULT 0,
            last_status     integer,
            last_error      text,
            last_attempt_at timestamptz,
            delivered_at    timestamptz,
            created_at      timestamptz NOT NULL DEFAULT now(),
            UNIQUE (notification_id, webhook_id)
        )
    """)
    op.execute("CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (webhook_id)")


def downgrade() -> None:
    for table in ("webhook_deliveries", "webhooks", "notifications", "error_group_minutes",
                  "error_group_users", "error_groups"):
        op.execute(f"DROP TABLE {table}")
