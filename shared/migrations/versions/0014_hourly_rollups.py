"""Hourly rollups: each closed hour's minute rollups merged per (tenant, service, environment,
operation), so a day's percentiles merge 24 sketches per key instead of 1,440. Written by the
`rollup` function once an hour's minutes can no longer change (past the lateness allowance);
`rollup_state` row `spans_hourly` remembers the last hour done.

Revision ID: 0014
Revises: 0013
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE rollups_hourly (
            hour        timestamptz NOT NULL,
            tenant      text NOT NULL,
            service     text NOT NULL,
            environment text NOT NULL,
            operation   text NOT NULL,
            requests    bigint NOT NULL CHECK (requests > 0),
            errors      bigint NOT NULL CHECK (errors >= 0 AND errors <= requests),
            sketch      bytea NOT NULL,
            rolled_at   timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (hour, tenant, service, environment, operation)
        )
    """)
    op.execute("CREATE INDEX rollups_hourly_service ON rollups_hourly (service, hour)")


def downgrade() -> None:
    op.execute("DROP TABLE rollups_hourly")
