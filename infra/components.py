"""One Pulumi component per kind of thing in the manifest. `infra/program.py` loops over
`infra/topology.py` and instantiates these; nothing here names a particular function."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pulumi
import pulumi_gcp as gcp

from infra.archive import SourceArchive
from infra.settings import StackSettings, deployed_name, secret_id
from infra.topology import Bucket, Function, Schedule, Subscription, Trigger

PYTHON_RUNTIME = "python311"


def _opts(parent: pulumi.Resource, depends_on: Sequence[pulumi.Resource] = ()
          ) -> pulumi.ResourceOptions:
    return pulumi.ResourceOptions(parent=parent, depends_on=list(depends_on))


def account_id(name: str, suffix: str = "fn") -> str:
    """A service account id (6-30 chars, lowercase, digits, dashes) for a function."""
    base = f"{name.replace('_', '-')}-{suffix}"
    return base[:30].rstrip("-")


def bucket_name(settings: StackSettings, bucket: str) -> str:
    """The deployed name of a manifest bucket (bucket names are global: prefixed by project)."""
    return f"{settings.project}-{bucket}"


def bucket_env(bucket: str) -> str:
    """The variable that tells a function a bucket's deployed name: uploads -> UPLOADS_BUCKET."""
    return f"{bucket.upper().replace('-', '_')}_BUCKET"


def iam_db_user(email: pulumi.Output[str]) -> pulumi.Output[str]:
    """Cloud SQL IAM user name of a service account: its email without `.gserviceaccount.com`."""
    return email.apply(lambda e: e.removesuffix(".gserviceaccount.com"))


class FunctionIdentity(pulumi.ComponentResource):
    """A function's own service account and, when it uses the database, its Cloud SQL IAM
    user. Created before the migration job, which grants that user its table privileges."""

    def __init__(self, function: Function, sql_instance: gcp.sql.DatabaseInstance | None
                 ) -> None:
        super().__init__("app:function-identity", function.name)
        self.account = gcp.serviceaccount.Account(
            f"{function.name}-sa", account_id=account_id(function.name),
            display_name=f"{function.name} function", opts=_opts(self))
        self.db_user: gcp.sql.User | None = None
        if function.needs_database and sql_instance is not None:
            self.db_user = gcp.sql.User(
                f"{function.name}-db-user", instance=sql_instance.name,
                name=iam_db_user(self.account.email), type="CLOUD_IAM_SERVICE_ACCOUNT",
                opts=_opts(self))
        self.register_outputs({"email": self.account.email})


