"""Publish -> bridge -> binary CloudEvent push to a real function process; retries with backoff;
dead-lettering after max attempts; one effect per message under redelivery."""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import sqlalchemy
from google.cloud import pubsub_v1

from emulators.bridge import CE_TYPE, Bridge, backoff_seconds
from emulators.functions import RunningFunction, start_functions
from infra.topology import Function, RetryPolicy, Subscription, Topic, Topology, Trigger
from tests.integration.conftest import PROJECT, unique

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BACKOFF_SCALE = 0.05  # 1 s minimum backoff -> 50 ms between attempts
MAX_ATTEMPTS = 4


@dataclass
class Probe:
    topology: Topology
    subscription: Subscription
    function: RunningFunction
    bridge: Bridge
    publisher: pubsub_v1.PublisherClient
    subscriber: pubsub_v1.SubscriberClient
    engine: sqlalchemy.Engine
    dead_letter_sub: str

    def publish(self, data: bytes = b"{}", **attributes: str) -> str:
        topic = self.publisher.topic_path(PROJECT, self.subscription.topic)
        return str(self.publisher.publish(topic, data, **attributes).result(timeout=30))

    def rows(self, sql: str, **params: object) -> list[tuple[object, ...]]:
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sqlalchemy.text(sql), params)]

    def wait_for(self, predicate: object, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():  # type: ignore[operator]
                return
            time.sleep(0.05)
        pytest.fail("condition not met in time")


@pytest.fixture
def probe(platform_env: dict[str, str], run_dir: Path) -> Iterator[Probe]:
    engine = sqlalchemy.create_engine(platform_env["DATABASE_URL"])
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(
            "CREATE TABLE probe_deliveries (message_id text, attempt int, ce_id text, "
            "ce_type text, trace_id text, at timestamptz DEFAULT clock_timestamp())"))
        conn.execute(sqlalchemy.text("CREATE TABLE probe_effects (message_id text)"))
    topic, dead = unique("probe-topic"), unique("probe-dead")
    sub = Subscription(unique("probe-sub"), topic, "probe", ack_deadline_s=30,
                       retry=RetryPolicy(1, 8), dead_letter_topic=dead,
                       max_delivery_attempts=MAX_ATTEMPTS)
    topology = Topology(
        functions=(Function("probe", Trigger.TOPIC, "probe", concurrency=8),),
        topics=(Topic(topic), Topic(dead, external=True)),
        subscriptions=(sub,), schedules=(), buckets=(),
    )
    base_env = platform_env | {"PATH": "/usr/bin:/bin"}
    (running,) = start_functions(topology.functions, base_env, run_dir / "logs", FIXTURES)
    bridge = Bridge(topology, PROJECT, {"probe": running.url}, backoff_scale=BACKOFF_SCALE)
    bridge.start()
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    dead_sub = subscriber.subscription_path(PROJECT, unique("dead-inspect"))
    subscriber.create_subscription(name=dead_sub, topic=publisher.topic_path(PROJECT, dead))
    try:
        yield Probe(topology, sub, running, bridge, publisher, subscriber, engine, dead_sub)
    finally:
        bridge.stop()
        running.process.stop()
        engine.dispose()


def test_publish_is_pushed_as_a_binary_cloudevent(probe: Probe) -> None:
    message_id = probe.publish(b'{"hello":"world"}')
    probe.wait_for(lambda: probe.rows("SELECT 1 FROM probe_effects WHERE message_id = :m",
                                      m=message_id))
    ((ce_id, ce_type, attempt),) = probe.rows(
        "SELECT ce_id, ce_type, attempt FROM probe_deliveries WHERE message_id = :m", m=message_id)
    assert (ce_id, ce_type, attempt) == (message_id, CE_TYPE, 1)


