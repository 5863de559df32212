"""The product's topology: one typed, declarative manifest read by both Pulumi and the local cloud.

Nothing about topology is written anywhere else. `infra/` turns this into Google Cloud resources;
`emulators/` turns it into local processes and wiring; tests check that code and manifest agree.
This module must stay import-light (stdlib only): the local cloud and tests read it often.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Trigger(StrEnum):
    """How a function is invoked."""

    HTTP = "http"  # called by clients over HTTPS
    TOPIC = "topic"  # Pub/Sub push (explicit subscription to the function URL)
    SCHEDULE = "schedule"  # Cloud Scheduler -> topic -> push subscription


@dataclass(frozen=True)
class RetryPolicy:
    """Pub/Sub push retry backoff bounds (seconds), as the subscription's retry policy."""

    minimum_backoff_s: float = 10.0
    maximum_backoff_s: float = 600.0


@dataclass(frozen=True)
class Subscription:
    """A push subscription from a topic to a function."""

    name: str
    topic: str
    function: str
    ack_deadline_s: int = 60
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    dead_letter_topic: str | None = None
    max_delivery_attempts: int = 5


@dataclass(frozen=True)
class Topic:
    """A Pub/Sub topic. `external` means its producer lives outside this repo (a bucket, a
    scheduler, an OpenTelemetry Collector) or it is a dead-letter sink read by operators."""

    name: str
    external: bool = False
    description: str = ""


@dataclass(frozen=True)
class Schedule:
    """A Cloud Scheduler job that publishes `payload` to `topic` on `cron` in `time_zone`."""

    name: str
    cron: str
    topic: str
    time_zone: str = "Etc/UTC"
    payload: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Bucket:
    """A Cloud Storage bucket; object finalize events go to `notification_topic`."""

    name: str
    notification_topic: str | None = None
    notification_events: tuple[str, ...] = ("OBJECT_FINALIZE",)
    # Objects land here until validated; whatever is left behind is deleted after this many days.
    quarantine_prefix: str = "quarantine/"
    quarantine_days: int = 1
    browser_uploads: bool = True  # CORS for PUTs to signed URLs from the allowed origins


@dataclass(frozen=True)
class RateLimit:
    """A token bucket per caller: `rate_per_s` sustained, `burst` at once (seed 004's gateway)."""

    rate_per_s: float
    burst: int


# Route classes and their limits (seed 004): shared across instances through PostgreSQL.
RATE_LIMITS: dict[str, RateLimit] = {
    "auth": RateLimit(10, 20),
    "users": RateLimit(20, 40),
    "chat": RateLimit(30, 60),
    "batch": RateLimit(5, 10),
    # OTLP exporters send a batch every few seconds per process; many processes share an IP.
    "telemetry": RateLimit(200, 400),
}