class FunctionService(pulumi.ComponentResource):
    """A Cloud Run function (gen2) running as its own service account with only the manifest's
    roles, from its content-addressed source archive, with env, secrets, sizing and invoker."""

    def __init__(self, function: Function, settings: StackSettings, *,
                 identity: FunctionIdentity,
                 sources_bucket: gcp.storage.Bucket, archive: SourceArchive,
                 env: Mapping[str, pulumi.Input[str]],
                 secrets: Mapping[str, gcp.secretmanager.Secret],
                 sql_instance: gcp.sql.DatabaseInstance | None,
                 invoker_email: pulumi.Input[str] | None,
                 depends_on: Sequence[pulumi.Resource] = ()) -> None:
        super().__init__("app:function", function.name)
        self.account = identity.account
        member = pulumi.Output.concat("serviceAccount:", self.account.email)
        grants: list[pulumi.Resource] = [
            gcp.projects.IAMMember(f"{function.name}-{role.split('/')[-1]}",
                                   project=settings.project, role=role, member=member,
                                   opts=_opts(self))
            for role in function.roles
        ]
        if function.signs_urls:
            # IAM signBlob as itself, for signed URLs without a key file; scoped to its own
            # account, so it cannot sign (or mint tokens) as any other.
            grants.append(gcp.serviceaccount.IAMMember(
                f"{function.name}-signs-as-itself", service_account_id=self.account.name,
                role="roles/iam.serviceAccountTokenCreator", member=member, opts=_opts(self)))
        for env_name, secret in secrets.items():
            grants.append(gcp.secretmanager.SecretIamMember(
                f"{function.name}-reads-{secret_id(env_name)}", secret_id=secret.secret_id,
                role="roles/secretmanager.secretAccessor", member=member, opts=_opts(self)))
        plain_env: dict[str, pulumi.Input[str]] = dict(env) | function.runtime_env()
        plain_env |= {bucket_env(b): bucket_name(settings, b) for b in function.buckets}
        if function.needs_database and sql_instance is not None:
            plain_env |= {"INSTANCE_CONNECTION_NAME": sql_instance.connection_name,
                          "DB_IAM_USER": iam_db_user(self.account.email)}
        if function.trigger is not Trigger.HTTP:
            plain_env |= {"PUSH_AUDIENCE": settings.function_url(function.name)}
            if invoker_email is not None:
                plain_env["PUSH_INVOKER_EMAIL"] = invoker_email
        self.source = gcp.storage.BucketObject(
            f"{function.name}-source", bucket=sources_bucket.name, name=archive.name,
            source=pulumi.FileAsset(str(archive.path)), opts=_opts(self))
        self.function = gcp.cloudfunctionsv2.Function(
            function.name, name=deployed_name(function.name), location=settings.region,
            description=function.description,
            build_config={
                "runtime": PYTHON_RUNTIME,
                "entry_point": function.entry_point,
                "source": {"storage_source": {"bucket": sources_bucket.name,
                                              "object": self.source.name}},
            },
            service_config={
                "available_memory": f"{function.memory_mb}M",
                "timeout_seconds": function.timeout_s,
                "max_instance_request_concurrency": function.concurrency,
                # Concurrency above 1 needs at least one vCPU.
                "available_cpu": "1" if function.concurrency > 1 else "0.583",
                "min_instance_count": function.min_instances,
                "max_instance_count": function.max_instances,
                "service_account_email": self.account.email,
                "ingress_settings": "ALLOW_ALL",
                "all_traffic_on_latest_revision": True,
                "environment_variables": plain_env,
                "secret_environment_variables": [
                    {"key": env_name, "project_id": settings.project,
                     "secret": secret.secret_id, "version": "latest"}
                    for env_name, secret in secrets.items()
                ],
            },
            opts=_opts(self, [*grants, *depends_on]))
        self.url = self.function.url
        # gen2 functions are Cloud Run services: run.invoker decides who may call them.
        invoker = "allUsers" if function.public else (
            pulumi.Output.concat("serviceAccount:", invoker_email) if invoker_email else None)
        if invoker is not None:
            gcp.cloudrunv2.ServiceIamMember(
                f"{function.name}-invoker", location=settings.region,
                name=self.function.name, role="roles/run.invoker", member=invoker,
                opts=_opts(self))
        self.register_outputs({"url": self.url, "service_account": self.account.email})


