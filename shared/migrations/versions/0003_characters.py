"""Characters: personas users create and talk with (Character Card V2 fields).

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE characters (
            id                        uuid PRIMARY KEY,
            owner_id                  uuid NOT NULL REFERENCES users (id),
            name                      text NOT NULL,
            description               text NOT NULL DEFAULT '',
            personality               text NOT NULL DEFAULT '',
            scenario                  text NOT NULL DEFAULT '',
            greeting                  text NOT NULL DEFAULT '',
            alternate_greetings       text[] NOT NULL DEFAULT '{}',
            example_dialogue          text NOT NULL DEFAULT '',
            system_prompt             text NOT NULL DEFAULT '',
            post_history_instructions text NOT NULL DEFAULT '',
            creator_notes             text NOT NULL DEFAULT '',
            creator                   text NOT NULL DEFAULT '',
            character_version         text NOT NULL DEFAULT '',
            tags                      text[] NOT NULL DEFAULT '{}',
            extensions                jsonb NOT NULL DEFAULT '{}'::jsonb,
            visibility                text NOT NULL DEFAULT 'private'
                                      CHECK (visibility IN ('public', 'unlisted', 'private')),
            avatar_upload_id          uuid,
            safety_level              text NOT NULL DEFAULT 'standard'
                                      CHECK (safety_level IN ('strict', 'standard', 'relaxed')),
            popularity                bigint NOT NULL DEFAULT 0,  -- conversations started
            created_at                timestamptz NOT NULL DEFAULT now(),
            updated_at                timestamptz NOT NULL DEFAULT now(),
            deleted_at                timestamptz
        )
    """)
    # The public listing, by recency and by popularity, and each owner's own list.
    op.execute("CREATE INDEX characters_public_recent ON characters (created_at DESC, id DESC) "
               "WHERE visibility = 'public' AND deleted_at IS NULL")
    op.execute("CREATE INDEX characters_public_popular ON characters (popularity DESC, id DESC) "
               "WHERE visibility = 'public' AND deleted_at IS NULL")
    op.execute("CREATE INDEX characters_owner ON characters (owner_id, created_at DESC, id DESC) "
               "WHERE deleted_at IS NULL")
    op.execute("CREATE INDEX characters_tags ON characters USING gin (tags)")


def downgrade() -> None:
    op.execute("DROP TABLE characters")
