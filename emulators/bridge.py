"""An Eventarc-like push bridge for the Pub/Sub emulator, which cannot push with retry policies
or dead-lettering itself.

For each push subscription in the manifest it pulls from a same-named emulator subscription and
delivers every message to the target function as a binary-mode CloudEvent
(`ce-type: google.cloud.pubsub.topic.v1.messagePublished`, `ce-id` = message id, data
`{message, subscription, deliveryAttempt}`). A 2xx acks. Anything else retries with exponential
backoff between the subscription's minimum and maximum, multiplied by `backoff_scale` (locally
0.01 by default: 10 s -> 100 ms, so retry tests run in seconds). After `max_delivery_attempts`
the message is published to the dead-letter topic with Pub/Sub's dead-letter attributes, then
acked.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1  # type: ignore[attr-defined]

from infra.topology import Subscription, Topology

log = logging.getLogger("emulators.bridge")
CE_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
DEFAULT_BACKOFF_SCALE = 0.01


def backoff_seconds(sub: Subscription, attempt: int, scale: float) -> float:
    """Delay before delivery `attempt + 1`: min * 2^(attempt-1), capped at max, then scaled."""
    raw = sub.retry.minimum_backoff_s * (2 ** max(0, attempt - 1))
    return float(min(raw, sub.retry.maximum_backoff_s) * scale)


def ensure_topics(topology: Topology, project: str, publisher: pubsub_v1.PublisherClient) -> None:
    """Create every topic the manifest names (plus dead-letter and bucket topics) if missing."""
    names = {t.name for t in topology.topics}
    names |= {s.dead_letter_topic for s in topology.subscriptions if s.dead_letter_topic}
    names |= {b.notification_topic for b in topology.buckets if b.notification_topic}
    for name in sorted(names):
        try:
            publisher.create_topic(name=publisher.topic_path(project, name))
        except gexc.AlreadyExists:
            pass


@dataclass
class Delivery:
    """One delivery outcome, kept for tests and the run log."""

    subscription: str
    message_id: str
    attempt: int
    status: int | None
    dead_lettered: bool = False


@dataclass
class Bridge:
    topology: Topology
    project: str
    function_urls: dict[str, str]
    backoff_scale: float = DEFAULT_BACKOFF_SCALE
    on_delivery: Callable[[Delivery], None] | None = None
    # Tests that each deploy the same consumer use their own emulator subscriptions, so a
    # message published while one test's bridge was down is not delivered in the next test.
    subscription_suffix: str = ""
    # The most recent outcomes only: a dev stack runs for days.
    deliveries: deque[Delivery] = field(default_factory=lambda: deque(maxlen=10_000))
    _futures: list[Any] = field(default_factory=list)
    _executor: ThreadPoolExecutor | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)
    _paths: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.publisher = pubsub_v1.PublisherClient()
        self.subscriber = pubsub_v1.SubscriberClient()
        self.http = requests.Session()
        ensure_topics(self.topology, self.project, self.publisher)
        # Retries sleep in worker threads, so give them room beyond the client's default 10.
        self._executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="bridge")
        for sub in self.topology.subscriptions:
            if sub.function not in self.function_urls:
                continue
            path = self._ensure_subscription(sub)
            scheduler = pubsub_v1.subscriber.scheduler.ThreadScheduler(self._executor)
            future = self.subscriber.subscribe(
                path, callback=self._callback(sub), scheduler=scheduler,
                flow_control=pubsub_v1.types.FlowControl(max_messages=100),
            )
            self._futures.append(future)

    def _ensure_subscription(self, sub: Subscription) -> str:
        path = self.subscriber.subscription_path(self.project,
                                                 sub.name + self.subscription_suffix)
        self._paths.append(path)
        try:
            self.subscriber.create_subscription(request={
                "name": path,
                "topic": self.publisher.topic_path(self.project, sub.topic),
                "ack_deadline_seconds": sub.ack_deadline_s,
            })
        except gexc.AlreadyExists:
            pass
        return str(path)

    def stop(self) -> None:
        self._stopping.set()
        for future in self._futures:
            future.cancel()
            try:
                future.result(timeout=5)
            except Exception:  # noqa: BLE001,S110 - cancelled futures raise; nothing to keep
                pass
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self.subscription_suffix:  # a test's own subscriptions: nothing else will read them
            for path in self._paths:
                try:
                    self.subscriber.delete_subscription(subscription=path)
                except gexc.GoogleAPICallError:
                    pass

    def _callback(self, sub: Subscription) -> Callable[[Any], None]:
        def handle(message: Any) -> None:
            self._deliver_with_retries(sub, message)

        return handle

    def _deliver_with_retries(self, sub: Subscription, message: Any) -> None:
        url = self.function_urls[sub.function]
        for attempt in range(1, sub.max_delivery_attempts + 1):
            if self._stopping.is_set():
                message.nack()
                return
            status = self._post(sub, message, attempt, url)
            self._record(Delivery(sub.name, message.message_id, attempt, status))
            if status is not None and 200 <= status < 300:
                message.ack()
                return
            if attempt < sub.max_delivery_attempts:
                if self._stopping.wait(backoff_seconds(sub, attempt, self.backoff_scale)):
                    message.nack()
                    return
        self._dead_letter(sub, message, sub.max_delivery_attempts)

    def _post(self, sub: Subscription, message: Any, attempt: int, url: str) -> int | None:
        publish_time = message.publish_time.isoformat().replace("+00:00", "Z")
        subscription = f"projects/{self.project}/subscriptions/{sub.name}"
        body = {
            "message": {
                "data": base64.b64encode(message.data).decode(),
                "attributes": dict(message.attributes),
                "messageId": message.message_id,
                "message_id": message.message_id,
                "publishTime": publish_time,
                "publish_time": publish_time,
            },
            "subscription": subscription,
            "deliveryAttempt": attempt,
        }
        headers = {
            "Content-Type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": message.message_id,
            "ce-type": CE_TYPE,
            "ce-source": f"//pubsub.googleapis.com/projects/{self.project}/topics/{sub.topic}",
            "ce-time": publish_time,
        }
        if "traceparent" in message.attributes:
            headers["traceparent"] = message.attributes["traceparent"]
        try:
            resp = self.http.post(url, data=json.dumps(body), headers=headers,
                                  timeout=sub.ack_deadline_s)
        except requests.RequestException as exc:
            log.warning("delivery to %s failed: %s", sub.function, exc)
            return None
        return resp.status_code

    def _dead_letter(self, sub: Subscription, message: Any, attempts: int) -> None:
        if sub.dead_letter_topic is None:
            message.nack()  # no dead-letter topic: Pub/Sub would keep retrying
            return
        attrs = dict(message.attributes) | {
            "CloudPubSubDeadLetterSourceDeliveryCount": str(attempts),
            "CloudPubSubDeadLetterSourceSubscription": sub.name,
            "CloudPubSubDeadLetterSourceSubscriptionProject": self.project,
            "CloudPubSubDeadLetterSourceTopicPublishTime": message.publish_time.isoformat(),
        }
        topic = self.publisher.topic_path(self.project, sub.dead_letter_topic)
        self.publisher.publish(topic, message.data, **attrs).result(timeout=30)
        message.ack()
        self._record(Delivery(sub.name, message.message_id, attempts, None, dead_lettered=True))
        log.warning("message %s dead-lettered after %d attempts", message.message_id, attempts)

    def _record(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        if self.on_delivery is not None:
            self.on_delivery(delivery)
