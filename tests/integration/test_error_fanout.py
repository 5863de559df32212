"""Error fan-out on a real database, the Pub/Sub emulator and the Firestore emulator: grouping,
notifications under storms, regressions and thresholds, the live feed seen by a real listener,
redelivery, webhook delivery with retries through the real bridge, signatures, Alertmanager's
shape, and the operators' API."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from emulators import services
from shared.events import Envelope
from tests.integration.conftest import PROJECT, deployed
from tests.integration.identity_fixtures import PASSWORD, REPO, Identity
from tests.integration.listeners import listen

WAIT_S = 60.0


@pytest.fixture(scope="module")
def firestore_host(run_dir: Path) -> Iterator[str]:
    handle = services.start_firestore_emulator(run_dir, PROJECT)
    try:
        yield handle.host
    finally:
        handle.stop()


@pytest.fixture
def env(platform_env: dict[str, str], firestore_host: str, monkeypatch: pytest.MonkeyPatch
        ) -> dict[str, str]:
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    from emulators.bridge import ensure_topics
    from infra.topology import TOPOLOGY
    from shared import clients

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_host)
    clients.reset()
    ensure_topics(TOPOLOGY, PROJECT, pubsub_v1.PublisherClient())
    return platform_env | {"FIRESTORE_EMULATOR_HOST": firestore_host}


def sql(env: dict[str, str], statement: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = sqlalchemy.create_engine(env["DATABASE_URL"])
    try:
        with engine.begin() as conn:
            result = conn.execute(sqlalchemy.text(statement), params)
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        engine.dispose()


def error(service: str, message: str, *, at: datetime, user: str | None = None,
          exception_type: str = "TimeoutError", stack: str | None = None) -> dict[str, Any]:
    return {"kind": "span", "trace_id": uuid.uuid4().hex, "span_id": uuid.uuid4().hex[:16],
            "tenant": "acme", "service": service, "environment": "prod", "name": "GET /orders",
            "time": at.isoformat(), "message": message, "user_id": user,
            "exception_type": exception_type, "exception_message": message,
            "stacktrace": stack or 'Traceback (most recent call last):\n'
                                   '  File "/app/orders.py", line 42, in handler\n'
                                   '    raise TimeoutError(...)'}


def batch(errors: list[dict[str, Any]]) -> Envelope:
    return Envelope("telemetry.error_batch", {"errors": errors})


def svc() -> str:
    return f"svc-{uuid.uuid4().hex[:8]}"


def kinds(outcomes: list[Any]) -> list[str]:
    return [n.kind for o in outcomes for n in o.notifications]


# --- grouping and notifications ---------------------------------------------------------------


def test_storm_of_one_fingerprint_produces_a_handful_of_notifications(env: dict[str, str]
                                                                      ) -> None:
    from shared import error_groups

    service, base = svc(), datetime.now(UTC) - timedelta(minutes=3)
    outcomes = []
    for part in range(5):  # 10,000 errors in 5 envelopes of 2,000
        errors = [error(service, f"timeout after {i} ms for order {part * 2000 + i}",
                        at=base + timedelta(milliseconds=i * 30), user=f"user-{i % 50}")
                  for i in range(2000)]
        outcomes.append(error_groups.handle_errors(batch(errors)))
    sent = kinds(outcomes)
    assert sorted(sent) == ["error.new", "error.threshold"]
    assert sum(o.errors for o in outcomes) == 10_000 and all(o.groups == 1 for o in outcomes)
    ((occurrences, users),) = sql(env, "SELECT occurrences, users FROM error_groups "
                                       "WHERE service = :s", s=service)
    assert (occurrences, users) == (10_000, 50)
    fp = outcomes[0].notifications[0].subject
    assert error_groups.group_count(fp) == 10_000  # the sum of the shards


def test_new_fingerprints_notify_once_each(env: dict[str, str]) -> None:
    from shared import error_groups

    service, at = svc(), datetime.now(UTC) - timedelta(minutes=1)
    first = error_groups.handle_errors(batch([
        error(service, "user 42 not found", at=at, exception_type="KeyError"),
        error(service, "user 7 not found", at=at, exception_type="KeyError"),
        error(service, "connection reset by 10.0.0.1", at=at, exception_type="OSError"),
    ]))
    assert sorted(kinds([first])) == ["error.new", "error.new"]
    again = error_groups.handle_errors(batch([
        error(service, "user 9 not found", at=at, exception_type="KeyError")]))
    assert kinds([again]) == []


def test_regression_after_resolve_and_after_silence_notifies(env: dict[str, str]) -> None:
    from shared import db, error_groups

    policy = error_groups.Policy(regression_silence=timedelta(hours=1))
    service, t0 = svc(), datetime.now(UTC) - timedelta(hours=5)
    new = error_groups.handle_errors(batch([error(service, "boom", at=t0)]), policy)
    fp = new.notifications[0].subject
    assert kinds([new]) == ["error.new"]
    # Marked resolved: the next error is a regression, the one after it is not.
    with db.transaction() as conn:
        assert error_groups.resolve(conn, fp)
    after_resolve = error_groups.handle_errors(
        batch([error(service, "boom", at=t0 + timedelta(minutes=1))]), policy)
    assert kinds([after_resolve]) == ["error.regression"]
    again = error_groups.handle_errors(
        batch([error(service, "boom", at=t0 + timedelta(minutes=2))]), policy)
    assert kinds([again]) == []
    # Silent for longer than the configured period: a regression again.
    silent = error_groups.handle_errors(
        batch([error(service, "boom", at=t0 + timedelta(hours=3))]), policy)
    assert kinds([silent]) == ["error.regression"]
    assert sql(env, "SELECT status FROM error_groups WHERE fingerprint = :f", f=fp) == [("open",)]


def test_threshold_notifies_once_per_dedupe_window(env: dict[str, str]) -> None:
    from shared import error_groups

    policy = error_groups.Policy(threshold_errors=20, threshold_users=3,
                                 threshold_window=timedelta(minutes=5),
                                 dedupe_window=timedelta(minutes=30))
    service, t0 = svc(), datetime.now(UTC) - timedelta(hours=2)

    def burst(at: datetime, n: int = 10, users: int = 3) -> list[str]:
        errors = [error(service, "db pool exhausted", at=at + timedelta(seconds=i),
                        user=f"u{i % users}") for i in range(n)]
        return kinds([error_groups.handle_errors(batch(errors), policy)])

    assert burst(t0) == ["error.new"]  # 10 errors: below the threshold
    assert burst(t0 + timedelta(minutes=1)) == ["error.threshold"]  # 20 errors, 3 users
    assert burst(t0 + timedelta(minutes=2)) == []  # still crossed: within the dedupe window
    assert burst(t0 + timedelta(minutes=3), users=1) == []
    # Errors from too few users do not cross it, however many.
    quiet = svc()
    few = [error(quiet, "db pool exhausted", at=t0 + timedelta(seconds=i), user="solo")
           for i in range(100)]
    assert kinds([error_groups.handle_errors(batch(few), policy)]) == ["error.new"]
    assert kinds([error_groups.handle_errors(batch(few[:50]), policy)]) == []
    # After the dedupe window, crossing again notifies again.
    assert burst(t0 + timedelta(minutes=40), n=25) == ["error.threshold"]


def test_redelivery_of_the_same_envelope_changes_nothing(env: dict[str, str]) -> None:
    from shared import clients, error_groups

    service, at = svc(), datetime.now(UTC) - timedelta(minutes=1)
    envelope = batch([error(service, f"bad input {i}", at=at + timedelta(seconds=i),
                            user=f"u{i}") for i in range(30)])
    first = error_groups.handle_errors(envelope)
    fp = first.notifications[0].subject

    def state() -> tuple[Any, ...]:
        rows = sql(env, "SELECT occurrences, users FROM error_groups WHERE fingerprint = :f",
                   f=fp)
        notes = sql(env, "SELECT count(*) FROM notifications WHERE subject = :f", f=fp)
        latest = list(clients.firestore_client().collection("services").document(service)
                      .collection("latest_errors").stream())
        return rows[0], notes[0], error_groups.group_count(fp), sorted(d.id for d in latest)

    before = state()
    assert before[0] == (30, 30) and before[2] == 30
    assert len(before[3]) == error_groups.LATEST_PER_SERVICE
    again = error_groups.handle_errors(envelope)
    assert again.duplicate and not again.notifications
    assert state() == before
    # A replay of the Firestore part alone (the database commit lost after it) is skipped too.
    _groups, valid = error_groups.aggregate(envelope.data["errors"], datetime.now(UTC))
    rows = {fp: {"fingerprint": fp, "tenant": "acme", "service": service,
                 "environment": "prod", "exception_type": "TimeoutError",
                 "sample_message": "x", "message": "x", "top_frame": "", "occurrences": 30,
                 "users": 30, "status": "open", "first_seen": at, "last_seen": at}}
    assert error_groups.write_feed(envelope.id, rows, valid) == 0
    assert error_groups.group_count(fp) == 30


def test_feed_is_readable_by_a_real_listener(env: dict[str, str]) -> None:
    from shared import clients, error_groups

    service, at = svc(), datetime.now(UTC) - timedelta(minutes=1)
    client = clients.firestore_client()
    latest: dict[str, dict[str, Any]] = {}
    seen = threading.Event()

    def on_snapshot(docs: list[Any], changes: Any, read_time: Any) -> None:
        for doc in docs:
            latest[doc.id] = doc.to_dict()
        if len(latest) >= 3:
            seen.set()

    watch = listen(client.collection("services").document(service).collection("latest_errors"),
                   on_snapshot)
    try:
        outcome = error_groups.handle_errors(batch([
            error(service, "boom", at=at + timedelta(seconds=i), user=f"u{i}")
            for i in range(3)]))
        assert seen.wait(timeout=WAIT_S), "the listener never saw the feed"
    finally:
        watch.unsubscribe()
    fp = outcome.notifications[0].subject
    assert {d["fingerprint"] for d in latest.values()} == {fp}
    assert {d["user_id"] for d in latest.values()} == {"u0", "u1", "u2"}
    group = client.collection("error_groups").document(fp).get().to_dict()
    assert group is not None
    assert (group["service"], group["occurrences"], group["users"]) == (service, 3, 3)
    assert error_groups.group_count(fp) == 3


# --- webhooks ---------------------------------------------------------------------------------


@dataclass
class Receiver:
    """A webhook receiver of our own: fails the first `failures` requests, then accepts."""

    failures: int = 0
    requests: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accepted(self) -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for status, h, b in self.requests if status == 200]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with state.lock:
                status = 500 if len(state.requests) < state.failures else 200
                state.requests.append((status, dict(self.headers.items()), body))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def create_webhook(fmt: str, url: str, kinds: list[str] | None = None) -> dict[str, Any]:
    from shared import db, webhooks

    body: dict[str, Any] = {"name": f"hook-{fmt}", "url": url, "format": fmt}
    if kinds is not None:
        body["kinds"] = kinds
    with db.transaction() as conn:
        return webhooks.create(conn, str(uuid.uuid4()), body)


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_receiver_failing_three_times_gets_exactly_one_delivery_per_notification(
    env: dict[str, str], receiver: Receiver, run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from shared import error_groups, webhooks

    receiver.failures = 3
    hook = create_webhook("generic", receiver.url)
    service, at = svc(), datetime.now(UTC) - timedelta(minutes=1)
    with deployed("webhook_sender", env, run_dir) as bridge:
        outcome = error_groups.handle_errors(batch([error(service, "boom", at=at)]))
        (notification,) = outcome.notifications
        wait_for(lambda: receiver.accepted(), "the delivery")
        wait_for(lambda: any(d.status == 204 for d in bridge.deliveries), "the ack")
        # A redelivery after success does not POST again.
        (delivery_id,) = sql(env, "SELECT id FROM webhook_deliveries WHERE notification_id = "
                                  ":n", n=notification.id)[0]
        assert webhooks.deliver(str(delivery_id)) == "already_delivered"
    assert [status for status, _, _ in receiver.requests] == [500, 500, 500, 200]
    assert not any(d.dead_lettered for d in bridge.deliveries)
    ((attempts, delivered),) = sql(env, "SELECT attempts, delivered_at IS NOT NULL FROM "
                                        "webhook_deliveries WHERE id = :d", d=delivery_id)
    assert (attempts, delivered) == (4, True)
    headers, body = receiver.accepted()[0]
    assert webhooks.verify(hook["secret"], headers[webhooks.SIGNATURE_HEADER], body)
    assert not webhooks.verify("whsec_wrong", headers[webhooks.SIGNATURE_HEADER], body)
    assert not webhooks.verify(hook["secret"], headers[webhooks.SIGNATURE_HEADER], body + b" ")
    payload = json.loads(body)
    assert payload["id"] == notification.id and payload["type"] == "error.new"
    assert payload["data"]["service"] == service
    assert hook["secret"] not in caplog.text


def test_repeated_pushes_post_once_after_success(env: dict[str, str], receiver: Receiver
                                                 ) -> None:
    """As Pub/Sub would: the same message pushed again and again (retries, duplicates)."""
    from shared import error_groups, webhooks

    receiver.failures = 3
    create_webhook("slack", receiver.url)
    create_webhook("generic", receiver.url, kinds=["alert.firing"])  # not for errors
    outcome = error_groups.handle_errors(batch([error(svc(), "boom",
                                                      at=datetime.now(UTC))]))
    ((delivery_id,),) = sql(env, "SELECT id FROM webhook_deliveries WHERE notification_id = :n",
                            n=outcome.notifications[0].id)
    results = []
    for _ in range(6):
        try:
            results.append(webhooks.deliver(str(delivery_id)))
        except webhooks.DeliveryFailed:
            results.append("failed")
    assert results == ["failed"] * 3 + ["delivered", "already_delivered", "already_delivered"]
    assert len(receiver.accepted()) == 1
    slack = json.loads(receiver.accepted()[0][1])
    assert slack["text"] and slack["blocks"][0]["type"] == "header"


def test_alert_transitions_in_alertmanager_shape(env: dict[str, str], receiver: Receiver
                                                 ) -> None:
    from shared import error_groups, webhooks

    create_webhook("alertmanager", receiver.url, kinds=["alert.firing", "alert.resolved"])
    rule = str(uuid.uuid4())

    def transition(before: str, to: str) -> Envelope:
        return Envelope("alert.transition", {
            "rule_id": rule, "rule_name": "error rate above 5%", "kind": "error_rate",
            "tenant": "acme", "service": "checkout", "from": before, "to": to,
            "minute": "2026-11-21T10:05:00+00:00", "value": 0.12, "threshold": 0.05,
            "started_at": "2026-11-21T10:03:00+00:00", "summary": "error rate 12% > 5%"})

    outcomes = [error_groups.handle_alert(transition(a, b)) for a, b in
                [("ok", "pending"), ("pending", "firing"), ("firing", "resolved")]]
    assert kinds(outcomes) == ["alert.firing", "alert.resolved"]
    duplicate = transition("pending", "firing")
    assert kinds([error_groups.handle_alert(duplicate)]) == ["alert.firing"]
    assert error_groups.handle_alert(duplicate).duplicate
    ids = [r[0] for r in sql(env, """
        SELECT d.id FROM webhook_deliveries d JOIN notifications n ON n.id = d.notification_id
        WHERE n.subject = :r ORDER BY n.created_at""", r=rule)]
    for delivery_id in ids[:2]:
        assert webhooks.deliver(str(delivery_id)) == "delivered"
    firing, resolved = (json.loads(b) for _, b in receiver.accepted())
    for body, status in ((firing, "firing"), (resolved, "resolved")):
        assert body["version"] == "4" and body["status"] == status
        assert body["receiver"] == "hook-alertmanager" and body["groupKey"]
        (alert,) = body["alerts"]
        assert set(alert) == {"status", "labels", "annotations", "startsAt", "endsAt",
                              "generatorURL", "fingerprint"}
        assert alert["labels"]["alertname"] == "error rate above 5%"
        assert alert["labels"]["service"] == "checkout"
        assert alert["startsAt"] == "2026-11-21T10:03:00+00:00"
    assert firing["alerts"][0]["endsAt"] == webhooks.ZERO_TIME
    assert resolved["alerts"][0]["endsAt"] != webhooks.ZERO_TIME


def test_deleted_webhook_is_not_sent(env: dict[str, str], receiver: Receiver) -> None:
    from shared import db, error_groups, webhooks

    hook = create_webhook("generic", receiver.url)
    outcome = error_groups.handle_errors(batch([error(svc(), "boom", at=datetime.now(UTC))]))
    ((delivery_id,),) = sql(env, "SELECT id FROM webhook_deliveries WHERE notification_id = :n",
                            n=outcome.notifications[0].id)
    with db.transaction() as conn:
        webhooks.delete(conn, hook["id"])
    assert webhooks.deliver(str(delivery_id)) == "gone"
    assert receiver.requests == []


# --- the operators' API -----------------------------------------------------------------------


@pytest.fixture
def api(identity: Identity, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    from functions_framework import create_app

    for name in ("RATE_LIMIT_CLASS", "RATE_LIMIT_RATE", "RATE_LIMIT_BURST"):
        monkeypatch.delenv(name, raising=False)
    return create_app("webhooks", str(REPO / "functions/webhooks/main.py")).test_client()


def bearer(identity: Identity, roles: list[str]) -> dict[str, str]:
    account = identity.signup()
    identity.sql("UPDATE users SET roles = :r WHERE id = :id", r=roles, id=account["user_id"])
    resp = identity.auth.post("/login", json={"email": account["email"], "password": PASSWORD})
    assert resp.status_code == 200, resp.json
    return identity.bearer(resp.json)


def test_operator_api_and_role_checks(identity: Identity, api: Any, receiver: Receiver,
                                      caplog: pytest.LogCaptureFixture) -> None:
    operator = bearer(identity, ["user", "operator"])
    user = bearer(identity, ["user"])
    assert api.get("/webhooks").status_code == 401
    assert api.get("/webhooks", headers=user).status_code == 403
    assert api.post("/webhooks", headers=user, json={"name": "x", "url": receiver.url}
                    ).status_code == 403
    created = api.post("/webhooks", headers=operator, json={
        "name": "ops", "url": receiver.url, "format": "alertmanager",
        "kinds": ["alert.firing", "alert.resolved"]})
    assert created.status_code == 201, created.json
    hook = created.json
    assert hook["secret"].startswith("whsec_") and hook["format"] == "alertmanager"
    ((stored,),) = identity.sql("SELECT secret FROM webhooks WHERE id = :id", id=hook["id"])
    assert stored.startswith("sealed.v1.") and hook["secret"] not in stored  # sealed at rest
    listed = api.get("/webhooks", headers=operator)
    assert listed.status_code == 200
    assert [h["id"] for h in listed.json["items"]] == [hook["id"]]
    assert all("secret" not in h for h in listed.json["items"])
    one = api.get(f"/webhooks/{hook['id']}", headers=operator)
    assert one.status_code == 200 and "secret" not in one.json
    assert api.get(f"/webhooks/{hook['id']}", headers=user).status_code == 403
    patched = api.patch(f"/webhooks/{hook['id']}", headers=operator,
                        json={"enabled": False, "format": "slack"})
    assert patched.status_code == 200
    assert (patched.json["enabled"], patched.json["format"]) == (False, "slack")
    assert "secret" not in patched.json
    kinds_only = api.patch(f"/webhooks/{hook['id']}", headers=operator,
                           json={"kinds": ["error.new", "error.new"]})
    assert kinds_only.status_code == 200 and kinds_only.json["kinds"] == ["error.new"]
    assert api.patch(f"/webhooks/{hook['id']}", headers=operator,
                     json={"url": "ftp://example.com/x"}).status_code == 422
    assert api.post("/webhooks", headers=operator, json={
        "name": "bad", "url": "http://x.example", "format": "xml"}).status_code == 422
    assert api.delete(f"/webhooks/{hook['id']}", headers=user).status_code == 403
    assert api.delete(f"/webhooks/{hook['id']}", headers=operator).status_code == 204
    assert api.get(f"/webhooks/{hook['id']}", headers=operator).status_code == 404
    assert api.get("/webhooks/not-a-uuid", headers=operator).status_code == 404
    assert hook["secret"] not in caplog.text
    assert base64.b64encode(hook["secret"].encode()).decode() not in caplog.text


def test_push_consumer_applies_batches_and_alerts_and_refuses_other_events(
        env: dict[str, str]) -> None:
    from functions_framework import create_app

    app = create_app("error_fanout", str(REPO / "functions/error_fanout/main.py")).test_client()

    def push(envelope: Envelope) -> Any:
        return app.post("/", json={"message": {
            "data": base64.b64encode(envelope.to_json()).decode(),
            "messageId": uuid.uuid4().hex, "attributes": {}},
            "subscription": "projects/p/subscriptions/error-fanout.telemetry-errors"})

    service = svc()
    envelope = batch([error(service, "boom", at=datetime.now(UTC))])
    assert push(envelope).status_code == 204
    assert push(envelope).status_code == 204  # a redelivery: acknowledged, no effect
    assert sql(env, "SELECT occurrences FROM error_groups WHERE service = :s",
               s=service) == [(1,)]
    assert push(Envelope("alert.transition", {"rule_id": "r", "from": "ok", "to": "pending"})
                ).status_code == 204
    refused = push(Envelope("user.deleted", {"user_id": "u"}))
    assert refused.status_code == 422 and refused.json["code"] == "unexpected_event"


def test_operators_list_error_groups_and_resolve_them(identity: Identity, env: dict[str, str]
                                                      ) -> None:
    """Resolving through the API makes the next error of the group a regression."""
    from functions_framework import create_app

    from shared import error_groups

    alerts_api = create_app("alerts", str(REPO / "functions/alerts/main.py")).test_client()
    operator = bearer(identity, ["user", "operator"])
    user = bearer(identity, ["user"])
    service, t0 = svc(), datetime.now(UTC) - timedelta(minutes=10)
    new = error_groups.handle_errors(batch([error(service, "order 17 failed", at=t0)]))
    fp = new.notifications[0].subject
    listed = alerts_api.get("/error-groups", headers=operator, query_string={"service": service})
    assert listed.status_code == 200, listed.json
    (group,) = listed.json["items"]
    assert (group["fingerprint"], group["status"], group["occurrences"]) == (fp, "open", 1)
    assert alerts_api.get("/error-groups", headers=user).status_code == 403
    assert alerts_api.get("/error-groups", headers=operator,
                          query_string={"status": "closed"}).status_code == 400
    resolved = alerts_api.post(f"/error-groups/{fp}/resolve", headers=operator)
    assert resolved.status_code == 200 and resolved.json["status"] == "resolved"
    assert alerts_api.post("/error-groups/nope/resolve", headers=operator).status_code == 404
    assert alerts_api.post(f"/error-groups/{fp}/resolve", headers=user).status_code == 403
    again = error_groups.handle_errors(
        batch([error(service, "order 18 failed", at=t0 + timedelta(minutes=1))]))
    assert kinds([again]) == ["error.regression"]


def test_reseal_moves_every_secret_to_the_newest_key(
        identity: Identity, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared import db, sealed, webhooks

    old_keys = sealed.new_key_list()
    monkeypatch.setenv(sealed.KEYS_ENV, old_keys)
    hook = create_webhook("generic", "https://receiver.example/hook")
    identity.sql("INSERT INTO webhooks (id, name, url, format, kinds, enabled, secret, "
                 "created_by) SELECT gen_random_uuid(), 'legacy', url, format, kinds, enabled, "
                 "'whsec_from_before', created_by FROM webhooks WHERE id = :id", id=hook["id"])
    monkeypatch.setenv(sealed.KEYS_ENV, sealed.new_key_list(old_keys))  # rotated
    with db.transaction() as conn:
        assert webhooks.reseal(conn) == 2
    with db.transaction() as conn:
        assert webhooks.reseal(conn) == 0  # already on the newest key
    rows = dict(identity.sql("SELECT name, secret FROM webhooks"))
    assert {sealed.sealed_with(v) for v in rows.values()} == {sealed.key_id()}
    monkeypatch.setenv(sealed.KEYS_ENV, json.dumps(json.loads(os.environ[sealed.KEYS_ENV])[:1]))
    ids = dict(identity.sql("SELECT name, id::text FROM webhooks"))
    assert sealed.unseal(rows["legacy"], context=ids["legacy"]) == "whsec_from_before"
    assert sealed.unseal(rows[hook["name"]], context=hook["id"]) == hook["secret"]
