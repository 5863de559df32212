"""Alert rules on the minute rollups (seed 003) and their states (`shared.alerts`).

`alert_rules`: one rule of a kind (`service_down`, `error_rate`, `latency`, `traffic_spike`)
with its parameters, for one tenant or every tenant (NULL) and one service or every service
(NULL). The four defaults of seed 003 are seeded here, for every tenant and service, with fixed
ids. `alert_states`: the state of a rule for one (tenant, service) it watches, kept across
rollup runs; `last_evaluated_minute` makes re-evaluating a minute a no-op.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# (id, name, kind, params): the defaults of seed 003.
DEFAULT_RULES = (
    ("00000000-0000-4000-8000-0000000a1e01", "Service down", "service_down",
     '{"for_minutes": 1, "expected_minutes": 5}'),
    ("00000000-0000-4000-8000-0000000a1e02", "Error rate above 5%", "error_rate",
     '{"threshold": 0.05, "for_minutes": 2, "min_requests": 10}'),
    ("00000000-0000-4000-8000-0000000a1e03", "p95 latency above 2 s", "latency",
     '{"threshold": 2000, "quantile": 0.95, "for_minutes": 5, "min_requests": 1}'),
    ("00000000-0000-4000-8000-0000000a1e04", "Traffic spike", "traffic_spike",
     '{"multiplier": 3, "baseline_minutes": 30, "for_minutes": 2, "min_requests": 10}'),
)


def upgrade() -> None:
    op.execute("""
        CREATE TABLE alert_rules (
            id          uuid PRIMARY KEY,
            tenant      text,
            name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
            kind        text NOT NULL CHECK (kind IN ('service_down', 'error_rate', 'latency',
                                                      'traffic_spike')),
            service     text,
            params      jsonb NOT NULL DEFAULT '{}'::jsonb,
            enabled     boolean NOT NULL DEFAULT true,
            created_at  timestamptz NOT NULL DEFAULT now(),
            updated_at  timestamptz NOT NULL DEFAULT now()
        )
    """)
    op.execute("""
        CREATE TABLE alert_states (
            rule_id               uuid NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
            tenant                text NOT NULL,
            service               text NOT NULL,
            state                 text NOT NULL CHECK (state IN ('ok', 'pending', 'firing',
                                                                 'resolved')),
            since                 timestamptz NOT NULL,
            started_at            timestamptz,
            last_value            double precision,
            last_evaluated_minute timestamptz NOT NULL,
            fired_at              timestamptz,
            resolved_at           timestamptz,
            updated_at            timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (rule_id, tenant, service)
        )
    """)
    # The evaluation reads the states not `ok` every minute; the API filters by state.
    op.execute("CREATE INDEX alert_states_active ON alert_states (state) WHERE state <> 'ok'")
    insert = sa.text("INSERT INTO alert_rules (id, name, kind, params) "
                     "VALUES (CAST(:id AS uuid), :name, :kind, CAST(:params AS jsonb))")
    for rule_id, name, kind, params in DEFAULT_RULES:
        op.get_bind().execute(insert, {"id": rule_id, "name": name, "kind": kind,
                                       "params": params})


def downgrade() -> None:
    op.execute("DROP TABLE alert_states")
    op.execute("DROP TABLE alert_rules")
