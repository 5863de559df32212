"""alerts: operators manage the alert rules the `rollup` function evaluates every minute (service
down, error rate, latency percentile, traffic spike; the defaults of seed 003 are seeded) and
read the rules' current states (`shared.alerts`)."""

from __future__ import annotations

from typing import Any

import flask
import functions_framework

from shared.alerts import KINDS
from shared.auth import authenticate, parse_uuid
from shared.bootstrap import init
from shared.http import Call, Router
from shared.validation import Field, Schema

init()

ROLE = "operator"  # admins pass every role check
_FIELDS = {
    "tenant": Field("string", max_length=200, nullable=True),
    "service": Field("string", min_length=1, max_length=200, nullable=True),
    "params": Field("object"),
    "enabled": Field("boolean"),
}
CREATE = Schema({"name": Field("string", required=True, min_length=1, max_length=100),
                 "kind": Field("string", required=True, enum=KINDS), **_FIELDS})
PATCH = Schema({"name": Field("string", min_length=1, max_length=100),
                "kind": Field("string", enum=KINDS), **_FIELDS})

app = Router("alerts", authenticate=authenticate, rate_limited=True)


@app.route("GET", "/rules", role=ROLE, summary="List alert rules")
def list_rules(call: Call) -> dict[str, Any]:
    from shared import alerts, db

    with db.transaction() as conn:
        return {"rules": alerts.list_rules(conn)}


@app.route("POST", "/rules", role=ROLE, body=CREATE, summary="Create an alert rule")
def create_rule(call: Call) -> tuple[dict[str, Any], int]:
    from shared import alerts, db

    with db.transaction() as conn:
        return alerts.create_rule(conn, dict(call.body or {})), 201


@app.route("GET", "/rules/{rule_id}", role=ROLE, summary="Read an alert rule")
def read_rule(call: Call) -> dict[str, Any]:
    from shared import alerts, db

    with db.transaction() as conn:
        return alerts.get_rule(conn, _id(call))


@app.route("PATCH", "/rules/{rule_id}", role=ROLE, body=PATCH, summary="Change an alert rule")
def patch_rule(call: Call) -> dict[str, Any]:
    from shared import alerts, db

    with db.transaction() as conn:
        return alerts.update_rule(conn, _id(call), dict(call.body or {}))


@app.route("DELETE", "/rules/{rule_id}", role=ROLE, summary="Delete an alert rule")
def delete_rule(call: Call) -> None:
    from shared import alerts, db

    with db.transaction() as conn:
        alerts.delete_rule(conn, _id(call))


@app.route("GET", "/alerts", role=ROLE, summary="Current alert states")
def list_alerts(call: Call) -> dict[str, Any]:
    from shared import alerts, db

    filters = alerts.parse_filters(call.args)
    with db.transaction() as conn:
        return {"alerts": alerts.list_states(conn, **filters)}


def _id(call: Call) -> str:
    return parse_uuid(call.params["rule_id"], "alert rule")


@functions_framework.http
def alerts(request: flask.Request) -> flask.Response:
    return app(request)
