"""Events and rewards: events with AND-combined conditions and rewards (budgets), activity
facts the `activity` consumer records (one row per source event, so redelivery and reordering
change nothing), referral codes, claims (every attempt, the audit trail), and a double-entry
ledger the wallet is read from.

Exactly-once grants rest on constraints, not on code paths: a claim that holds a slot has a
sequence number unique per (event, user) and at most the event's per-user limit; ledger rows
are unique per (claim, reward, account); a budget only moves by a conditional UPDATE.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE reward_events (
            id                uuid PRIMARY KEY,
            title             text NOT NULL,
            description       text NOT NULL DEFAULT '',
            starts_at         timestamptz NOT NULL,
            ends_at           timestamptz NOT NULL,
            time_zone         text NOT NULL DEFAULT 'Etc/UTC',
            reset_hour        smallint NOT NULL DEFAULT 0 CHECK (reset_hour BETWEEN 0 AND 23),
            status            text NOT NULL DEFAULT 'draft'
                              CHECK (status IN ('draft', 'active', 'ended')),
            requires_approval boolean NOT NULL DEFAULT false,
            conditions        jsonb NOT NULL DEFAULT '[]'::jsonb,
            claim_limit       integer NOT NULL CHECK (claim_limit >= 1),  -- max per_user_limit
            created_by        uuid NOT NULL REFERENCES users (id),
            created_at        timestamptz NOT NULL DEFAULT now(),
            updated_at        timestamptz NOT NULL DEFAULT now(),
            CHECK (ends_at > starts_at)
        )
    """)
    op.execute("CREATE INDEX reward_events_active ON reward_events (ends_at, id) "
               "WHERE status = 'active'")
    op.execute("""
        CREATE TABLE event_rewards (
            id             uuid PRIMARY KEY,
            event_id       uuid NOT NULL REFERENCES reward_events (id),
            position       smallint NOT NULL,
            kind           text NOT NULL CHECK (kind IN ('points', 'item', 'coupon')),
            name           text NOT NULL DEFAULT '',
            quantity       integer NOT NULL CHECK (quantity >= 1),
            per_user_limit integer NOT NULL DEFAULT 1 CHECK (per_user_limit >= 1),
            budget         bigint CHECK (budget IS NULL OR budget >= 0),
            remaining      bigint CHECK (remaining IS NULL OR remaining >= 0),
            UNIQUE (event_id, position),
            CHECK ((budget IS NULL) = (remaining IS NULL) AND (remaining IS NULL
                   OR remaining <= budget))
        )
    """)
    op.execute("""
        CREATE TABLE activity_facts (
            user_id     uuid NOT NULL,
            kind        text NOT NULL,   -- login, chat_message, character_created,
                                         -- friend_invited, counter:<name>
            key         text NOT NULL,   -- the source's natural id: one fact per source event
            amount      bigint NOT NULL DEFAULT 1,
            occurred_at timestamptz NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (user_id, kind, key)
        )
    """)
    op.execute("CREATE INDEX activity_facts_window ON activity_facts "
               "(user_id, kind, occurred_at)")
    op.execute("""
        CREATE TABLE referral_codes (
            code       text PRIMARY KEY,
            user_id    uuid NOT NULL UNIQUE REFERENCES users (id),
            created_at timestamptz NOT NULL DEFAULT now()
        )
    """)
    op.execute("""
        CREATE TABLE reward_claims (
            id              uuid PRIMARY KEY,
            event_id        uuid NOT NULL REFERENCES reward_events (id),
            user_id         uuid NOT NULL REFERENCES users (id),
            seq             integer CHECK (seq IS NULL OR seq >= 1),  -- set while it holds a slot
            status          text NOT NULL
                            CHECK (status IN ('granted', 'pending', 'rejected', 'refused')),
            reasons         jsonb NOT NULL DEFAULT '[]'::jsonb,
            rewards         jsonb NOT NULL DEFAULT '[]'::jsonb,  -- what it grants (or would)
            idempotency_key text,
            created_at      timestamptz NOT NULL DEFAULT now(),
            decided_at      timestamptz,
            decided_by      uuid REFERENCES users (id),
            note            text,
            UNIQUE (event_id, user_id, seq),
            CHECK ((seq IS NOT NULL) = (status IN ('granted', 'pending')))
        )
    """)
    op.execute("CREATE INDEX reward_claims_time ON reward_claims (created_at DESC, id DESC)")
    op.execute("CREATE INDEX reward_claims_user ON reward_claims "
               "(user_id, created_at DESC, id DESC)")
    op.execute("CREATE INDEX reward_claims_event ON reward_claims "
               "(event_id, created_at DESC, id DESC)")
    op.execute("CREATE INDEX reward_claims_pending ON reward_claims (created_at, id) "
               "WHERE status = 'pending'")
    op.execute("""
        CREATE TABLE reward_ledger (
            id         bigserial PRIMARY KEY,
            claim_id   uuid NOT NULL REFERENCES reward_claims (id),
            reward_id  uuid NOT NULL REFERENCES event_rewards (id),
            account    text NOT NULL,   -- user:<id> (credit) or event:<id> (debit)
            asset      text NOT NULL,   -- points, item:<name>, coupon:<name>
            amount     bigint NOT NULL CHECK (amount <> 0),
            created_at timestamptz NOT NULL DEFAULT now(),
            UNIQUE (claim_id, reward_id, account)
        )
    """)
    op.execute("CREATE INDEX reward_ledger_account ON reward_ledger (account, asset)")


def downgrade() -> None:
    for table in ("reward_ledger", "reward_claims", "referral_codes", "activity_facts",
                  "event_rewards", "reward_events"):
        op.execute(f"DROP TABLE {table}")
