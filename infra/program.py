"""The Pulumi program: everything the product needs on Google Cloud, derived from the manifest.

Order of concerns: APIs, identities and secrets, data stores, the migration job (which runs on
every deploy that changes the schema, before functions roll out), functions, then the wiring
(topics, push subscriptions, schedules, bucket notifications).
"""

from __future__ import annotations

from pathlib import Path

import pulumi
import pulumi_gcp as gcp

from infra import archive
from infra.components import (
    FunctionIdentity,
    FunctionService,
    PushSubscription,
    SchedulerJob,
    UploadsBucket,
    iam_db_user,
)
from infra.settings import StackSettings, secret_id
from infra.topology import TOPOLOGY, Topology, Trigger

APIS = (
    "artifactregistry.googleapis.com", "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com", "run.googleapis.com", "pubsub.googleapis.com",
    "cloudscheduler.googleapis.com", "sqladmin.googleapis.com", "firestore.googleapis.com",
    "secretmanager.googleapis.com", "storage.googleapis.com", "iam.googleapis.com",
    "iamcredentials.googleapis.com",  # signBlob: signed upload URLs without key files
    "aiplatform.googleapis.com", "logging.googleapis.com", "eventarc.googleapis.com",
)
BUILD_DIR = Path(__file__).resolve().parent.parent / ".local" / "build"
DB_NAME = "app"
MIGRATOR_USER = "migrator"
MIGRATION_IMAGE = "python:3.11-slim"


