"""alerts: operators manage the alert rules the `rollup` function evaluates every minute (service
down, error rate, latency percentile, traffic spike; the defaults of seed 003 are seeded) and
read the rules' current states (`shared.alerts`); and list the error groups `error_fanout`
keeps and mark them resolved, so the next error of a resolved group is a regression."""

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


@app.route("GET", "/error-groups", role=ROLE, summary="Error groups, most recently seen first")
def error_groups(call: Call) -> dict[str, Any]:
    from shared import db, errors
    from shared import error_groups as groups

    args = call.args
    status = args.get("status")
    if status is not None and status not in groups.GROUP_STATUSES:
        raise errors.BadRequest("status must be open or resolved", code="invalid_status")
    limit = args.get("limit", "100")
    if not limit.isdigit() or not 1 <= int(limit) <= groups.MAX_GROUPS:
        raise errors.BadRequest(f"limit must be 1 to {groups.MAX_GROUPS}", code="invalid_limit")
    with db.transaction() as conn:
        return {"items": groups.list_groups(conn, args.get("service"), status,
                                            args.get("tenant"), int(limit))}


@app.route("POST", "/error-groups/{fingerprint}/resolve", role=ROLE,
           summary="Mark an error group resolved (its next error is a regression)")
def resolve_error_group(call: Call) -> dict[str, Any]:
    from shared import db, errors
    from shared import error_groups as groups

    fingerprint = call.params["fingerprint"]
    if not 1 <= len(fingerprint) <= 128 or not fingerprint.isalnum():
        raise errors.NotFound("no such error group", code="error_group_not_found")
    with db.transaction() as conn:
        if not groups.resolve(conn, fingerprint):
            raise errors.NotFound("no such error group", code="error_group_not_found")
        (group,) = groups.list_groups(conn, None, None, None, 1, fingerprint)
    return group


@functions_framework.http
def alerts(request: flask.Request) -> flask.Response:
    return app(request)
