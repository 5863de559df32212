"""The identity flow end to end on the local stack, over HTTP through the gateway:
sign-up -> login -> refresh -> reuse detection -> logout -> admin status change ->
user_lifecycle effect (through Pub/Sub and the push bridge)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
import requests
import sqlalchemy

from tests.e2e.conftest import REPO

pytestmark = pytest.mark.e2e
PASSWORD = "a long and unusual passphrase"


def _url(stack: dict[str, Any], function: str, path: str) -> str:
    return f"{stack['gateway_url']}/{function}{path}"


def _signup(stack: dict[str, Any], email: str) -> dict[str, Any]:
    resp = requests.post(_url(stack, "auth", "/signup"), timeout=10,
                         json={"email": email, "password": PASSWORD, "display_name": "E2E"})
    assert resp.status_code == 201, resp.text
    assert resp.headers["RateLimit-Policy"].startswith('"auth"')
    return dict(resp.json())


def _bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def test_identity_flow(stack: dict[str, Any]) -> None:
    email = f"e2e-{uuid.uuid4().hex[:8]}@example.com"
    admin_email = f"admin-{uuid.uuid4().hex[:8]}@example.com"
    user = _signup(stack, email)
    _signup(stack, admin_email)
    granted = subprocess.run(
        [sys.executable, "-m", "shared.users", "grant", admin_email, "admin"], cwd=REPO,
        env={"DATABASE_URL": stack["database_url"], "APP_ENV": "local", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=True)
    assert "granted" in granted.stdout

    login = requests.post(_url(stack, "auth", "/login"), timeout=10,
                          json={"email": email, "password": PASSWORD})
    assert login.status_code == 200
    tokens = login.json()
    # Other functions verify our tokens through the auth function's JWKS.
    me = requests.get(_url(stack, "users", "/me"), headers=_bearer(tokens), timeout=10)
    assert me.status_code == 200 and me.json()["email"] == email

    rotated = requests.post(_url(stack, "auth", "/token/refresh"), timeout=10,
                            json={"refresh_token": tokens["refresh_token"]})
    assert rotated.status_code == 200
    reuse = requests.post(_url(stack, "auth", "/token/refresh"), timeout=10,
                          json={"refresh_token": tokens["refresh_token"]})
    assert reuse.status_code == 401 and reuse.json()["code"] == "refresh_token_reused"
    assert requests.get(_url(stack, "users", "/me"), headers=_bearer(rotated.json()),
                        timeout=10).status_code == 401

    fresh = requests.post(_url(stack, "auth", "/login"), timeout=10,
                          json={"email": email, "password": PASSWORD}).json()
    logout = requests.post(_url(stack, "auth", "/logout"), headers=_bearer(fresh), timeout=10)
    assert logout.status_code == 204
    assert requests.get(_url(stack, "users", "/me"), headers=_bearer(fresh),
                        timeout=10).status_code == 401

    admin = requests.post(_url(stack, "auth", "/login"), timeout=10,
                          json={"email": admin_email, "password": PASSWORD}).json()
    still_in = requests.post(_url(stack, "auth", "/login"), timeout=10,
                             json={"email": email, "password": PASSWORD}).json()
    suspended = requests.put(_url(stack, "users", f"/users/{user['user_id']}/status"),
                             headers=_bearer(admin), json={"status": "suspended"}, timeout=10)
    assert suspended.status_code == 200 and suspended.json()["status"] == "suspended"
    assert requests.get(_url(stack, "users", "/me"), headers=_bearer(still_in),
                        timeout=10).status_code == 401

    # user_lifecycle applies the change it received through users.events.
    engine = sqlalchemy.create_engine(stack["database_url"])
    deadline = time.monotonic() + 30
    try:
        while True:
            with engine.connect() as conn:
                row = conn.execute(sqlalchemy.text(
                    "SELECT status, chat_blocked, claims_blocked FROM account_restrictions "
                    "WHERE user_id = :u"), {"u": user["user_id"]}).first()
                live = conn.execute(sqlalchemy.text(
                    "SELECT count(*) FROM sessions WHERE user_id = :u AND revoked_at IS NULL"),
                    {"u": user["user_id"]}).scalar()
            if row is not None:
                break
            assert time.monotonic() < deadline, "user_lifecycle never applied the suspension"
            time.sleep(0.1)
    finally:
        engine.dispose()
    assert tuple(row) == ("suspended", True, True)
    assert live == 0