class PushSubscription(pulumi.ComponentResource):
    """An explicit push subscription to a function URL, authenticated with an OIDC token of the
    invoker account, with the manifest's ack deadline, retry policy and dead-lettering, and the
    IAM the Pub/Sub service agent needs to dead-letter."""

    def __init__(self, sub: Subscription, settings: StackSettings, *,
                 topics: Mapping[str, gcp.pubsub.Topic], invoker_email: pulumi.Input[str],
                 pubsub_agent: pulumi.Input[str],
                 depends_on: Sequence[pulumi.Resource] = ()) -> None:
        super().__init__("app:push-subscription", sub.name)
        if sub.dead_letter_topic is None:
            raise ValueError(f"subscription {sub.name} has no dead-letter topic")
        audience = settings.function_url(sub.function)
        self.subscription = gcp.pubsub.Subscription(
            sub.name, name=sub.name, topic=topics[sub.topic].id,
            ack_deadline_seconds=sub.ack_deadline_s,
            push_config={"push_endpoint": audience,
                         "oidc_token": {"service_account_email": invoker_email,
                                        "audience": audience}},
            retry_policy={"minimum_backoff": f"{sub.retry.minimum_backoff_s:g}s",
                          "maximum_backoff": f"{sub.retry.maximum_backoff_s:g}s"},
            dead_letter_policy={"dead_letter_topic": topics[sub.dead_letter_topic].id,
                                "max_delivery_attempts": sub.max_delivery_attempts},
            expiration_policy={"ttl": ""},  # never expire for inactivity
            opts=_opts(self, depends_on))
        agent = pulumi.Output.concat("serviceAccount:", pubsub_agent)
        gcp.pubsub.SubscriptionIAMMember(
            f"{sub.name}-agent-acks", subscription=self.subscription.name,
            role="roles/pubsub.subscriber", member=agent, opts=_opts(self))
        self.register_outputs({"name": self.subscription.name})


class SchedulerJob(pulumi.ComponentResource):
    """A Cloud Scheduler job publishing the manifest's payload to its topic."""

    def __init__(self, schedule: Schedule, settings: StackSettings, *,
                 topics: Mapping[str, gcp.pubsub.Topic],
                 depends_on: Sequence[pulumi.Resource] = ()) -> None:
        super().__init__("app:schedule", schedule.name)
        data = base64.b64encode(json.dumps(schedule.payload, separators=(",", ":")).encode())
        self.job = gcp.cloudscheduler.Job(
            schedule.name, name=schedule.name, region=settings.region, schedule=schedule.cron,
            time_zone=schedule.time_zone,
            pubsub_target={"topic_name": topics[schedule.topic].id, "data": data.decode(),
                           "attributes": {"schedule": schedule.name}},
            retry_config={"retry_count": 3},
            opts=_opts(self, depends_on))
        self.register_outputs({})


class UploadsBucket(pulumi.ComponentResource):
    """A bucket with uniform access, CORS for browser uploads, quarantine lifecycle and its
    notification to Pub/Sub (the storage service agent may publish to that topic)."""

    def __init__(self, bucket: Bucket, settings: StackSettings, *,
                 topics: Mapping[str, gcp.pubsub.Topic], storage_agent: pulumi.Input[str],
                 depends_on: Sequence[pulumi.Resource] = ()) -> None:
        super().__init__("app:bucket", bucket.name)
        cors: list[Any] = []
        if bucket.browser_uploads and settings.allowed_origins:
            cors.append({"origins": list(settings.allowed_origins),
                         "methods": ["PUT", "GET", "HEAD"],
                         "response_headers": ["Content-Type", "x-goog-content-length-range",
                                              "x-goog-if-generation-match"],
                         "max_age_seconds": 3600})
        self.bucket = gcp.storage.Bucket(
            bucket.name, name=bucket_name(settings, bucket.name), location=settings.region,
            uniform_bucket_level_access=True, public_access_prevention="enforced",
            cors=cors,
            lifecycle_rules=[{"action": {"type": "Delete"},
                              "condition": {"age": bucket.quarantine_days,
                                            "matches_prefixes": [bucket.quarantine_prefix]}}],
            force_destroy=not settings.deletion_protection,
            opts=_opts(self, depends_on))
        if bucket.notification_topic is not None:
            topic = topics[bucket.notification_topic]
            may_publish = gcp.pubsub.TopicIAMMember(
                f"{bucket.name}-notifies", topic=topic.name, role="roles/pubsub.publisher",
                member=pulumi.Output.concat("serviceAccount:", storage_agent), opts=_opts(self))
            gcp.storage.Notification(
                f"{bucket.name}-notification", bucket=self.bucket.name, topic=topic.id,
                payload_format="JSON_API_V1", event_types=list(bucket.notification_events),
                opts=_opts(self, [may_publish]))
        self.register_outputs({"name": self.bucket.name})
