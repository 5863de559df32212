"""Uploads to Cloud Storage: one record per upload, and per-user byte accounting.

An upload is `pending` from the moment its signed URL (or direct upload) is issued until the
finalize consumer checks the object and marks it `accepted` or `rejected` (with a reason).
`upload_usage` holds each user's bytes: `reserved_bytes` for pending uploads, `used_bytes` for
accepted ones (the quota covers both) and `uploaded_bytes_total`, a monotonic business metric.

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE uploads (
            id              uuid PRIMARY KEY,
            owner_id        uuid NOT NULL REFERENCES users (id),
            purpose         text NOT NULL
                            CHECK (purpose IN ('avatar', 'character_avatar', 'attachment')),
            content_type    text NOT NULL,
            declared_size   bigint NOT NULL CHECK (declared_size > 0),
            filename        text,  -- display only; never part of an object name
            character_id    uuid REFERENCES characters (id),
            via             text NOT NULL CHECK (via IN ('signed_url', 'direct')),
            object_name     text NOT NULL UNIQUE,  -- under the quarantine prefix
            final_name      text NOT NULL UNIQUE,  -- where an accepted object lives
            status          text NOT NULL DEFAULT 'pending'
                            CHECK (status IN ('pending', 'accepted', 'rejected')),
            reason          text,
            detail          text,
            size            bigint,  -- the object's real size, once finalized
            url_expires_at  timestamptz NOT NULL,
            created_at      timestamptz NOT NULL DEFAULT now(),
            finalized_at    timestamptz,
            CHECK ((purpose = 'character_avatar') = (character_id IS NOT NULL))
        )
    """)
    op.execute("CREATE INDEX uploads_owner ON uploads (owner_id, created_at DESC)")
    op.execute("CREATE INDEX uploads_pending ON uploads (url_expires_at) "
               "WHERE status = 'pending'")
    op.execute("""
        CREATE TABLE upload_usage (
            user_id              uuid PRIMARY KEY REFERENCES users (id),
            reserved_bytes       bigint NOT NULL DEFAULT 0 CHECK (reserved_bytes >= 0),
            used_bytes           bigint NOT NULL DEFAULT 0 CHECK (used_bytes >= 0),
            uploaded_bytes_total bigint NOT NULL DEFAULT 0,
            updated_at           timestamptz NOT NULL DEFAULT now()
        )
    """)


def downgrade() -> None:
    op.execute("DROP TABLE upload_usage")
    op.execute("DROP TABLE uploads")
