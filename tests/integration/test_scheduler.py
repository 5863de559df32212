"""The local Cloud Scheduler fires cron schedules by publishing their payloads to their topics."""

from __future__ import annotations

import json
import time

from google.cloud import pubsub_v1

from emulators.scheduler import Scheduler
from infra.topology import Schedule
from tests.integration.conftest import PROJECT, unique


def test_schedule_fires_its_payload_to_its_topic(pubsub_host: str, monkeypatch) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_host)
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = unique("tick")
    publisher.create_topic(name=publisher.topic_path(PROJECT, topic))
    path = subscriber.subscription_path(PROJECT, unique("tick-sub"))
    subscriber.create_subscription(name=path, topic=publisher.topic_path(PROJECT, topic))
    # Six fields: croniter reads the last as seconds, so this fires every second.
    schedule = Schedule("every-second", cron="* * * * * *", topic=topic,
                        time_zone="Asia/Seoul", payload={"job": "tick"})
    scheduler = Scheduler((schedule,), PROJECT)
    scheduler.start()
    received = []
    deadline = time.monotonic() + 15
    try:
        while len(received) < 2 and time.monotonic() < deadline:
            response = subscriber.pull(subscription=path, max_messages=5, timeout=5)
            received += [r.message for r in response.received_messages]
            if response.received_messages:
                subscriber.acknowledge(subscription=path,
                                       ack_ids=[r.ack_id for r in response.received_messages])
    finally:
        scheduler.stop()
    assert len(received) >= 2
    assert all(json.loads(m.data) == {"job": "tick"} for m in received)
    assert all(m.attributes["schedule"] == "every-second" for m in received)
    times = [m.attributes["scheduled_time"] for m in received]
    assert times == sorted(times) and len(set(times)) == len(times)
