"""Telemetry: spans and logs received over OTLP, partitioned by day (UTC) so retention drops
whole partitions, and the tokens that let a tenant send or read them.

Ids are bytea (16-byte trace ids, 8-byte span ids), shown as lowercase hex by the APIs. A span's
identity is (trace_id, span_id); its start_time is part of the key only because a partitioned
table's unique keys must include the partition key, and a re-delivered span has the same start.
A log record's identity is a 16-byte digest the writer computes from its content. Partitions are
created ahead by `shared.telemetry_store.ensure_partitions` (the writer, for the days it sees;
maintenance, for today and tomorrow) and dropped by retention.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE spans (
            trace_id        bytea NOT NULL,
            span_id         bytea NOT NULL,
            parent_span_id  bytea,
            start_time      timestamptz NOT NULL,
            duration_ns     bigint NOT NULL CHECK (duration_ns >= 0),
            tenant          text NOT NULL DEFAULT '',
            service         text NOT NULL,
            environment     text NOT NULL DEFAULT '',
            name            text NOT NULL,
            kind            smallint NOT NULL DEFAULT 0,
            status_code     smallint NOT NULL DEFAULT 0,
            status_message  text NOT NULL DEFAULT '',
            attributes      jsonb NOT NULL DEFAULT '{}',
            resource        jsonb NOT NULL DEFAULT '{}',
            events          jsonb NOT NULL DEFAULT '[]',
            links           jsonb NOT NULL DEFAULT '[]',
            scope           text NOT NULL DEFAULT '',
            PRIMARY KEY (trace_id, span_id, start_time)
        ) PARTITION BY RANGE (start_time)
    """)
    # kind: OTLP SpanKind (0 unspecified, 1 internal, 2 server, 3 client, 4 producer,
    # 5 consumer); status_code: 0 unset, 1 ok, 2 error.
    op.execute("CREATE INDEX spans_service_time ON spans (service, start_time DESC)")
    op.execute("CREATE INDEX spans_operation_time ON spans (service, name, start_time DESC)")
    op.execute("CREATE INDEX spans_error_time ON spans (service, start_time DESC) "
               "WHERE status_code = 2")
    # Reads with a tenant's read token are scoped to its tenant.
    op.execute("CREATE INDEX spans_tenant_time ON spans (tenant, service, start_time DESC)")
    op.execute("""
        CREATE TABLE logs (
            log_id          bytea NOT NULL,
            time            timestamptz NOT NULL,
            observed_time   timestamptz,
            tenant          text NOT NULL DEFAULT '',
            service         text NOT NULL,
            environment     text NOT NULL DEFAULT '',
            severity_number smallint NOT NULL DEFAULT 0,
            severity_text   text NOT NULL DEFAULT '',
            body            text NOT NULL DEFAULT '',
            trace_id        bytea,
            span_id         bytea,
            attributes      jsonb NOT NULL DEFAULT '{}',
            resource        jsonb NOT NULL DEFAULT '{}',
            scope           text NOT NULL DEFAULT '',
            PRIMARY KEY (log_id, time)
        ) PARTITION BY RANGE (time)
    """)
    op.execute("CREATE INDEX logs_service_time ON logs (service, time DESC)")
    op.execute("CREATE INDEX logs_tenant_time ON logs (tenant, service, time DESC)")
    op.execute("CREATE INDEX logs_trace ON logs (trace_id, time) WHERE trace_id IS NOT NULL")
    op.execute("CREATE INDEX logs_body ON logs USING gin (to_tsvector('simple', body))")
    op.execute("""
        CREATE TABLE telemetry_tokens (
            token_hash  bytea PRIMARY KEY,
            tenant      text NOT NULL,
            scope       text NOT NULL CHECK (scope IN ('ingest', 'read')),
            description text NOT NULL DEFAULT '',
            created_at  timestamptz NOT NULL DEFAULT now(),
            revoked_at  timestamptz
        )
    """)


def downgrade() -> None:
    op.execute("DROP TABLE telemetry_tokens")
    op.execute("DROP TABLE logs")
    op.execute("DROP TABLE spans")
