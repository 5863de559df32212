"""events: reward events. Operators and admins create and change them; every user reads the
active ones with their own progress toward each condition; and my referral code."""

from __future__ import annotations

from typing import Any

import flask
import functions_framework

from shared import errors
from shared.auth import authenticate, parse_uuid
from shared.bootstrap import init
from shared.http import Call, Router
from shared.validation import Field, Schema

settings = init()
CURSOR_SECRET = settings.require_cursor_secret()

TIME = Field("string", min_length=1, max_length=64,
             description="RFC 3339 date-time with an offset")
CONDITION = Field("object", description="{type, min, name?}")
REWARD = Field("object", description="{type, name?, quantity, per_user_limit?, budget?}")
_COMMON = {
    "title": Field("string", min_length=1, max_length=200),
    "description": Field("string", max_length=5000),
    "starts_at": TIME,
    "ends_at": TIME,
    "status": Field("string", enum=("draft", "active", "ended")),
    "requires_approval": Field("boolean"),
}
CREATE = Schema({
    **_COMMON,
    "title": Field("string", required=True, min_length=1, max_length=200),
    "starts_at": Field("string", required=True, min_length=1, max_length=64),
    "ends_at": Field("string", required=True, min_length=1, max_length=64),
    "time_zone": Field("string", min_length=1, max_length=64),
    "reset_hour": Field("integer", minimum=0, maximum=23),
    "conditions": Field("array", max_length=10, items=CONDITION),
    "rewards": Field("array", required=True, min_length=1, max_length=10, items=REWARD),
})
PATCH = Schema(_COMMON)

app = Router("events", authenticate=authenticate, rate_limited=True)


@app.route("POST", "/events", role="operator", body=CREATE, summary="Create an event")
def create(call: Call) -> tuple[dict[str, Any], int]:
    from shared import db, reward_events

    with db.transaction() as conn:
        return reward_events.create(conn, call.principal.subject, dict(call.body or {})), 201


@app.route("GET", "/events", role="user", summary="Events, with my progress")
def listing(call: Call) -> dict[str, Any]:
    from shared import db, reward_events
    from shared.pagination import page_request

    status = call.args.get("status", "active")
    if status not in reward_events.STATUSES:
        raise errors.BadRequest("status must be draft, active or ended", code="invalid_status")
    if status != "active" and not call.principal.has_role("operator"):
        raise errors.Forbidden("only operators list draft and ended events",
                               code="missing_role")
    request = page_request(call.args, CURSOR_SECRET, f"events.{status}")
    with db.transaction() as conn:
        return reward_events.listing(conn, call.principal.subject, request, CURSOR_SECRET,
                                     status)


@app.route("GET", "/events/{event_id}", role="user", summary="An event, with my progress")
def read(call: Call) -> dict[str, Any]:
    from shared import db, reward_events

    with db.transaction() as conn:
        return reward_events.get(conn, call.principal.subject, _id(call),
                                 staff=call.principal.has_role("operator"))


@app.route("PATCH", "/events/{event_id}", role="operator", body=PATCH,
           summary="Change an event")
def patch(call: Call) -> dict[str, Any]:
    from shared import db, reward_events

    with db.transaction() as conn:
        return reward_events.update(conn, _id(call), dict(call.body or {}))


@app.route("GET", "/me/referral-code", role="user", summary="My referral code")
def referral_code(call: Call) -> dict[str, Any]:
    from shared import db, reward_events

    with db.transaction() as conn:
        return {"referral_code": reward_events.referral_code(conn, call.principal.subject)}


def _id(call: Call) -> str:
    return parse_uuid(call.params["event_id"], "event")


@functions_framework.http
def events(request: flask.Request) -> flask.Response:
    return app(request)
