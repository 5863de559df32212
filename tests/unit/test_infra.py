"""The Pulumi program under Pulumi's mocks (no cloud, no CLI): everything in the manifest is
declared, with the access rules the design requires."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pulumi
import pytest

from infra import archive
from infra.settings import deployed_name, secret_config_key
from infra.topology import TOPOLOGY, Trigger

PROJECT = "unit-project"
SECRET_VALUES = {"JWT_SIGNING_KEYS": '[{"kid":"k","private_key_pem":"PEM-SENTINEL"}]',
                 "CURSOR_SECRET": "cursor-secret-sentinel-0123456789",
                 "DB_PASSWORD": "db-password-sentinel",
                 "WEBHOOK_SECRET_KEYS": '["webhook-key-sentinel"]'}
FUNCTION = "gcp:cloudfunctionsv2/function:Function"
SUBSCRIPTION = "gcp:pubsub/subscription:Subscription"


class Mocks(pulumi.runtime.Mocks):
    """Records every resource; fills in the outputs the program reads."""

    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(args)
        outputs = dict(args.inputs)
        if args.typ == "gcp:serviceaccount/account:Account":
            email = f"{args.inputs['accountId']}@{PROJECT}.iam.gserviceaccount.com"
            outputs |= {"email": email, "name": f"projects/{PROJECT}/serviceAccounts/{email}"}
        elif args.typ == FUNCTION:
            outputs["url"] = f"https://us-central1-{PROJECT}.cloudfunctions.net/{args.inputs['name']}"
        elif args.typ == "gcp:sql/databaseInstance:DatabaseInstance":
            outputs |= {"name": "postgres-1", "connectionName": f"{PROJECT}:us-central1:pg"}
        outputs.setdefault("name", args.name)
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        if args.token == "gcp:organizations/getProject:getProject":
            return {"number": "123456789"}
        if args.token == "gcp:storage/getProjectServiceAccount:getProjectServiceAccount":
            return {"emailAddress": "service-123456789@gs-project-accounts.iam.gserviceaccount.com"}
        return {}

    def of(self, typ: str) -> list[pulumi.runtime.MockResourceArgs]:
        return [r for r in self.resources if r.typ == typ]


SELF_INGEST_TOKEN = "tt_self-ingest-sentinel_0123456789abcdef"
OTLP_HEADERS = "OTEL_EXPORTER_OTLP_TRACES_HEADERS"


def _run_program(build_dir: Path, extra_secrets: dict[str, str]) -> Mocks:
    from infra import program

    recorder = Mocks()
    pulumi.runtime.set_mocks(recorder, project="chat-rewards-apm", stack="unit", preview=False)
    config = {"gcp:project": PROJECT, "gcp:region": "us-central1",
              "chat-rewards-apm:allowedOrigins": json.dumps(["https://app.example.com"])}
    secrets = {f"chat-rewards-apm:{secret_config_key(k)}": v for k, v in SECRET_VALUES.items()}
    secrets |= {f"chat-rewards-apm:{k}": v for k, v in extra_secrets.items()}
    pulumi.runtime.set_all_config(config | secrets, secret_keys=list(secrets))
    program.BUILD_DIR = build_dir

    @pulumi.runtime.test
    def run() -> None:
        program.build()

    run()
    return recorder


@pytest.fixture(scope="module")
def mocks(tmp_path_factory: pytest.TempPathFactory) -> Mocks:
    """The stack as configured in production: every secret, the self-ingest token included."""
    return _run_program(tmp_path_factory.mktemp("build"),
                        {"telemetrySelfIngestToken": SELF_INGEST_TOKEN})


@pytest.fixture(scope="module")
def first_deploy(tmp_path_factory: pytest.TempPathFactory) -> Mocks:
    """The first `pulumi up`: no self-ingest token yet (it needs the database)."""
    return _run_program(tmp_path_factory.mktemp("build"), {})


def _functions(mocks: Mocks) -> dict[str, dict[str, Any]]:
    return {r.inputs["name"].replace("-", "_"): r.inputs for r in mocks.of(FUNCTION)}


def test_every_manifest_function_is_deployed_with_its_entry_point(mocks: Mocks) -> None:
    deployed = _functions(mocks)
    assert set(deployed) == {f.name for f in TOPOLOGY.functions}
    for function in TOPOLOGY.functions:
        inputs = deployed[function.name]
        assert inputs["buildConfig"]["entryPoint"] == function.entry_point
        assert inputs["buildConfig"]["runtime"] == "python311"
        service = inputs["serviceConfig"]
        assert service["availableMemory"] == f"{function.memory_mb}M"
        assert service["timeoutSeconds"] == function.timeout_s
        assert service["maxInstanceRequestConcurrency"] == function.concurrency
        # gunicorn serves as many requests at once as Cloud Run may send to the instance
        assert service["environmentVariables"]["THREADS"] == str(function.concurrency)
        assert service["maxInstanceCount"] == function.max_instances
        assert service["serviceAccountEmail"].startswith(function.name.replace("_", "-"))


def test_event_functions_get_push_subscriptions_with_oidc_and_dead_letters(mocks: Mocks) -> None:
    subs = {r.inputs["name"]: r.inputs for r in mocks.of(SUBSCRIPTION) if "pushConfig" in r.inputs}
    assert set(subs) == {s.name for s in TOPOLOGY.subscriptions}
    for sub in TOPOLOGY.subscriptions:
        inputs = subs[sub.name]
        url = f"https://us-central1-{PROJECT}.cloudfunctions.net/{deployed_name(sub.function)}"
        assert inputs["pushConfig"]["pushEndpoint"] == url
        assert inputs["pushConfig"]["oidcToken"]["serviceAccountEmail"].startswith("push-invoker@")
        assert inputs["pushConfig"]["oidcToken"]["audience"] == url
        assert inputs["deadLetterPolicy"]["deadLetterTopic"] == f"{sub.dead_letter_topic}-id"
        assert inputs["deadLetterPolicy"]["maxDeliveryAttempts"] == sub.max_delivery_attempts
        assert inputs["ackDeadlineSeconds"] == sub.ack_deadline_s
    non_http = [f for f in TOPOLOGY.functions if f.trigger is not Trigger.HTTP]
    assert {s.function for s in TOPOLOGY.subscriptions} == {f.name for f in non_http}


def test_dead_lettering_has_the_iam_it_needs(mocks: Mocks) -> None:
    agent = "serviceAccount:service-123456789@gcp-sa-pubsub.iam.gserviceaccount.com"
    publishers = {r.inputs["topic"] for r in mocks.of("gcp:pubsub/topicIAMMember:TopicIAMMember")
                  if r.inputs["member"] == agent and r.inputs["role"] == "roles/pubsub.publisher"}
    assert {s.dead_letter_topic for s in TOPOLOGY.subscriptions} <= publishers
    subscribers = [r for r in mocks.of("gcp:pubsub/subscriptionIAMMember:SubscriptionIAMMember")
                   if r.inputs["member"] == agent]
    assert len(subscribers) == len(TOPOLOGY.subscriptions)


def test_only_functions_marked_public_are_public(mocks: Mocks) -> None:
    invokers = {r.inputs["name"].replace("-", "_"): r.inputs["member"]
                for r in mocks.of("gcp:cloudrunv2/serviceIamMember:ServiceIamMember")}
    for function in TOPOLOGY.functions:
        if function.public:
            assert invokers[function.name] == "allUsers"
        else:
            assert invokers.get(function.name, "").startswith("serviceAccount:push-invoker@") \
                or (function.trigger is Trigger.HTTP and function.name not in invokers)
    assert list(invokers.values()).count("allUsers") == sum(f.public for f in TOPOLOGY.functions)


def test_no_service_account_holds_a_primitive_role(mocks: Mocks) -> None:
    roles = [r.inputs["role"] for r in mocks.resources if "role" in r.inputs]
    assert roles and not {"roles/owner", "roles/editor", "roles/viewer"} & set(roles)
    for function in TOPOLOGY.functions:
        member_roles = {r.inputs["role"] for r in mocks.of("gcp:projects/iAMMember:IAMMember")
                        if r.name.startswith(f"{function.name}-")}
        assert member_roles == set(function.roles)


def test_secrets_are_references_never_plain_values(mocks: Mocks) -> None:
    deployed = _functions(mocks)
    for function in TOPOLOGY.functions:
        service = deployed[function.name]["serviceConfig"]
        refs = {s["key"]: s for s in service.get("secretEnvironmentVariables", [])}
        assert set(refs) == set(function.secrets) | (
            {OTLP_HEADERS} if function.exports_spans else set())
        assert all(ref["version"] == "latest" for ref in refs.values())
    # The only places a secret value may go: its Secret Manager version, and the database
    # password of the migration user (set once on the Cloud SQL user, from the same secret).
    sinks = {"gcp:secretmanager/secretVersion:SecretVersion", "gcp:sql/user:User"}
    plain = json.dumps([r.inputs for r in mocks.resources if r.typ not in sinks], default=str)
    for value in [*SECRET_VALUES.values(), SELF_INGEST_TOKEN]:
        assert value not in plain, "a secret value appears outside Secret Manager"
    versions = {r.name for r in mocks.of("gcp:secretmanager/secretVersion:SecretVersion")}
    assert versions == {f"{k.lower().replace('_', '-')}-value"
                        for k in [*SECRET_VALUES, OTLP_HEADERS]}


def test_functions_send_their_own_spans_to_span_ingest_with_the_ingest_token(
        mocks: Mocks, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared import tracing

    deployed = _functions(mocks)
    endpoint = f"https://us-central1-{PROJECT}.cloudfunctions.net/span-ingest/v1/traces"
    exporting = {f.name for f in TOPOLOGY.functions if f.exports_spans}
    assert exporting and "span_ingest" not in exporting  # the pipeline does not trace itself
    for function in TOPOLOGY.functions:
        service = deployed[function.name]["serviceConfig"]
        env = service["environmentVariables"]
        refs = {s["key"]: s["secret"] for s in service.get("secretEnvironmentVariables", [])}
        if function.name in exporting:
            assert env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] == endpoint
            assert refs[OTLP_HEADERS] == "otel-exporter-otlp-traces-headers"
        else:
            assert "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" not in env and OTLP_HEADERS not in refs
    (version,) = [r for r in mocks.of("gcp:secretmanager/secretVersion:SecretVersion")
                  if r.name == "otel-exporter-otlp-traces-headers-value"]
    # OTLP's header syntax, which shared.tracing.export_headers reads back; kept secret (the
    # mocks show a secret input as Pulumi's secret wrapper around the value).
    data = version.inputs["secretData"]
    assert isinstance(data, dict) and data["value"] == f"authorization=Bearer%20{SELF_INGEST_TOKEN}"
    monkeypatch.setenv(OTLP_HEADERS, data["value"])
    assert tracing.export_headers() == {"authorization": f"Bearer {SELF_INGEST_TOKEN}"}
    readers = {r.name for r in mocks.of("gcp:secretmanager/secretIamMember:SecretIamMember")
               if r.name.endswith("-reads-otel-exporter-otlp-traces-headers")}
    assert readers == {f"{name}-reads-otel-exporter-otlp-traces-headers" for name in exporting}


def test_without_a_self_ingest_token_no_function_exports_spans(first_deploy: Mocks) -> None:
    for inputs in _functions(first_deploy).values():
        service = inputs["serviceConfig"]
        assert "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" not in service["environmentVariables"]
        assert OTLP_HEADERS not in {s["key"] for s in service.get("secretEnvironmentVariables", [])}
    assert not [r for r in first_deploy.of("gcp:secretmanager/secret:Secret")
                if r.name == "otel-exporter-otlp-traces-headers"]


@pytest.mark.parametrize("token", ["not-a-token", "tt_with space", "tt_a,b=c"])
def test_a_self_ingest_token_that_is_not_one_is_refused(token: str) -> None:
    from infra import program

    with pytest.raises(ValueError, match="telemetrySelfIngestToken"):
        program._bearer(token)


def test_the_token_prefix_is_the_one_ingest_tokens_have() -> None:
    from infra import program
    from shared import telemetry_tokens

    assert program.INGEST_TOKEN_PREFIX == telemetry_tokens.PREFIX


def test_schedules_bucket_sql_firestore_and_outputs(mocks: Mocks) -> None:
    jobs = {r.inputs["name"]: r.inputs for r in mocks.of("gcp:cloudscheduler/job:Job")}
    assert set(jobs) == {s.name for s in TOPOLOGY.schedules}
    for schedule in TOPOLOGY.schedules:
        assert jobs[schedule.name]["schedule"] == schedule.cron
        assert jobs[schedule.name]["timeZone"] == schedule.time_zone
        assert jobs[schedule.name]["pubsubTarget"]["topicName"] == f"{schedule.topic}-id"
    (bucket,) = [r.inputs for r in mocks.of("gcp:storage/bucket:Bucket")
                 if r.name == TOPOLOGY.buckets[0].name]
    assert bucket["uniformBucketLevelAccess"] is True
    assert bucket["cors"][0]["origins"] == ["https://app.example.com"]
    assert bucket["lifecycleRules"][0]["condition"]["matchesPrefixes"] == ["quarantine/"]
    (notification,) = mocks.of("gcp:storage/notification:Notification")
    assert notification.inputs["topic"] == f"{TOPOLOGY.buckets[0].notification_topic}-id"
    (sql,) = mocks.of("gcp:sql/databaseInstance:DatabaseInstance")
    assert sql.inputs["settings"]["backupConfiguration"]["enabled"] is True
    assert {"name": "cloudsql.iam_authentication", "value": "on"} in \
        sql.inputs["settings"]["databaseFlags"]
    iam_users = [r for r in mocks.of("gcp:sql/user:User")
                 if r.inputs.get("type") == "CLOUD_IAM_SERVICE_ACCOUNT"]
    assert len(iam_users) == sum(f.needs_database for f in TOPOLOGY.functions)
    assert mocks.of("gcp:firestore/database:Database")
    (job,) = mocks.of("gcp:cloudrunv2/job:Job")
    assert job.inputs["runExecutionToken"]  # runs on deploy, and the deploy waits for it
    enabled = {r.inputs["service"] for r in mocks.of("gcp:projects/service:Service")}
    assert {"cloudfunctions.googleapis.com", "run.googleapis.com", "pubsub.googleapis.com",
            "sqladmin.googleapis.com", "secretmanager.googleapis.com"} <= enabled


def test_source_archive_names_change_only_when_code_changes(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "functions/f").mkdir(parents=True)
    (root / "shared").mkdir()
    (root / "functions/f/main.py").write_text("x = 1\n")
    (root / "shared/lib.py").write_text("y = 1\n")
    (root / "requirements.txt").write_text("flask\n")
    first = archive.build("f", "functions/f", tmp_path / "a", root)
    again = archive.build("f", "functions/f", tmp_path / "b", root)
    assert first.name == again.name
    assert first.path.read_bytes() == again.path.read_bytes()  # reproducible
    (root / "functions/f/__pycache__").mkdir()
    (root / "functions/f/__pycache__/main.cpython-311.pyc").write_bytes(b"junk")
    assert archive.build("f", "functions/f", tmp_path / "c", root).name == first.name
    (root / "shared/lib.py").write_text("y = 2\n")
    assert archive.build("f", "functions/f", tmp_path / "d", root).name != first.name


def test_archive_holds_the_function_shared_and_requirements() -> None:
    names = [name for name, _ in archive.entries("functions/auth")]
    assert "main.py" in names and "requirements.txt" in names
    assert "shared/auth.py" in names and not any("__pycache__" in n for n in names)


def test_url_signers_may_sign_only_as_themselves_and_reach_only_their_buckets(
        mocks: Mocks) -> None:
    # Signed URLs without a key file: IAM signBlob as the function's own service account, so
    # it holds Token Creator on that account alone, never project-wide.
    grants = [r.inputs for r in mocks.of("gcp:serviceaccount/iAMMember:IAMMember")
              if r.inputs["role"] == "roles/iam.serviceAccountTokenCreator"
              and r.inputs["member"].startswith("serviceAccount:")
              and "push-invoker" not in r.inputs["serviceAccountId"]]
    signers = [f for f in TOPOLOGY.functions if f.signs_urls]
    assert signers and len(grants) == len(signers)
    for function, grant in zip(signers, grants, strict=True):
        account = f"{function.name.replace('_', '-')}-fn@{PROJECT}.iam.gserviceaccount.com"
        assert grant["member"] == f"serviceAccount:{account}"
        assert grant["serviceAccountId"] == f"projects/{PROJECT}/serviceAccounts/{account}"
    project_roles = {r.inputs["role"] for r in mocks.of("gcp:projects/iAMMember:IAMMember")}
    assert "roles/iam.serviceAccountTokenCreator" not in project_roles
    assert not {role for role in project_roles if role.startswith("roles/storage.")}

    bucket_grants = {r.name: r.inputs
                     for r in mocks.of("gcp:storage/bucketIAMMember:BucketIAMMember")
                     if r.name != "migrator-reads-sources"}
    expected = {f"{f.name}-{b}-objects" for f in TOPOLOGY.functions for b in f.buckets}
    assert set(bucket_grants) == expected and expected
    deployed = _functions(mocks)
    for function in TOPOLOGY.functions:
        env = deployed[function.name]["serviceConfig"]["environmentVariables"]
        for bucket in function.buckets:
            grant = bucket_grants[f"{function.name}-{bucket}-objects"]
            assert grant["role"] == "roles/storage.objectAdmin"
            assert grant["bucket"] == f"{PROJECT}-{bucket}"
            assert env[f"{bucket.upper()}_BUCKET"] == f"{PROJECT}-{bucket}"
        if not function.buckets:
            assert "UPLOADS_BUCKET" not in env
    enabled = {r.inputs["service"] for r in mocks.of("gcp:projects/service:Service")}
    assert "iamcredentials.googleapis.com" in enabled  # signBlob
    upload = TOPOLOGY.function("upload")
    assert upload.signs_urls and upload.buckets == ("uploads",) and upload.public
    assert not TOPOLOGY.function("upload_finalize").signs_urls