def build(topology: Topology = TOPOLOGY, settings: StackSettings | None = None) -> None:
    settings = settings or StackSettings.load()
    apis = [gcp.projects.Service(f"api-{api.split('.')[0]}", service=api,
                                 disable_on_destroy=False) for api in APIS]
    after_apis = pulumi.ResourceOptions(depends_on=apis)
    number = gcp.organizations.get_project(project_id=settings.project).number
    pubsub_agent = f"service-{number}@gcp-sa-pubsub.iam.gserviceaccount.com"
    storage_agent = gcp.storage.get_project_service_account(
        project=settings.project).email_address

    # Who Pub/Sub pushes as: one account, allowed to invoke exactly the consumers.
    invoker = gcp.serviceaccount.Account("push-invoker", account_id="push-invoker",
                                         display_name="Pub/Sub push invoker", opts=after_apis)
    gcp.serviceaccount.IAMMember(
        "pubsub-agent-mints-invoker-tokens", service_account_id=invoker.name,
        role="roles/iam.serviceAccountTokenCreator", member=f"serviceAccount:{pubsub_agent}")

    secrets = {}
    for name in sorted({s for f in topology.functions for s in f.secrets} | {"DB_PASSWORD"}):
        secret = gcp.secretmanager.Secret(secret_id(name), secret_id=secret_id(name),
                                          replication={"auto": {}}, opts=after_apis)
        gcp.secretmanager.SecretVersion(f"{secret_id(name)}-value", secret=secret.id,
                                        secret_data=settings.secret(name))
        secrets[name] = secret

    sources = gcp.storage.Bucket(
        "function-sources", name=f"{settings.project}-function-sources",
        location=settings.region, uniform_bucket_level_access=True,
        public_access_prevention="enforced", force_destroy=True, opts=after_apis)

    sql = gcp.sql.DatabaseInstance(
        "postgres", database_version="POSTGRES_15", region=settings.region,
        deletion_protection=settings.deletion_protection,
        settings={
            "tier": settings.sql_tier,
            "availability_type": "REGIONAL" if settings.sql_high_availability else "ZONAL",
            "backup_configuration": {
                "enabled": True, "point_in_time_recovery_enabled": True,
                "backup_retention_settings": {
                    "retained_backups": settings.sql_backup_retention_days},
            },
            # Reached only through the Cloud SQL connector (IAM-authorized, TLS); no
            # authorized networks, so the public address accepts nothing else.
            "ip_configuration": {"ipv4_enabled": True, "ssl_mode": "ENCRYPTED_ONLY"},
            "database_flags": [{"name": "cloudsql.iam_authentication", "value": "on"}],
        },
        opts=after_apis)
    database = gcp.sql.Database("app-database", name=DB_NAME, instance=sql.name)
    migrator_user = gcp.sql.User("migrator-user", name=MIGRATOR_USER, instance=sql.name,
                                 password=settings.secret("DB_PASSWORD"))

    gcp.firestore.Database("firestore", name="(default)", location_id=settings.firestore_location,
                           type="FIRESTORE_NATIVE", opts=after_apis)

    topics = {t.name: gcp.pubsub.Topic(t.name, name=t.name, opts=after_apis)
              for t in topology.topics}
    for dead in sorted({s.dead_letter_topic for s in topology.subscriptions
                        if s.dead_letter_topic}):
        gcp.pubsub.TopicIAMMember(f"{dead}-agent-publishes", topic=topics[dead].name,
                                  role="roles/pubsub.publisher",
                                  member=f"serviceAccount:{pubsub_agent}")
        # A topic keeps nothing without a subscription: this one holds dead letters for
        # operators (pull, 7 days).
        gcp.pubsub.Subscription(f"{dead}-hold", name=f"{dead}.hold", topic=topics[dead].id,
                                message_retention_duration="604800s",
                                expiration_policy={"ttl": ""})

    base_env: dict[str, pulumi.Input[str]] = {
        "APP_ENV": settings.environment, "GOOGLE_CLOUD_PROJECT": settings.project,
        "FUNCTION_REGION": settings.region, "DB_NAME": DB_NAME,
        "GENAI_MODEL": settings.genai_model, "GENAI_LOCATION": settings.genai_location,
    }
    if any(f.name == "auth" for f in topology.functions):
        base_env["JWT_JWKS_URL"] = settings.function_url("auth") + "/.well-known/jwks.json"

    identities = {f.name: FunctionIdentity(f, sql if f.needs_database else None)
                  for f in topology.functions}
    migration = _migration_job(
        settings, sources, sql, secrets["DB_PASSWORD"],
        [iam_db_user(i.account.email) for i in identities.values() if i.db_user is not None],
        depends_on=[migrator_user, database, *apis,
                    *(i.db_user for i in identities.values() if i.db_user is not None)])
    archives = {f.name: archive.build(f.name, f.source, BUILD_DIR) for f in topology.functions}
    export = _span_self_export(settings, topology, after_apis)
    services: dict[str, FunctionService] = {}
    for function in topology.functions:
        env, function_secrets = base_env, {n: secrets[n] for n in function.secrets}
        if export is not None and function.exports_spans:
            env = base_env | {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": export[0]}
            function_secrets[OTLP_HEADERS] = export[1]
        services[function.name] = FunctionService(
            function, settings, identity=identities[function.name], sources_bucket=sources,
            archive=archives[function.name], env=env,
            secrets=function_secrets,
            sql_instance=sql if function.needs_database else None,
            invoker_email=None if function.trigger is Trigger.HTTP else invoker.email,
            # New code rolls out only after its schema is in place.
            depends_on=[migration])

    for sub in topology.subscriptions:
        PushSubscription(sub, settings, topics=topics, invoker_email=invoker.email,
                         pubsub_agent=pubsub_agent,
                         depends_on=[services[sub.function].function])
    for schedule in topology.schedules:
        SchedulerJob(schedule, settings, topics=topics, depends_on=apis)
    buckets = {bucket.name: UploadsBucket(bucket, settings, topics=topics,
                                          storage_agent=storage_agent, depends_on=apis)
               for bucket in topology.buckets}
    # Object access on exactly the buckets a function names, never project-wide.
    for function in topology.functions:
        for name in function.buckets:
            gcp.storage.BucketIAMMember(
                f"{function.name}-{name}-objects", bucket=buckets[name].bucket.name,
                role="roles/storage.objectAdmin",
                member=pulumi.Output.concat("serviceAccount:",
                                            identities[function.name].account.email))

    pulumi.export("function_urls", {name: service.url for name, service in services.items()
                                    if topology.function(name).trigger is Trigger.HTTP})
    pulumi.export("sql_connection_name", sql.connection_name)


OTLP_HEADERS = "OTEL_EXPORTER_OTLP_TRACES_HEADERS"
INGEST_TOKEN_PREFIX = "tt_"  # noqa: S105 - shared.telemetry_tokens.PREFIX; infra imports no app code


def _span_self_export(settings: StackSettings, topology: Topology, opts: pulumi.ResourceOptions
                      ) -> tuple[str, gcp.secretmanager.Secret] | None:
    """Where the functions send their own spans (their span_ingest) and the Secret Manager
    secret holding the OTLP authorization header, built from the `telemetrySelfIngestToken`
    config secret. None, with a warning, when that is not set: the first deploy has no
    database to make the token in (README, "Deploying")."""
    token = settings.self_ingest_token()
    if not any(f.name == "span_ingest" for f in topology.functions):
        return None
    if token is None:
        pulumi.log.warn("telemetrySelfIngestToken is not set: the functions send no spans of "
                        "their own to span_ingest")
        return None
    name = secret_id(OTLP_HEADERS)
    secret = gcp.secretmanager.Secret(name, secret_id=name, replication={"auto": {}}, opts=opts)
    gcp.secretmanager.SecretVersion(f"{name}-value", secret=secret.id,
                                    secret_data=token.apply(_bearer))  # still secret
    return settings.function_url("span_ingest") + "/v1/traces", secret


def _bearer(token: str) -> str:
    """OTLP's header syntax (values URL-encoded): `authorization=Bearer%20tt_...`."""
    if not token.startswith(INGEST_TOKEN_PREFIX) or any(c in token for c in " ,=%"):
        raise ValueError("telemetrySelfIngestToken must be an ingest token (tt_...): "
                         "python -m shared.telemetry_tokens create --tenant ... --scope ingest")
    return f"authorization=Bearer%20{token}"


def _migration_job(settings: StackSettings, sources: gcp.storage.Bucket,
                   sql: gcp.sql.DatabaseInstance, password: gcp.secretmanager.Secret,
                   app_users: list[pulumi.Output[str]],
                   depends_on: list[pulumi.Resource]) -> gcp.cloudrunv2.Job:
    """A Cloud Run job that applies migrations and grants the functions' users; it executes on
    every deploy whose migration archive changed (`run_execution_token`), and the deploy waits
    for it to succeed."""
    code = archive.build("migrate", None, BUILD_DIR)
    account = gcp.serviceaccount.Account("migrator-sa", account_id="migrator-job",
                                         display_name="schema migrations")
    member = pulumi.Output.concat("serviceAccount:", account.email)
    grants = [
        gcp.projects.IAMMember("migrator-sql-client", project=settings.project,
                               role="roles/cloudsql.client", member=member),
        gcp.storage.BucketIAMMember("migrator-reads-sources", bucket=sources.name,
                                    role="roles/storage.objectViewer", member=member),
        gcp.secretmanager.SecretIamMember("migrator-reads-db-password",
                                          secret_id=password.secret_id,
                                          role="roles/secretmanager.secretAccessor",
                                          member=member),
    ]
    uploaded = gcp.storage.BucketObject("migrate-source", bucket=sources.name, name=code.name,
                                        source=pulumi.FileAsset(str(code.path)))
    script = (f"set -e; python -c \"import zipfile; zipfile.ZipFile('/sources/{code.name}')"
              ".extractall('/app')\"; cd /app; "
              "pip install --no-cache-dir --quiet -r requirements.txt; "
              "python -m shared.migrate")
    return gcp.cloudrunv2.Job(
        "migrate", name="migrate", location=settings.region, deletion_protection=False,
        run_execution_token=code.sha256[:32],
        template={"template": {
            "service_account": account.email,
            "max_retries": 1,
            "timeout": "900s",
            "volumes": [{"name": "sources", "gcs": {"bucket": sources.name, "read_only": True}}],
            "containers": [{
                "image": MIGRATION_IMAGE,
                "commands": ["sh", "-c", script],
                "volume_mounts": [{"name": "sources", "mount_path": "/sources"}],
                "envs": [
                    {"name": "APP_ENV", "value": settings.environment},
                    {"name": "GOOGLE_CLOUD_PROJECT", "value": settings.project},
                    {"name": "INSTANCE_CONNECTION_NAME", "value": sql.connection_name},
                    {"name": "DB_NAME", "value": DB_NAME},
                    {"name": "DB_USER", "value": MIGRATOR_USER},
                    {"name": "DB_APP_USERS",
                     "value": pulumi.Output.all(*app_users).apply(",".join)},
                    {"name": "DB_PASSWORD", "value_source": {"secret_key_ref": {
                        "secret": password.secret_id, "version": "latest"}}},
                ],
            }],
        }},
        opts=pulumi.ResourceOptions(depends_on=[*depends_on, *grants, uploaded]))
