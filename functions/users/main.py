"""users: my profile (`/me`) and user administration (admins)."""

from __future__ import annotations

from typing import Any

import flask
import functions_framework

from shared.auth import ROLES, authenticate, parse_uuid
from shared.bootstrap import init
from shared.http import Call, Router
from shared.validation import Field, Schema

settings = init()
CURSOR_SECRET = settings.require_cursor_secret()  # fail at start, not on the first page

PROFILE = Schema({
    "display_name": Field("string", min_length=1, max_length=64),
    "avatar_upload_id": Field("string", min_length=36, max_length=36, nullable=True),
    "locale": Field("string", min_length=2, max_length=35,
                    pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$"),
    "time_zone": Field("string", min_length=1, max_length=64),
})
STATUS = Schema({"status": Field("string", required=True,
                                 enum=("active", "inactive", "suspended"))})
ROLE_SET = Schema({"roles": Field("array", required=True, max_length=len(ROLES),
                                  items=Field("string", enum=ROLES))})

app = Router("users", authenticate=authenticate, rate_limited=True)


@app.route("GET", "/me", role="user", summary="My profile")
def get_me(call: Call) -> dict[str, Any]:
    from shared import db, users

    with db.transaction() as conn:
        return users.get_profile(conn, call.principal.subject)


@app.route("PATCH", "/me", role="user", body=PROFILE, summary="Update my profile")
def patch_me(call: Call) -> dict[str, Any]:
    from shared import db, users

    with db.transaction() as conn:
        return users.update_profile(conn, call.principal.subject, dict(call.body or {}))


@app.route("DELETE", "/me", role="user", summary="Delete my account")
def delete_me(call: Call) -> None:
    from shared import outbox, users

    with outbox.transaction() as tx:
        users.delete_account(tx, call.principal.subject)


@app.route("GET", "/users", role="admin", summary="Search users")
def list_users(call: Call) -> dict[str, Any]:
    from shared import db, users
    from shared.pagination import page_request

    request = page_request(call.args, CURSOR_SECRET, "users.list")
    with db.transaction() as conn:
        return users.list_users(conn, request, CURSOR_SECRET, call.args.get("q") or None)


@app.route("PUT", "/users/{user_id}/status", role="admin", body=STATUS,
           summary="Set a user's status")
def put_status(call: Call) -> dict[str, Any]:
    from shared import outbox, users

    with outbox.transaction() as tx:
        return users.set_status(tx, call.principal.subject,
                                parse_uuid(call.params["user_id"], "user"),
                                (call.body or {})["status"])


@app.route("PUT", "/users/{user_id}/roles", role="admin", body=ROLE_SET,
           summary="Set a user's roles")
def put_roles(call: Call) -> dict[str, Any]:
    from shared import outbox, users

    with outbox.transaction() as tx:
        return users.set_roles(tx, call.principal.subject,
                               parse_uuid(call.params["user_id"], "user"),
                               (call.body or {})["roles"])


@functions_framework.http
def users(request: flask.Request) -> flask.Response:
    return app(request)
