"""Events and rewards on the local stack, over HTTP through the gateway: an operator creates an
event; a user logs in, creates a character and chats; the `activity` consumer gets those events
by real Pub/Sub push and updates progress; the user claims; the wallet shows the reward; the
Firestore notification exists (from `rewards.granted`, again by push)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import sqlalchemy

pytestmark = pytest.mark.e2e
PASSWORD = "a long and unusual passphrase"


def _url(stack: dict[str, Any], function: str, path: str) -> str:
    return f"{stack['gateway_url']}/{function}{path}"


def _wait_for(fetch: Callable[[], Any], ready: Callable[[Any], bool], timeout: float = 60.0
              ) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if ready(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not ready in time: {value}")
        time.sleep(0.2)


def _signup(stack: dict[str, Any], name: str) -> tuple[str, dict[str, str], str]:
    email = f"{name}-{uuid.uuid4().hex[:8]}@example.com"
    resp = requests.post(_url(stack, "auth", "/signup"), timeout=10, json={
        "email": email, "password": PASSWORD, "display_name": name})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    return body["user_id"], {"Authorization": f"Bearer {body['access_token']}"}, email


def test_activity_progress_claim_wallet_and_notification(stack: dict[str, Any]) -> None:
    operator_id, operator, _ = _signup(stack, "operator")
    engine = sqlalchemy.create_engine(stack["database_url"])
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE users SET roles = ARRAY['user','operator'] "
                                     "WHERE id = :id"), {"id": operator_id})
    engine.dispose()
    now = datetime.now(UTC)
    created = requests.post(_url(stack, "events", "/events"), headers=operator, timeout=10,
                            json={"title": "Welcome week", "status": "active",
                                  "starts_at": (now - timedelta(hours=1)).isoformat(),
                                  "ends_at": (now + timedelta(days=7)).isoformat(),
                                  "time_zone": "Asia/Seoul", "reset_hour": 4,
                                  "conditions": [{"type": "login_streak", "min": 1},
                                                 {"type": "characters_created", "min": 1},
                                                 {"type": "chat_messages", "min": 1}],
                                  "rewards": [{"type": "points", "quantity": 50},
                                              {"type": "coupon", "name": "coffee",
                                               "quantity": 1, "budget": 100}]})
    assert created.status_code == 201, created.text
    event_id = created.json()["id"]

    user_id, _, email = _signup(stack, "player")
    login = requests.post(_url(stack, "auth", "/login"), timeout=10,
                          json={"email": email, "password": PASSWORD})
    assert login.status_code == 200
    user = {"Authorization": f"Bearer {login.json()['access_token']}"}
    early = requests.post(_url(stack, "reward_claim", f"/events/{event_id}/claims"),
                          headers=user | {"Idempotency-Key": str(uuid.uuid4())}, timeout=10)
    assert early.status_code == 409 and early.json()["code"] == "claim_refused"

    character = requests.post(_url(stack, "characters", "/characters"), headers=user,
                              json={"name": "Mina", "greeting": "Welcome!"}, timeout=10).json()
    conversation = requests.post(_url(stack, "conversations", "/conversations"), headers=user,
                                 json={"character_id": character["id"]}, timeout=10).json()
    turn = requests.post(_url(stack, "chat_turn",
                              f"/conversations/{conversation['id']}/turns"),
                         headers=user, json={"message": "Hello there"}, timeout=30)
    assert turn.status_code == 201, turn.text

    event = _wait_for(
        lambda: requests.get(_url(stack, "events", f"/events/{event_id}"), headers=user,
                             timeout=10).json(),
        lambda e: all(p["met"] for p in e["progress"]))
    assert event["claimable"] is True
    assert [p["current"] for p in event["progress"]] == [1, 1, 1]

    key = str(uuid.uuid4())
    claim_url = _url(stack, "reward_claim", f"/events/{event_id}/claims")
    claimed = requests.post(claim_url, headers=user | {"Idempotency-Key": key}, timeout=10)
    assert claimed.status_code == 201, claimed.text
    replay = requests.post(claim_url, headers=user | {"Idempotency-Key": key}, timeout=10)
    assert replay.status_code == 201 and replay.json() == claimed.json()
    wallet = requests.get(_url(stack, "reward_claim", "/me/wallet"), headers=user,
                          timeout=10).json()
    assert wallet == {"points": 50, "items": [], "coupons": [{"name": "coffee",
                                                              "quantity": 1}]}
    mine = requests.get(_url(stack, "reward_claim", "/me/claims"), headers=user,
                        timeout=10).json()["items"]
    assert [c["status"] for c in mine] == ["granted", "refused"]

    from google.cloud import firestore  # type: ignore[attr-defined]

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FIRESTORE_EMULATOR_HOST", stack["firestore_emulator_host"])
        client = firestore.Client(project=stack["project"])
        document = (client.collection("users").document(user_id).collection("notifications")
                    .document(claimed.json()["claim"]["id"]))
        snapshot = _wait_for(document.get, lambda s: s.exists)
    assert snapshot.to_dict()["title"] == "Welcome week"
