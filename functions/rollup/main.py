"""rollup: on each `rollup.tick` (Cloud Scheduler, every minute) roll up the closed minutes of
requests per (tenant, service, environment, operation): counts, errors and a latency sketch
(`shared.rollup`). Duplicate and replayed ticks change nothing; a lost tick is caught up by the
next one; spans late within the lateness allowance are counted in their minute. Then the alert
rules are evaluated on the newly rolled-up minutes; their transitions go to `telemetry.alerts`."""

from __future__ import annotations

import logging

import flask
import functions_framework

from shared.bootstrap import init
from shared.pubsub_push import PushMessage, push_function

init()
log = logging.getLogger("rollup")


def run_rollup(message: PushMessage) -> None:
    from shared.rollup import roll_up

    result = roll_up()
    if result.skipped:
        log.info("rollup: another run holds the lock; the next tick catches up")
        return
    log.info("rollup: %d minutes from %s, %d rows, %d changed", result.minutes,
             result.start.isoformat() if result.start else None, result.rows, result.changed,
             extra={"minutes": result.minutes, "rows": result.rows, "changed": result.changed})
    # Alert rules on the minutes just rolled up, one by one, in order (`shared.alerts`).
    from shared import alerts

    evaluated = alerts.evaluate()
    log.info("alerts: %d minutes evaluated, %d transitions", evaluated.minutes,
             evaluated.transitions,
             extra={"minutes": evaluated.minutes, "transitions": evaluated.transitions})


app = push_function("rollup", run_rollup)


@functions_framework.http
def rollup(request: flask.Request) -> flask.Response:
    return app(request)
