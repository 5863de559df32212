"""A local Cloud Scheduler: fires the manifest's cron schedules (in their time zones) by
publishing their payloads to their topics, like Cloud Scheduler's Pub/Sub target."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from croniter import croniter
from google.cloud import pubsub_v1  # type: ignore[attr-defined]

from infra.topology import Schedule

log = logging.getLogger("emulators.scheduler")


def next_fire(schedule: Schedule, after: datetime) -> datetime:
    """The next time `schedule` fires strictly after `after`, as an aware UTC datetime."""
    local = after.astimezone(ZoneInfo(schedule.time_zone))
    nxt: datetime = croniter(schedule.cron, local).get_next(datetime)
    return nxt.astimezone(UTC)


def fire(schedule: Schedule, project: str, publisher: pubsub_v1.PublisherClient,
         scheduled_for: datetime | None = None) -> str:
    """Publish one run of `schedule` now; returns the message id."""
    when = (scheduled_for or datetime.now(UTC)).isoformat()
    data = json.dumps(schedule.payload, separators=(",", ":")).encode()
    future = publisher.publish(
        publisher.topic_path(project, schedule.topic), data,
        schedule=schedule.name, scheduled_time=when,
    )
    message_id = str(future.result(timeout=30))
    log.info("fired %s -> %s (%s)", schedule.name, schedule.topic, message_id)
    return message_id


@dataclass
class Scheduler:
    schedules: tuple[Schedule, ...]
    project: str
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.publisher = pubsub_v1.PublisherClient()
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        now = datetime.now(UTC)
        due = {s.name: next_fire(s, now) for s in self.schedules}
        by_name = {s.name: s for s in self.schedules}
        while due and not self._stop.is_set():
            name = min(due, key=lambda n: due[n])
            wait = (due[name] - datetime.now(UTC)).total_seconds()
            if wait > 0 and self._stop.wait(wait):
                return
            try:
                fire(by_name[name], self.project, self.publisher, due[name])
            except Exception:
                # Like Cloud Scheduler: log it and fire again at the next run.
                log.exception("schedule %s failed to fire", name)
            due[name] = next_fire(by_name[name], due[name])