@dataclass(frozen=True)
class Function:
    """One individually deployed Cloud Run function (gen2)."""

    name: str
    trigger: Trigger
    entry_point: str
    description: str = ""
    env: dict[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()  # Secret Manager secret names, exposed as env vars
    memory_mb: int = 256
    timeout_s: int = 60
    concurrency: int = 80
    min_instances: int = 0
    max_instances: int = 10
    public: bool = False  # allUsers invoker; only client-facing HTTP functions
    roles: tuple[str, ...] = ()  # project roles for the function's own service account
    publishes: tuple[str, ...] = ()  # topics this function produces to
    needs_database: bool = False
    rate_limit: str | None = None  # a key of RATE_LIMITS, for client-facing HTTP functions
    # Manifest buckets whose objects this function reads, writes and deletes (object admin on
    # each bucket only, never project-wide storage roles).
    buckets: tuple[str, ...] = ()
    # Signs Cloud Storage URLs without a key file: IAM signBlob as its own service account
    # (roles/iam.serviceAccountTokenCreator granted on that account only).
    signs_urls: bool = False
    # Sends its own spans to span_ingest (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT). Off for the
    # telemetry pipeline itself, whose spans would feed back into it.
    exports_spans: bool = True

    @property
    def source(self) -> str:
        """Source folder, relative to the repo root."""
        return f"functions/{self.name}"

    def runtime_env(self) -> dict[str, str]:
        """The plain (non-secret) environment this function is deployed with; both the local
        cloud and Pulumi use this, so they cannot drift."""
        # functions-framework's gunicorn serves with THREADS threads (default: 4 per CPU): one
        # per concurrent request Cloud Run may send, or requests would queue inside the instance.
        env = dict(self.env) | {"THREADS": str(self.concurrency)}
        if self.rate_limit is not None:
            limit = RATE_LIMITS[self.rate_limit]
            env |= {"RATE_LIMIT_CLASS": self.rate_limit,
                    "RATE_LIMIT_RATE": f"{limit.rate_per_s:g}",
                    "RATE_LIMIT_BURST": str(limit.burst)}
        return env


@dataclass(frozen=True)
class Topology:
    functions: tuple[Function, ...]
    topics: tuple[Topic, ...]
    subscriptions: tuple[Subscription, ...]
    schedules: tuple[Schedule, ...]
    buckets: tuple[Bucket, ...]

    def function(self, name: str) -> Function:
        return next(f for f in self.functions if f.name == name)

    def topic(self, name: str) -> Topic:
        return next(t for t in self.topics if t.name == name)

    def subscriptions_for(self, function: str) -> tuple[Subscription, ...]:
        return tuple(s for s in self.subscriptions if s.function == function)


# Roles shared by functions that touch the platform's stores.
_PUBLISHER = "roles/pubsub.publisher"
_SQL_CLIENT = "roles/cloudsql.client"
_SQL_USER = "roles/cloudsql.instanceUser"
_DB_ROLES = (_SQL_CLIENT, _SQL_USER)

DEAD_LETTER = "dead-letter"
USERS_TOPIC = "users.events"  # user.status_changed, user.deleted
LOGIN_TOPIC = "auth.logins"  # user.logged_in (login-streak rewards)
SIGNUP_TOPIC = "auth.signups"  # user.signed_up (referral rewards)
CHARACTERS_TOPIC = "characters.events"  # character.created (reward progress)
CHAT_TOPIC = "chat.turns"  # chat.turn_completed (reward progress)
SPANS_TOPIC = "telemetry.spans"  # span batches: span_ingest or a Collector -> span_writer
LOGS_TOPIC = "telemetry.logs"  # log batches, likewise
ERRORS_TOPIC = "telemetry.errors"  # telemetry.error_batch: new error spans and logs
REWARDS_TOPIC = "rewards.granted"  # rewards.granted (user notifications)
ALERTS_TOPIC = "telemetry.alerts"  # alert.transition: alert rule state changes
WEBHOOKS_TOPIC = "webhooks.deliveries"  # webhook.delivery: one notification to one destination
# Identity settings shared by every function that verifies tokens.
_TOKENS = {"JWT_ISSUER": "https://auth.chat-rewards-apm", "JWT_AUDIENCE": "chat-rewards-apm"}

TOPOLOGY = Topology(
    functions=(
        Function(
            name="auth",
            trigger=Trigger.HTTP,
            entry_point="auth",
            description="Sign-up, login, token refresh, logout, JWKS.",
            env=_TOKENS,
            secrets=("JWT_SIGNING_KEYS",),
            memory_mb=512,  # argon2id at 19 MiB per concurrent hash
            concurrency=20,
            max_instances=20,
            public=True,
            roles=(*_DB_ROLES, _PUBLISHER),
            publishes=(LOGIN_TOPIC, SIGNUP_TOPIC),
            needs_database=True,
            rate_limit="auth",
        ),
        Function(
            name="users",
            trigger=Trigger.HTTP,
            entry_point="users",
            description="Profiles (me) and user administration.",
            env=_TOKENS,
            secrets=("CURSOR_SECRET",),
            public=True,
            roles=(*_DB_ROLES, _PUBLISHER),
            publishes=(USERS_TOPIC,),
            needs_database=True,
            rate_limit="users",
        ),
        Function(
            name="characters",
            trigger=Trigger.HTTP,
            entry_point="characters",
            description="Characters: CRUD, search, Character Card V2 import and export.",
            env=_TOKENS,
            secrets=("CURSOR_SECRET",),
            public=True,
            roles=(*_DB_ROLES, _PUBLISHER),
            publishes=(CHARACTERS_TOPIC,),
            needs_database=True,
            rate_limit="users",
        ),
        Function(
            name="conversations",
            trigger=Trigger.HTTP,
            entry_point="conversations",
            description="Conversations with characters and their messages.",
            env=_TOKENS,
            secrets=("CURSOR_SECRET",),
            public=True,
            roles=_DB_ROLES,
            needs_database=True,
            rate_limit="chat",
        ),
        Function(
            name="chat_turn",
            trigger=Trigger.HTTP,
            entry_point="chat_turn",
            description="A chat turn with Gemini (JSON or SSE), and the daily token quota.",
            env=_TOKENS,
            memory_mb=512,
            timeout_s=300,  # streamed replies; model calls retry within this
            # A turn costs ~8-10 ms of CPU (bench.chat_turn), mostly google-genai building the
            # request and pg8000: 10 turns in flight on a 200 ms model keep an instance ~40%
            # busy, so turns do not queue for the interpreter; Cloud Run adds instances beyond.
            concurrency=10,
            public=True,
            roles=(*_DB_ROLES, _PUBLISHER, "roles/aiplatform.user"),
            publishes=(CHAT_TOPIC,),
            needs_database=True,
            rate_limit="chat",
        ),
        Function(
            name="events",
            trigger=Trigger.HTTP,
            entry_point="events",
            description="Reward events: operators define them; users read progress.",
            env=_TOKENS,
            secrets=("CURSOR_SECRET",),
            public=True,
            roles=_DB_ROLES,
            needs_database=True,
            rate_limit="users",
        ),
        Function(
            name="reward_claim",
            trigger=Trigger.HTTP,
            entry_point="reward_claim",
            description="Exactly-once reward claims, approvals, wallet and the claim audit.",
            env=_TOKENS,
            secrets=("CURSOR_SECRET",),
            public=True,
            roles=(*_DB_ROLES, _PUBLISHER),
            publishes=(REWARDS_TOPIC,),
            needs_database=True,
            rate_limit="users",
        ),
        Function(
            name="upload",
            trigger=Trigger.HTTP,
            entry_point="upload",
            description="Uploads: signed PUT URLs, direct small uploads, status and downloads.",
            env=_TOKENS,
            public=True,
            roles=_DB_ROLES,
            needs_database=True,
            rate_limit="users",
            buckets=("uploads",),
            signs_urls=True,
        ),
        Function(
            name="upload_finalize",
            trigger=Trigger.TOPIC,
            entry_point="upload_finalize",
            description="Checks finalized uploads by magic bytes and size; accepts or rejects.",
            concurrency=10,
            roles=_DB_ROLES,
            needs_database=True,
            buckets=("uploads",),
        ),
        Function(
            name="span_ingest",
            trigger=Trigger.HTTP,
            entry_point="span_ingest",
            description="OTLP/HTTP receiver: /v1/traces and /v1/logs, protobuf or JSON.",
            memory_mb=512,
            concurrency=40,
            max_instances=20,
            public=True,
            roles=(*_DB_ROLES, _PUBLISHER),
            publishes=(SPANS_TOPIC, LOGS_TOPIC),
            needs_database=True,  # ingest tokens, rate limits
            rate_limit="telemetry",
            exports_spans=False,  # its own spans would feed back into itself
        ),
        Function(
            name="span_writer",
            trigger=Trigger.TOPIC,
            entry_point="span_writer",
            description="COPYs span and log batches into PostgreSQL; announces new errors.",
            memory_mb=512,
            concurrency=4,  # each delivery is a large COPY; more instances, not more threads
            max_instances=10,
            roles=(*_DB_ROLES, _PUBLISHER),
            publishes=(ERRORS_TOPIC,),
            needs_database=True,
            exports_spans=False,
        ),
        Function(
            name="telemetry_query",
            trigger=Trigger.HTTP,
            entry_point="telemetry_query",
            description="Reads spans and logs: Jaeger query API and the native query API.",
            env=_TOKENS,
            secrets=("CURSOR_SECRET",),
            memory_mb=512,  # a Jaeger search returns up to 50,000 spans
            public=True,
            roles=_DB_ROLES,
            needs_database=True,
            rate_limit="users",
        ),
        Function(
            name="user_lifecycle",
            trigger=Trigger.TOPIC,
            entry_point="user_lifecycle",
            description="Applies status changes and deletions: restrictions, sessions, cleanup.",
            concurrency=10,
            roles=_DB_ROLES,
            needs_database=True,
        ),
        Function(
            name="activity",
            trigger=Trigger.TOPIC,
            entry_point="activity",
            description="Reward progress from activity events; reward notifications.",
            concurrency=20,
            roles=(*_DB_ROLES, "roles/datastore.user"),
            needs_database=True,
        ),
        Function(
            name="outbox_relay",
            trigger=Trigger.SCHEDULE,
            entry_point="outbox_relay",
            description="Publishes outbox rows whose publish after commit failed.",
            timeout_s=120,
            concurrency=1,
            max_instances=2,
            roles=(*_DB_ROLES, _PUBLISHER),
            publishes=(),  # publishes each row to the topic recorded in it
            needs_database=True,
        ),
        Function(
            name="maintenance",
            trigger=Trigger.SCHEDULE,
            entry_point="maintenance",
            description="Daily retention: prunes expired dedupe ids and idempotency records.",
            timeout_s=540,
            concurrency=1,
            max_instances=1,
            roles=_DB_ROLES,
            needs_database=True,
            buckets=("uploads",),  # stale pending uploads, deleted users' objects
        ),
        Function(
            name="rollup",
            trigger=Trigger.SCHEDULE,
            entry_point="rollup",
            description="Minute rollups of requests: counts, errors, latency sketches.",
            timeout_s=120,
            concurrency=1,
            max_instances=1,  # runs are serialized by an advisory lock anyway
            roles=(*_DB_ROLES, _PUBLISHER),
            publishes=(ALERTS_TOPIC,),  # alert rules are evaluated after each run
            needs_database=True,
            exports_spans=False,  # the telemetry pipeline does not trace itself
        ),
        Function(
            name="alerts",
            trigger=Trigger.HTTP,
            entry_point="alerts",
            description="Alert rules evaluated by rollup, and their current states (operators).",
            env=_TOKENS,
            public=True,
            roles=_DB_ROLES,
            needs_database=True,
            rate_limit="users",
        ),
        Function(
            name="error_fanout",
            trigger=Trigger.TOPIC,
            entry_point="error_fanout",
            description="Groups errors, keeps the Firestore error feed, notifies webhooks.",
            memory_mb=512,
            concurrency=8,
            roles=(*_DB_ROLES, _PUBLISHER, "roles/datastore.user"),
            publishes=(WEBHOOKS_TOPIC,),
            needs_database=True,
            exports_spans=False,  # its own errors would feed back into it
        ),
        Function(
            name="webhooks",
            trigger=Trigger.HTTP,
            entry_point="webhooks",
            description="Webhook destinations of error and alert notifications (operators).",
            env=_TOKENS,
            secrets=("WEBHOOK_SECRET_KEYS",),  # seals each destination's HMAC secret
            public=True,
            roles=_DB_ROLES,
            needs_database=True,
            rate_limit="users",
        ),
        Function(
            name="webhook_sender",
            trigger=Trigger.TOPIC,
            entry_point="webhook_sender",
            description="POSTs webhook deliveries (signed); retried with backoff, dead-lettered.",
            concurrency=20,
            secrets=("WEBHOOK_SECRET_KEYS",),  # opens the HMAC secret to sign with
            roles=_DB_ROLES,
            needs_database=True,
            exports_spans=False,  # a failing receiver must not feed errors back into the fan-out
        ),
    ),
    topics=(
        Topic("outbox.tick", description="Cloud Scheduler: outbox sweep"),
        Topic("maintenance.daily", description="Cloud Scheduler: daily retention"),
        Topic("rollup.tick", description="Cloud Scheduler: minute rollups"),
        Topic("uploads.finalized", description="Bucket notifications: objects finalized"),
        Topic(USERS_TOPIC, description="User status changes and deletions"),
        Topic(LOGIN_TOPIC, description="Successful logins"),
        Topic(SIGNUP_TOPIC, description="New accounts"),
        Topic(CHARACTERS_TOPIC, description="Characters created"),
        Topic(CHAT_TOPIC, description="Chat turns completed"),
        Topic(REWARDS_TOPIC, description="Reward claims granted"),
        Topic(SPANS_TOPIC, description="Span batches (span_ingest, or a Collector directly)"),
        Topic(LOGS_TOPIC, description="Log batches (span_ingest, or a Collector directly)"),
        Topic(ERRORS_TOPIC, description="New error spans and error logs"),
        Topic(ALERTS_TOPIC, description="Alert rule transitions"),
        Topic(WEBHOOKS_TOPIC, description="Webhook deliveries (error_fanout's outbox)"),
        Topic(DEAD_LETTER, external=True, description="Messages that exhausted delivery attempts"),
    ),
    subscriptions=(
        Subscription(
            name="span-writer.telemetry-spans",
            topic=SPANS_TOPIC,
            function="span_writer",
            ack_deadline_s=120,
            retry=RetryPolicy(5, 120),
            dead_letter_topic=DEAD_LETTER,
            max_delivery_attempts=10,
        ),
        Subscription(
            name="span-writer.telemetry-logs",
            topic=LOGS_TOPIC,
            function="span_writer",
            ack_deadline_s=120,
            retry=RetryPolicy(5, 120),
            dead_letter_topic=DEAD_LETTER,
            max_delivery_attempts=10,
        ),
        Subscription(
            name="activity.auth-logins",
            topic=LOGIN_TOPIC,
            function="activity",
            ack_deadline_s=60,
            retry=RetryPolicy(10, 600),
            dead_letter_topic=DEAD_LETTER,
            max_delivery_attempts=10,
        ),
        Subscription(
            name="activity.auth-signups",
            topic=SIGNUP_TOPIC,
            function="activity",
            ack_deadline_s=60,
            retry=RetryPolicy(10, 600),
            dead_letter_topic=DEAD_LETTER,
            max_delivery_attempts=10,
        ),
        Subscription(
            name="activity.characters-events",
            topic=CHARACTERS_TOPIC,
            function="activity",
            ack_deadline_s=60,
            retry=RetryPolicy(10, 600),
            dead_letter_topic=DEAD_LETTER,
            max_delivery_attempts=10,
        ),
        Subscription(
            name="activity.chat-turns",
            topic=CHAT_TOPIC,
            function="activity",
            ack_deadline_s=60,
            retry=RetryPolicy(10, 600),
            dead_letter_topic=DEAD_LETTER,
            max_delivery_attempts=10,
        ),
        Subscription(
            name="activity.rewards-granted",
            topic=REWARDS_TOPIC,
            function="activity",
            ack_deadline_s=60,
            retry=RetryPolicy(10, 600),
            dead_letter_topic=DEAD_LETTER,
            max_delivery_attempts=10,
        ),
        Subscription(
            name="user-lifecycle.users-events",
            topic=USERS_TOPIC,
            function="user_lifecycle",
            ack_deadline_s=60,
            retry=RetryPolicy(10, 600),
            dead_letter_topic=DEAD_LETTER,
            max_delivery_attempts=10,
        ),
        Subscription(
            name="upload-finalize.uploads-finalized",
            topic="uploads.finalized",
            function="upload_finalize",
            ack_deadline_s=120,
            retry=RetryPolicy(10, 600),
            dead_letter_topic=DEAD_LETTER,
            max_delivery_attempts=10,
        ),
        Subscription(
            name="outbox-relay.outbox-tick",
            topic="outbox.tick",
            function="outbox_relay",
            ack_deadline_s=120,
            retry=RetryPolicy(10, 60),
            dead_letter_topic=DEAD_LETTER,
            max_delivery_attempts=5,
        ),
        Subscription(
            name="maintenance.maintenance-daily",
            topic="maintenance.daily",
            function="maintenance",
            ack_deadline_s=600,
            retry=RetryPolicy(60, 600),
            dead_letter_topic=DEAD_LETTER,
            max_delivery_attempts=5,
        ),
        Subscription(
            name="rollup.rollup-tick",
            topic="rollup.tick",
            function="rollup",
            ack_deadline_s=120,
            retry=RetryPolicy(10, 60),  # the next tick catches up whatever a lost one missed
            dead_letter_topic=DEAD_LETTER,
            max_delivery_attempts=5,
        ),
        Subscription(
            name="error-fanout.telemetry-errors",
            topic=ERRORS_TOPIC,
            function="error_fanout",
            ack_deadline_s=120,
            retry=RetryPolicy(5, 120),
            dead_letter_topic=DEAD_LETTER,
            max_delivery_attempts=10,
        ),
        Subscription(
            name="error-fanout.telemetry-alerts",
            topic=ALERTS_TOPIC,
            function="error_fanout",
            ack_deadline_s=60,
            retry=RetryPolicy(5, 120),
            dead_letter_topic=DEAD_LETTER,
            max_delivery_attempts=10,
        ),
        Subscription(
            name="webhook-sender.webhooks-deliveries",
            topic=WEBHOOKS_TOPIC,
            function="webhook_sender",
            ack_deadline_s=60,  # the POST times out after 10 s
            retry=RetryPolicy(10, 600),
            dead_letter_topic=DEAD_LETTER,
            max_delivery_attempts=10,
        ),
    ),
    schedules=(
        Schedule("outbox-sweep", cron="* * * * *", topic="outbox.tick"),
        Schedule("maintenance-daily", cron="17 3 * * *", topic="maintenance.daily"),
        Schedule("rollup-every-minute", cron="* * * * *", topic="rollup.tick"),
    ),
    buckets=(
        Bucket("uploads", notification_topic="uploads.finalized"),
    ),
)
