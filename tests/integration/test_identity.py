"""Sign-up, login, refresh rotation and reuse detection, logout, profiles and administration,
through the real `auth` and `users` functions on a real database."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.integration.identity_fixtures import PASSWORD, Identity


def test_signup_login_refresh_logout(identity: Identity) -> None:
    first = identity.signup()
    assert first["token_type"] == "Bearer" and first["expires_in"] == 900
    me = identity.users.get("/me", headers=identity.bearer(first))
    assert me.status_code == 200 and me.json["email"] == first["email"]

    login = identity.auth.post("/login", json={"email": first["email"].upper(),
                                               "password": PASSWORD})
    assert login.status_code == 200 and login.json["session_id"] != first["session_id"]

    rotated = identity.auth.post("/token/refresh",
                                 json={"refresh_token": login.json["refresh_token"]})
    assert rotated.status_code == 200
    assert rotated.json["refresh_token"] != login.json["refresh_token"]
    assert rotated.json["session_id"] == login.json["session_id"]

    out = identity.auth.post("/logout", headers=identity.bearer(rotated.json))
    assert out.status_code == 204
    # Revocation is checked on every request: the still-unexpired access token stops at once.
    again = identity.users.get("/me", headers=identity.bearer(rotated.json))
    assert again.status_code == 401 and again.json["code"] == "session_revoked"
    assert "WWW-Authenticate" in again.headers
    # The other session is untouched.
    assert identity.users.get("/me", headers=identity.bearer(first)).status_code == 200


def test_refresh_token_reuse_revokes_the_whole_session(identity: Identity) -> None:
    tokens = identity.signup()
    first = identity.auth.post("/token/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert first.status_code == 200
    replay = identity.auth.post("/token/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert replay.status_code == 401 and replay.json["code"] == "refresh_token_reused"
    # The legitimate holder's newer tokens die with the session.
    newer = identity.auth.post("/token/refresh",
                               json={"refresh_token": first.json["refresh_token"]})
    assert newer.status_code == 401
    assert identity.users.get("/me", headers=identity.bearer(first.json)).status_code == 401
    ((reason,),) = identity.sql("SELECT revoked_reason FROM sessions WHERE id = :id",
                                id=tokens["session_id"])
    assert reason == "refresh_token_reuse"


def test_unknown_email_and_wrong_password_answer_alike(identity: Identity) -> None:
    account = identity.signup()
    wrong = identity.auth.post("/login", json={"email": account["email"],
                                               "password": "not the password!"})
    unknown = identity.auth.post("/login", json={"email": "nobody@example.com",
                                                 "password": "not the password!"})
    assert wrong.status_code == unknown.status_code == 401
    strip = ("traceId", "instance")
    assert {k: v for k, v in wrong.json.items() if k not in strip} == {
        k: v for k, v in unknown.json.items() if k not in strip}


def test_repeated_failures_slow_down_then_lock(identity: Identity) -> None:
    account = identity.signup()
    bad = {"email": account["email"], "password": "wrong password 1"}
    codes = [identity.auth.post("/login", json=bad).status_code for _ in range(5)]
    assert codes == [401] * 5
    throttled = identity.auth.post("/login", json=bad)
    assert throttled.status_code == 429 and throttled.json["code"] == "login_throttled"
    assert int(throttled.headers["Retry-After"]) >= 1
    # Even the right password waits: the throttle cannot be used to test guesses.
    right = identity.auth.post("/login", json={"email": account["email"], "password": PASSWORD})
    assert right.status_code == 429
    # Past the waits, enough failures lock the address for a while.
    for _ in range(5):
        identity.sql("UPDATE login_attempts SET last_failure = now() - interval '1 hour'")
        identity.auth.post("/login", json=bad)
    locked = identity.auth.post("/login", json={"email": account["email"], "password": PASSWORD})
    assert locked.status_code == 429 and locked.json["code"] == "account_locked"
    assert int(locked.headers["Retry-After"]) > 60
    identity.sql("UPDATE login_attempts SET locked_until = now(), "
                 "last_failure = now() - interval '1 day'")
    assert identity.auth.post("/login", json={"email": account["email"],
                                              "password": PASSWORD}).status_code == 200


@pytest.mark.parametrize(("password", "problem"), [
    ("short1!", "at least"), ("password123", "too common"), ("aaaaaaaaaaaa", "too common")])
def test_password_policy(identity: Identity, password: str, problem: str) -> None:
    resp = identity.auth.post("/signup", json={"email": "p@example.com", "password": password,
                                               "display_name": "P"})
    assert resp.status_code == 422 and resp.json["code"] == "weak_password"
    assert problem in resp.json["errors"][0]["message"]


def test_duplicate_email_is_409(identity: Identity) -> None:
    account = identity.signup()
    resp = identity.auth.post("/signup", json={"email": account["email"], "password": PASSWORD,
                                               "display_name": "Twin"})
    assert resp.status_code == 409 and resp.json["code"] == "email_taken"


def test_profile_update_and_validation(identity: Identity) -> None:
    tokens = identity.signup()
    ok = identity.users.patch("/me", headers=identity.bearer(tokens),
                              json={"display_name": "Mina", "locale": "ko-KR",
                                    "time_zone": "Asia/Seoul"})
    assert ok.status_code == 200
    assert (ok.json["display_name"], ok.json["locale"], ok.json["time_zone"]) == (
        "Mina", "ko-KR", "Asia/Seoul")
    bad = identity.users.patch("/me", headers=identity.bearer(tokens),
                               json={"time_zone": "Mars/Olympus"})
    assert bad.status_code == 422
    assert identity.users.patch("/me", headers=identity.bearer(tokens),
                                json={"roles": ["admin"]}).status_code == 422


def test_a_user_cannot_reach_another_users_profile_or_sessions(identity: Identity) -> None:
    ann, bob = identity.signup(), identity.signup()
    # /me is always the caller: there is no id to swap.
    assert identity.users.get("/me", headers=identity.bearer(bob)).json["id"] == bob["user_id"]
    # Admin routes are not open to users, whatever id they name.
    for method, path, body in (
            ("get", "/users", None),
            ("put", f"/users/{ann['user_id']}/status", {"status": "suspended"}),
            ("put", f"/users/{ann['user_id']}/roles", {"roles": ["admin"]})):
        resp = getattr(identity.users, method)(path, headers=identity.bearer(bob), json=body)
        assert resp.status_code == 403 and resp.json["code"] == "missing_role"
        assert "insufficient_scope" in resp.headers["WWW-Authenticate"]
    # Bob's logout ends only Bob's session.
    identity.auth.post("/logout", headers=identity.bearer(bob))
    assert identity.users.get("/me", headers=identity.bearer(ann)).status_code == 200
    assert identity.sql("SELECT status FROM users WHERE id = :id", id=ann["user_id"]) == [
        ("active",)]


def test_admin_lists_sets_status_and_roles(identity: Identity) -> None:
    admin, target = identity.signup(), identity.signup()
    identity.make_admin(admin)
    headers = identity.bearer(admin)
    seen, cursor = [], None
    while True:
        resp = identity.users.get("/users", headers=headers,
                                  query_string={"limit": 1, **({"cursor": cursor} if cursor
                                                             else {})})
        assert resp.status_code == 200
        seen += [u["id"] for u in resp.json["items"]]
        cursor = resp.json["nextCursor"]
        if not cursor:
            break
    assert set(seen) == {admin["user_id"], target["user_id"]} and len(seen) == 2
    found = identity.users.get("/users", headers=headers, query_string={"q": target["email"]})
    assert [u["id"] for u in found.json["items"]] == [target["user_id"]]

    suspended = identity.users.put(f"/users/{target['user_id']}/status", headers=headers,
                                   json={"status": "suspended"})
    assert suspended.status_code == 200 and suspended.json["status"] == "suspended"
    # A suspended account is refused at once, and cannot log in.
    assert identity.users.get("/me", headers=identity.bearer(target)).status_code == 401
    login = identity.auth.post("/login", json={"email": target["email"], "password": PASSWORD})
    assert login.status_code == 403 and login.json["code"] == "account_suspended"
    events = identity.sql("SELECT payload FROM outbox WHERE topic = 'users.events'")
    assert len(events) == 1 and b'"user.status_changed"' in bytes(events[0][0])

    roles = identity.users.put(f"/users/{target['user_id']}/roles", headers=headers,
                               json={"roles": ["operator"]})
    assert roles.status_code == 200 and roles.json["roles"] == ["operator", "user"]
    own = identity.users.put(f"/users/{admin['user_id']}/status", headers=headers,
                             json={"status": "inactive"})
    assert own.status_code == 409
    missing = identity.users.put("/users/00000000-0000-0000-0000-000000000000/status",
                                 headers=headers, json={"status": "active"})
    assert missing.status_code == 404
    assert identity.users.put("/users/not-a-uuid/status", headers=headers,
                              json={"status": "active"}).status_code == 404


def test_delete_me_anonymizes_and_revokes(identity: Identity) -> None:
    tokens = identity.signup()
    other_session = identity.auth.post("/login", json={"email": tokens["email"],
                                                       "password": PASSWORD}).json
    assert identity.users.delete("/me", headers=identity.bearer(tokens)).status_code == 204
    ((email, name, status, pw),) = identity.sql(
        "SELECT email, display_name, status, password_hash FROM users WHERE id = :id",
        id=tokens["user_id"])
    assert (email, name, status, pw) == (None, "Deleted user", "deleted", None)
    assert identity.users.get("/me", headers=identity.bearer(other_session)).status_code == 401
    assert identity.auth.post("/login", json={"email": tokens["email"],
                                              "password": PASSWORD}).status_code == 401
    events = identity.sql("SELECT payload FROM outbox WHERE topic = 'users.events'")
    assert len(events) == 1 and b'"user.deleted"' in bytes(events[0][0])
    # The address is free again.
    identity.signup(email=tokens["email"])


def test_login_publishes_a_login_event_through_the_outbox(identity: Identity) -> None:
    account = identity.signup()
    identity.auth.post("/login", json={"email": account["email"], "password": PASSWORD})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = identity.sql("SELECT published_at IS NOT NULL, payload FROM outbox "
                            "WHERE topic = 'auth.logins'")
        if rows and rows[0][0]:
            break
        time.sleep(0.05)
    assert rows and rows[0][0], "login event was not published"
    assert b'"user.logged_in"' in bytes(rows[0][1])


def test_rate_limit_is_per_caller_with_standard_headers(identity: Identity,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from functions_framework import create_app

    from tests.integration.identity_fixtures import REPO

    monkeypatch.setenv("RATE_LIMIT_RATE", "0.001")  # no refill within the test
    monkeypatch.setenv("RATE_LIMIT_BURST", "3")
    auth = create_app("auth", str(REPO / "functions/auth/main.py")).test_client()
    body = {"email": "nobody@example.com", "password": "whatever it is"}
    caller = {"X-Forwarded-For": "203.0.113.7"}
    statuses = [auth.post("/login", json=body, headers=caller).status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]
    limited = auth.post("/login", json=body, headers=caller)
    assert limited.json["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.headers["RateLimit-Policy"].startswith('"auth";q=3;w=')
    assert limited.headers["RateLimit"].startswith('"auth";r=0;t=')
    # Another client address has its own bucket; health checks are never limited.
    assert auth.post("/login", json=body,
                     headers={"X-Forwarded-For": "198.51.100.9"}).status_code == 401
    assert auth.get("/healthz", headers=caller).status_code == 200


@pytest.mark.parametrize("body", [
    {"email": "nul\u0000@example.com", "password": PASSWORD, "display_name": "X"},
    {"email": "a@example.com", "password": PASSWORD, "display_name": "X\u0000"},
    {"email": "\ud800@example.com", "password": PASSWORD, "display_name": "X"},
    {"email": "b@example.com", "password": "\ud800" * 12, "display_name": "X"},
])
def test_nul_and_invalid_unicode_are_400_and_leave_connections_healthy(identity: Identity,
                                                                       body: dict) -> None:
    resp = identity.auth.post("/signup", json=body)
    assert resp.status_code == 400 and resp.json["code"] == "invalid_json"
    assert identity.auth.get("/.well-known/jwks.json").status_code == 200
    refresh = identity.auth.post("/token/refresh", json={"refresh_token": "\ud800"})
    assert refresh.status_code == 400
    for _ in range(3):  # every pooled connection still works
        assert identity.auth.post("/token/refresh",
                                  json={"refresh_token": "unknown"}).status_code == 401


def test_null_fields_and_nul_queries(identity: Identity) -> None:
    tokens = identity.signup()
    headers = identity.bearer(tokens)
    for field in ("display_name", "locale", "time_zone"):
        resp = identity.users.patch("/me", headers=headers, json={field: None})
        assert resp.status_code == 422, field
    cleared = identity.users.patch("/me", headers=headers, json={"avatar_upload_id": None})
    assert cleared.status_code == 200 and cleared.json["avatar_upload_id"] is None
    identity.make_admin(tokens)
    resp = identity.users.get("/users", headers=headers, query_string={"q": "a\x00b"})
    assert resp.status_code == 400 and resp.json["code"] == "invalid_query"


@pytest.mark.parametrize("failure", ["wrong password", "replayed refresh token"])
def test_what_a_failure_writes_on_its_own_needs_no_second_pooled_connection(
        identity: Identity, monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    """A failed login records the attempt, and a replayed refresh token revokes the session,
    apart from the request's transaction. Taking a second connection from the pool the request
    already holds one of would wedge an instance whose connections are all held that way (a
    burst of bad passwords): here a pool of one, where that second connection never comes."""
    from shared import clients, db

    tokens = identity.signup()
    monkeypatch.setattr(db, "POOL_SIZE", 1)
    monkeypatch.setattr(db, "POOL_TIMEOUT_S", 2.0)  # the wait that would otherwise fail it
    clients.reset()
    try:
        if failure == "wrong password":
            resp = identity.auth.post("/login", json={"email": tokens["email"],
                                                      "password": "not the password!"})
            assert resp.status_code == 401 and resp.json["code"] == "invalid_credentials"
            assert identity.sql("SELECT failures FROM login_attempts") == [(1,)]
        else:
            body = {"refresh_token": tokens["refresh_token"]}
            assert identity.auth.post("/token/refresh", json=body).status_code == 200
            resp = identity.auth.post("/token/refresh", json=body)
            assert resp.status_code == 401 and resp.json["code"] == "refresh_token_reused"
            assert identity.sql("SELECT revoked_reason FROM sessions WHERE id = :id",
                                id=tokens["session_id"]) == [("refresh_token_reuse",)]
    finally:
        monkeypatch.undo()
        clients.reset()  # later tests get the usual pools


def test_a_database_refusing_connections_is_a_503_with_retry_after(
        identity: Identity, monkeypatch: pytest.MonkeyPatch, platform_env: dict[str, str]
        ) -> None:
    """Real PostgreSQL at its connection limit (here: a role allowed none, SQLSTATE 53300):
    the request is answered 503 with Retry-After, which clients and Pub/Sub retry, not 500."""
    from sqlalchemy.engine import make_url

    from shared import clients

    tokens = identity.signup()
    role = f"capped_{uuid.uuid4().hex[:8]}"
    identity.sql(f"CREATE ROLE {role} LOGIN PASSWORD 'capped-password' CONNECTION LIMIT 0")
    url = make_url(platform_env["DATABASE_URL"]).set(username=role, password="capped-password")
    monkeypatch.setenv("DATABASE_URL", url.render_as_string(hide_password=False))
    clients.reset()
    try:
        resp = identity.users.get("/me", headers=identity.bearer(tokens))
        assert resp.status_code == 503 and resp.mimetype == "application/problem+json"
        assert resp.json["code"] == "database_unavailable"
        assert resp.headers["Retry-After"] == "1"
    finally:
        monkeypatch.undo()
        clients.reset()
        identity.sql(f"DROP ROLE {role}")
