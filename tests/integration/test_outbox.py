"""Transactional outbox: events commit with the change, publish after commit, and a row whose
publish failed is published later by the real `outbox_relay` function, fired by its schedule."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from emulators.scheduler import fire
from infra.topology import TOPOLOGY
from shared import outbox
from shared.events import Envelope
from tests.integration.conftest import PROJECT, deployed, unique


def _subscribe(topic: str) -> tuple[pubsub_v1.SubscriberClient, str]:
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    publisher.create_topic(name=publisher.topic_path(PROJECT, topic))
    path = subscriber.subscription_path(PROJECT, unique("inspect"))
    subscriber.create_subscription(name=path, topic=publisher.topic_path(PROJECT, topic))
    return subscriber, path


def _pull_one(subscriber: pubsub_v1.SubscriberClient, path: str) -> pubsub_v1.types.PubsubMessage:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        response = subscriber.pull(subscription=path, max_messages=1, timeout=5)
        if response.received_messages:
            received = response.received_messages[0]
            subscriber.acknowledge(subscription=path, ack_ids=[received.ack_id])
            return received.message
    pytest.fail("no message arrived")


def _outbox_rows(url: str) -> list[tuple[object, ...]]:
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(sqlalchemy.text(
            "SELECT event_id, published_at IS NOT NULL, attempts, last_error FROM outbox"))]
    engine.dispose()
    return rows


def test_event_is_published_after_commit(platform_env: dict[str, str]) -> None:
    topic = unique("orders")
    subscriber, path = _subscribe(topic)
    envelope = Envelope("order.placed", {"order": 1})
    with outbox.transaction() as tx:
        tx.emit(topic, envelope)
    message = _pull_one(subscriber, path)
    assert Envelope.from_json(message.data) == envelope
    assert message.attributes["type"] == "order.placed"
    assert _outbox_rows(platform_env["DATABASE_URL"]) == [(envelope.id, True, 1, None)]


def test_rolled_back_change_emits_nothing(platform_env: dict[str, str]) -> None:
    with pytest.raises(RuntimeError), outbox.transaction() as tx:
        tx.emit(unique("never"), Envelope("x.happened", {}))
        raise RuntimeError("the change failed")
    assert _outbox_rows(platform_env["DATABASE_URL"]) == []


def test_failed_publish_is_published_by_outbox_relay(platform_env: dict[str, str],
                                                     run_dir: Path) -> None:
    topic = unique("late")
    envelope = Envelope("thing.done", {"n": 1})
    # The topic does not exist yet, so the publish after commit fails: the row stays pending.
    with outbox.transaction() as tx:
        tx.emit(topic, envelope)
    ((event_id, published, attempts, error),) = _outbox_rows(platform_env["DATABASE_URL"])
    assert (event_id, published, attempts, error) == (envelope.id, False, 1, gexc.NotFound.__name__)

    subscriber, path = _subscribe(topic)
    engine = sqlalchemy.create_engine(platform_env["DATABASE_URL"])
    with engine.begin() as conn:  # let the backoff and the relay's grace period pass
        conn.execute(sqlalchemy.text("UPDATE outbox SET created_at = now() - interval '1 hour', "
                                     "next_attempt_at = now()"))
    engine.dispose()

    tick = next(s for s in TOPOLOGY.schedules if s.topic == "outbox.tick")
    with deployed("outbox_relay", platform_env, run_dir):
        fire(tick, PROJECT, pubsub_v1.PublisherClient())
        message = _pull_one(subscriber, path)
    assert Envelope.from_json(message.data).id == envelope.id
    ((_, published, attempts, _),) = _outbox_rows(platform_env["DATABASE_URL"])
    assert published is True and attempts == 2


@pytest.mark.parametrize("wait", [True, False])
def test_no_pubsub_client_after_commit_leaves_the_event_to_the_relay(
        platform_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, wait: bool) -> None:
    def unavailable() -> None:
        raise RuntimeError("no credentials for Pub/Sub")

    unavailable.cache_clear = lambda: None  # type: ignore[attr-defined]  # clients.reset()
    monkeypatch.setattr(outbox.clients, "publisher", unavailable)
    envelope = Envelope("thing.done", {"n": 2})
    with outbox.transaction(wait=wait) as tx:  # the committed change is not turned into an error
        tx.emit(unique("unreachable"), envelope)
    assert _outbox_rows(platform_env["DATABASE_URL"]) == [(envelope.id, False, 0, None)]


def test_a_failed_mark_after_publishing_leaves_the_row_pending(
        platform_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    topic = unique("marked")
    subscriber, path = _subscribe(topic)

    def database_gone(row_ids: list[int]) -> None:
        raise sqlalchemy.exc.OperationalError("UPDATE outbox", {}, Exception("connection lost"))

    monkeypatch.setattr(outbox, "_mark_published", database_gone)
    envelope = Envelope("thing.done", {"n": 3})
    with outbox.transaction() as tx:
        tx.emit(topic, envelope)
    assert Envelope.from_json(_pull_one(subscriber, path).data) == envelope
    # Still pending: the relay sends it again, and consumers drop the duplicate by event id.
    assert _outbox_rows(platform_env["DATABASE_URL"]) == [(envelope.id, False, 0, None)]
