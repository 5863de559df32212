"""auth: sign-up, login, token refresh, logout and the JWKS other functions verify with."""

from __future__ import annotations

from typing import Any

import flask
import functions_framework

from shared.auth import authenticate
from shared.bootstrap import init
from shared.http import Call, Router, json_response
from shared.validation import Field, Schema

init()

EMAIL = Field("string", required=True, min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")
SIGNUP = Schema({
    "email": EMAIL,
    "password": Field("string", required=True, min_length=1, max_length=1024),
    "display_name": Field("string", required=True, min_length=1, max_length=64),
    "referral_code": Field("string", min_length=1, max_length=64),
})
LOGIN = Schema({"email": EMAIL,
                "password": Field("string", required=True, min_length=1, max_length=1024)})
REFRESH = Schema({"refresh_token": Field("string", required=True, min_length=1, max_length=512)})

app = Router("auth", authenticate=authenticate, rate_limited=True)


def _client(call: Call) -> tuple[str, str]:
    """User agent and client address, recorded on the session for the account's owner."""
    from shared.ratelimit import client_ip

    ip = client_ip(call.request.headers.get("X-Forwarded-For"), call.request.remote_addr)
    return call.request.headers.get("User-Agent", ""), ip or ""


@app.route("POST", "/signup", body=SIGNUP, summary="Create an account and sign in")
def signup(call: Call) -> tuple[dict[str, Any], int]:
    from shared import accounts, outbox

    body = call.body or {}
    user_agent, ip = _client(call)
    with outbox.transaction() as tx:
        pair = accounts.signup(tx, body["email"], body["password"], body["display_name"],
                               user_agent, ip, body.get("referral_code"))
    return pair.body(), 201


@app.route("POST", "/login", body=LOGIN, summary="Sign in with email and password")
def login(call: Call) -> dict[str, Any]:
    from shared import accounts, outbox

    body = call.body or {}
    user_agent, ip = _client(call)
    with outbox.transaction() as tx:
        pair = accounts.login(tx, body["email"], body["password"], user_agent, ip)
    return pair.body()


@app.route("POST", "/token/refresh", body=REFRESH, summary="Rotate a refresh token")
def refresh(call: Call) -> dict[str, Any]:
    from shared import accounts, db

    with db.transaction() as conn:
        pair = accounts.refresh(conn, (call.body or {})["refresh_token"])
    return pair.body()


@app.route("POST", "/logout", role="user", summary="Revoke the current session")
def logout(call: Call) -> None:
    from shared import accounts, db

    with db.transaction() as conn:
        accounts.revoke_session(conn, call.principal.session_id, "logout")


@app.route("GET", "/.well-known/jwks.json", summary="Public keys that verify access tokens")
def jwks(call: Call) -> flask.Response:
    from shared import tokens

    return json_response(tokens.jwks(), headers={"Cache-Control": "public, max-age=300"})


@functions_framework.http
def auth(request: flask.Request) -> flask.Response:
    return app(request)
