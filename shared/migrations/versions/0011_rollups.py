"""Telemetry rollups: one row per closed minute and (tenant, service, environment, operation) of
entry spans (requests): request count, error count and a mergeable latency sketch
(`shared.sketch`, 1% relative accuracy) from which percentiles over any range are computed by
merging. The key is deterministic, so re-rolling a minute replaces its rows with the same
values; `rollup_state` remembers the last minute fully rolled up, so a lost tick is caught up.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE rollups (
            minute      timestamptz NOT NULL,
            tenant      text NOT NULL,
            service     text NOT NULL,
            environment text NOT NULL,
            operation   text NOT NULL,
            requests    bigint NOT NULL CHECK (requests > 0),
            errors      bigint NOT NULL CHECK (errors >= 0 AND errors <= requests),
            sketch      bytea NOT NULL,
            rolled_at   timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (minute, tenant, service, environment, operation)
        )
    """)
    # Metrics of a service (all tenants, or one tenant's) over a range of minutes.
    op.execute("CREATE INDEX rollups_service_minute ON rollups (service, minute)")
    op.execute("CREATE INDEX rollups_tenant_service_minute ON rollups (tenant, service, minute)")
    op.execute("""
        CREATE TABLE rollup_state (
            name        text PRIMARY KEY,
            last_minute timestamptz NOT NULL,
            updated_at  timestamptz NOT NULL DEFAULT now()
        )
    """)


def downgrade() -> None:
    op.execute("DROP TABLE rollup_state")
    op.execute("DROP TABLE rollups")