def test_failing_handler_is_retried_with_backoff_then_dead_lettered(probe: Probe) -> None:
    message_id = probe.publish(b"doomed", fail_attempts="99", origin="test")
    probe.wait_for(lambda: any(d.dead_lettered and d.message_id == message_id
                               for d in probe.bridge.deliveries))
    rows = probe.rows("SELECT attempt, extract(epoch FROM at) FROM probe_deliveries "
                      "WHERE message_id = :m ORDER BY at", m=message_id)
    assert [r[0] for r in rows] == list(range(1, MAX_ATTEMPTS + 1))
    gaps = [float(b[1]) - float(a[1]) for a, b in itertools.pairwise(rows)]  # type: ignore[arg-type]
    for attempt, gap in enumerate(gaps, start=1):
        # Exponential backoff is a lower bound on the gap between attempts.
        assert gap >= 0.9 * backoff_seconds(probe.subscription, attempt, BACKOFF_SCALE)
    assert probe.rows("SELECT 1 FROM probe_effects WHERE message_id = :m", m=message_id) == []

    response = probe.subscriber.pull(subscription=probe.dead_letter_sub, max_messages=10,
                                     timeout=10)
    (received,) = response.received_messages
    assert received.message.data == b"doomed"
    attrs = dict(received.message.attributes)
    assert attrs["origin"] == "test"
    assert attrs["CloudPubSubDeadLetterSourceDeliveryCount"] == str(MAX_ATTEMPTS)
    assert attrs["CloudPubSubDeadLetterSourceSubscription"] == probe.subscription.name


def test_transient_failure_recovers_without_dead_letter(probe: Probe) -> None:
    message_id = probe.publish(b"{}", fail_attempts="2")
    probe.wait_for(lambda: probe.rows("SELECT 1 FROM probe_effects WHERE message_id = :m",
                                      m=message_id))
    attempts = probe.rows("SELECT attempt FROM probe_deliveries WHERE message_id = :m "
                          "ORDER BY attempt", m=message_id)
    assert attempts == [(1,), (2,), (3,)]
    assert not any(d.dead_lettered for d in probe.bridge.deliveries)


def test_redelivery_after_commit_has_one_effect(probe: Probe) -> None:
    message_id = probe.publish(b"{}", fail_after_commit="1")
    probe.wait_for(lambda: any(d.message_id == message_id and d.status == 204
                               for d in probe.bridge.deliveries))
    assert len(probe.rows("SELECT 1 FROM probe_deliveries WHERE message_id = :m",
                          m=message_id)) == 2
    assert len(probe.rows("SELECT 1 FROM probe_effects WHERE message_id = :m",
                          m=message_id)) == 1


def test_same_message_pushed_twice_has_one_effect(probe: Probe) -> None:
    body = {
        "message": {"data": base64.b64encode(b"{}").decode(), "messageId": "dup-1",
                    "attributes": {}, "publishTime": "2026-01-01T00:00:00Z"},
        "subscription": f"projects/{PROJECT}/subscriptions/{probe.subscription.name}",
    }
    for _ in range(2):
        resp = requests.post(probe.function.url, data=json.dumps(body),
                             headers={"Content-Type": "application/json"}, timeout=10)
        assert resp.status_code == 204
    assert probe.rows("SELECT count(*) FROM probe_effects WHERE message_id = 'dup-1'") == [(1,)]
    assert probe.rows("SELECT count(*) FROM probe_deliveries WHERE message_id = 'dup-1'") == [(2,)]


def test_trace_travels_from_publisher_to_consumer_logs(probe: Probe, run_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from shared import clients, context, events

    ctx = context.from_headers({})
    with context.bound(ctx):
        message_id = events.publish(probe.subscription.topic, events.Envelope("probe.ping", {}))
    clients.publisher().stop()
    probe.wait_for(lambda: probe.rows("SELECT 1 FROM probe_effects WHERE message_id = :m",
                                      m=message_id))
    ((stored,),) = probe.rows("SELECT trace_id FROM probe_deliveries WHERE message_id = :m",
                              m=message_id)
    assert stored == ctx.traceparent
    lines = [json.loads(line) for line in
             (run_dir / "logs" / "fn-probe.log").read_text().splitlines() if line.startswith("{")]
    (delivery,) = [line for line in lines if line.get("messageId") == message_id]
    # Every line of that request (the delivery line and the access log) is on the trace.
    request_lines = [line for line in lines if line.get("requestId") == delivery["requestId"]]
    assert len(request_lines) >= 2
    for line in request_lines:
        assert line["logging.googleapis.com/trace"].endswith(f"/traces/{ctx.trace_id}")
