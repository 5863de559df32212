"""Identity: users, sessions, rotating refresh tokens, login throttling, shared rate-limit
buckets, and the access restrictions the user lifecycle maintains.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE users (
            id               uuid PRIMARY KEY,
            email            text UNIQUE,            -- normalized (lower-case); NULL once deleted
            password_hash    text,                   -- NULL for external-IdP-only accounts
            display_name     text NOT NULL,
            avatar_upload_id uuid,
            locale           text NOT NULL DEFAULT 'en',
            time_zone        text NOT NULL DEFAULT 'Etc/UTC',
            roles            text[] NOT NULL DEFAULT ARRAY['user'],
            status           text NOT NULL DEFAULT 'active'
                             CHECK (status IN ('active', 'inactive', 'suspended', 'deleted')),
            status_version   bigint NOT NULL DEFAULT 0,  -- orders lifecycle events
            external_issuer  text,
            external_subject text,
            created_at       timestamptz NOT NULL DEFAULT now(),
            updated_at       timestamptz NOT NULL DEFAULT now(),
            deleted_at       timestamptz,
            UNIQUE (external_issuer, external_subject)
        )
    """)
    op.execute("CREATE INDEX users_created ON users (created_at, id)")
    op.execute("""
        CREATE TABLE sessions (
            id             uuid PRIMARY KEY,
            user_id        uuid NOT NULL REFERENCES users (id),
            created_at     timestamptz NOT NULL DEFAULT now(),
            last_used_at   timestamptz NOT NULL DEFAULT now(),
            expires_at     timestamptz NOT NULL,
            revoked_at     timestamptz,
            revoked_reason text,
            user_agent     text,
            ip             text
        )
    """)
    op.execute("CREATE INDEX sessions_user ON sessions (user_id) WHERE revoked_at IS NULL")
    op.execute("""
        CREATE TABLE refresh_tokens (
            token_hash  bytea PRIMARY KEY,           -- sha256 of the opaque token
            session_id  uuid NOT NULL REFERENCES sessions (id),
            created_at  timestamptz NOT NULL DEFAULT now(),
            expires_at  timestamptz NOT NULL,
            used_at     timestamptz
        )
    """)
    op.execute("CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id)")
    op.execute("""
        CREATE TABLE login_attempts (
            email_hash   bytea PRIMARY KEY,          -- keyed by address, known or not
            failures     integer NOT NULL DEFAULT 0,
            last_failure timestamptz NOT NULL DEFAULT now(),
            locked_until timestamptz
        )
    """)
    op.execute("""
        CREATE TABLE rate_limits (
            key        text PRIMARY KEY,
            tokens     double precision NOT NULL,
            updated_at timestamptz NOT NULL
        )
    """)
    op.execute("""
        CREATE TABLE account_restrictions (
            user_id              uuid PRIMARY KEY REFERENCES users (id),
            status               text NOT NULL,
            status_version       bigint NOT NULL,
            conversations_read_only boolean NOT NULL DEFAULT false,
            chat_blocked         boolean NOT NULL DEFAULT false,
            claims_blocked       boolean NOT NULL DEFAULT false,
            updated_at           timestamptz NOT NULL DEFAULT now()
        )
    """)
    op.execute("""
        CREATE TABLE cleanup_jobs (
            user_id      uuid NOT NULL REFERENCES users (id),
            kind         text NOT NULL CHECK (kind IN ('conversations', 'uploads')),
            scheduled_at timestamptz NOT NULL DEFAULT now(),
            done_at      timestamptz,
            PRIMARY KEY (user_id, kind)
        )
    """)


def downgrade() -> None:
    for table in ("cleanup_jobs", "account_restrictions", "rate_limits", "login_attempts",
                  "refresh_tokens", "sessions", "users"):
        op.execute(f"DROP TABLE {table}")
