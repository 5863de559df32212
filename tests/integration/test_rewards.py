"""Events and rewards through the real functions (`events`, `reward_claim`, `activity`) on a
real database, the Pub/Sub emulator and the Firestore emulator: exactly-once grants under
concurrency, retries and replays; budgets under contention; idempotent, order-independent
progress; approvals; the audit trail; role checks."""

from __future__ import annotations

import base64
import csv
import io
import itertools
import json
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from emulators import services
from shared.events import Envelope
from tests.integration.conftest import PROJECT
from tests.integration.identity_fixtures import PASSWORD, REPO, Identity

CONCURRENCY = 50
_addresses = itertools.count(1)


@pytest.fixture(scope="module")
def firestore_host(run_dir: Path) -> Iterator[str]:
    handle = services.start_firestore_emulator(run_dir, PROJECT)
    try:
        yield handle.host
    finally:
        handle.stop()


@dataclass
class Rewards:
    identity: Identity
    events: Any  # Flask test clients of the real functions
    claims: Any
    activity: Any
    operator: dict[str, str]

    def user(self, **signup: Any) -> tuple[dict[str, Any], dict[str, str]]:
        # Each sign-up from its own address: the auth rate limit is per client address.
        n = next(_addresses)
        resp = self.identity.auth.post("/signup", headers={
            "X-Forwarded-For": f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"}, json={
            "email": f"r-{uuid.uuid4().hex[:10]}@example.com", "password": PASSWORD,
            "display_name": "Ann"} | signup)
        assert resp.status_code == 201, resp.json
        return dict(resp.json), self.identity.bearer(resp.json)

    def role(self, roles: list[str]) -> dict[str, str]:
        account, who = self.user()
        self.identity.sql("UPDATE users SET roles = :r WHERE id = :id", r=roles,
                          id=account["user_id"])
        return who

    def event(self, **fields: Any) -> dict[str, Any]:
        now = datetime.now(UTC)
        body = {"title": "Spring festival", "starts_at": (now - timedelta(days=10)).isoformat(),
                "ends_at": (now + timedelta(days=10)).isoformat(), "status": "active",
                "rewards": [{"type": "points", "quantity": 100}]} | fields
        resp = self.events.post("/events", headers=self.operator, json=body)
        assert resp.status_code == 201, resp.json
        return dict(resp.json)

    def claim(self, who: dict[str, str], event_id: str, key: str | None = None) -> Any:
        return self.claims.post(f"/events/{event_id}/claims",
                                headers=who | {"Idempotency-Key": key or str(uuid.uuid4())})

    def deliver(self, envelope: Envelope) -> Any:
        body = {"message": {"data": base64.b64encode(envelope.to_json()).decode(),
                            "messageId": uuid.uuid4().hex, "attributes": {}},
                "subscription": "projects/p/subscriptions/activity"}
        return self.activity.post("/", json=body)

    def outbox(self, topic: str) -> list[Envelope]:
        return [Envelope.from_json(bytes(row[0])) for row in self.identity.sql(
            "SELECT payload FROM outbox WHERE topic = :t ORDER BY id", t=topic)]


@pytest.fixture
def rw(identity: Identity, firestore_host: str, monkeypatch: pytest.MonkeyPatch) -> Rewards:
    from functions_framework import create_app

    from shared import clients

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_host)
    monkeypatch.setenv("CURSOR_SECRET", "integration-cursor-secret-0123456789")
    # The per-caller rate limit (the identity fixture sets auth's) would answer most of the
    # concurrent requests of one user with 429 before they reach the claim logic under test.
    for name in ("RATE_LIMIT_CLASS", "RATE_LIMIT_RATE", "RATE_LIMIT_BURST"):
        monkeypatch.delenv(name, raising=False)
    clients.reset()

    def app(name: str) -> Any:
        return create_app(name, str(REPO / f"functions/{name}/main.py")).test_client()

    rewards = Rewards(identity, app("events"), app("reward_claim"), app("activity"), {})
    rewards.operator = rewards.role(["user", "operator"])
    return rewards


def _parallel(n: int, task: Callable[[int], Any]) -> list[Any]:
    gate = threading.Barrier(n)

    def run(i: int) -> Any:
        gate.wait()
        return task(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def _ledger(rw: Rewards, event_id: str) -> list[tuple[Any, ...]]:
    return rw.identity.sql(
        "SELECT l.claim_id, l.account, l.asset, l.amount FROM reward_ledger l "
        "JOIN reward_claims c ON c.id = l.claim_id WHERE c.event_id = :e", e=event_id)


def _remaining(rw: Rewards, event_id: str) -> int:
    ((remaining,),) = rw.identity.sql(
        "SELECT remaining FROM event_rewards WHERE event_id = :e", e=event_id)
    return int(remaining)


# --- exactly once -------------------------------------------------------------------------


@pytest.mark.parametrize("same_key", [True, False], ids=["same-key", "different-keys"])
def test_concurrent_claims_for_one_user_grant_exactly_once(rw: Rewards, same_key: bool) -> None:
    event = rw.event(rewards=[{"type": "points", "quantity": 100, "budget": 1000}])
    _, who = rw.user()
    key = str(uuid.uuid4())
    responses = _parallel(CONCURRENCY, lambda i: rw.claim(
        who, event["id"], key if same_key else f"k-{i}"))
    statuses = [r.status_code for r in responses]
    granted = [r for r in responses if r.status_code == 201]
    assert granted, statuses
    # One grant: every 201 is the same claim (a replay of the stored answer).
    assert {r.json["claim"]["id"] for r in granted} == {granted[0].json["claim"]["id"]}
    others = {(r.status_code, (r.json or {}).get("code")) for r in responses
              if r.status_code != 201}
    allowed = ({(409, "idempotency_in_progress")} if same_key
               else {(409, "claim_refused")})
    assert others <= allowed, others
    rows = rw.identity.sql("SELECT status FROM reward_claims WHERE event_id = :e",
                           e=event["id"])
    assert [s for (s,) in rows if s == "granted"] == ["granted"]
    ledger = _ledger(rw, event["id"])
    assert sorted(amount for *_, amount in ledger) == [-100, 100]  # balanced, paid once
    assert _remaining(rw, event["id"]) == 900
    assert len(rw.outbox("rewards.granted")) == 1
    wallet = rw.claims.get("/me/wallet", headers=who).json
    assert wallet == {"points": 100, "items": [], "coupons": []}
    if not same_key:  # every losing attempt is in the audit trail with its reason
        refused = rw.identity.sql("SELECT reasons FROM reward_claims WHERE event_id = :e "
                                  "AND status = 'refused'", e=event["id"])
        assert len(refused) == CONCURRENCY - 1
        assert all(r[0][0]["condition"] == "per_user_limit" for r in refused)


def test_budget_is_never_overspent_under_contention(rw: Rewards) -> None:
    event = rw.event(rewards=[{"type": "coupon", "name": "latte", "quantity": 2,
                               "budget": 20}])
    users = [rw.user()[1] for _ in range(30)]
    responses = _parallel(len(users), lambda i: rw.claim(users[i], event["id"]))
    granted = [r for r in responses if r.status_code == 201]
    refused = [r for r in responses if r.status_code == 409]
    assert len(granted) == 10 and len(refused) == 20
    assert all(r.json["code"] == "claim_refused"
               and r.json["reasons"][0]["condition"] == "budget" for r in refused)
    assert _remaining(rw, event["id"]) == 0
    ledger = _ledger(rw, event["id"])
    assert sum(a for _, account, _, a in ledger if account.startswith("user:")) == 20
    assert sum(a for *_, a in ledger) == 0
    audit = rw.identity.sql("SELECT status, count(*) FROM reward_claims WHERE event_id = :e "
                            "GROUP BY status ORDER BY status", e=event["id"])
    assert audit == [("granted", 10), ("refused", 20)]


def test_retry_and_replay_answer_the_same_grant(rw: Rewards) -> None:
    event = rw.event(rewards=[{"type": "points", "quantity": 5},
                              {"type": "item", "name": "badge", "quantity": 1}])
    other = rw.event()
    _, who = rw.user()
    key = str(uuid.uuid4())
    first = rw.claim(who, event["id"], key)
    assert first.status_code == 201 and first.json["claim"]["status"] == "granted"
    again = rw.claim(who, event["id"], key)
    assert again.status_code == 201 and again.json == first.json
    assert again.headers["Idempotent-Replayed"] == "true"
    reused = rw.claim(who, other["id"], key)
    assert reused.status_code == 422 and reused.json["code"] == "idempotency_key_reused"
    limit = rw.claim(who, event["id"])
    assert limit.status_code == 409 and limit.json["reasons"] == [
        {"condition": "per_user_limit", "current": 1, "required": 1}]
    missing = rw.claims.post(f"/events/{event['id']}/claims", headers=who)
    assert missing.status_code == 400 and missing.json["code"] == "idempotency_key_required"
    assert rw.claims.get("/me/wallet", headers=who).json == {
        "points": 5, "items": [{"name": "badge", "quantity": 1}], "coupons": []}


def test_a_crash_after_commit_is_answered_from_the_stored_result(
        rw: Rewards, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared import outbox

    event = rw.event()
    _, who = rw.user()
    key = str(uuid.uuid4())

    def killed(events: Any, wait: bool = True) -> Any:
        raise RuntimeError("instance killed after commit, before the response")

    # Right after the commit (a failing publish alone is logged and left to the relay).
    monkeypatch.setattr(outbox, "publish_after_commit", killed)
    lost = rw.claim(who, event["id"], key)
    assert lost.status_code == 500  # the client never saw the grant
    monkeypatch.undo()
    retried = rw.claim(who, event["id"], key)
    assert retried.status_code == 201 and retried.headers["Idempotent-Replayed"] == "true"
    assert rw.identity.sql("SELECT count(*) FROM reward_claims WHERE event_id = :e",
                           e=event["id"]) == [(1,)]
    assert retried.json["claim"]["status"] == "granted"
    # The event the crash did not publish is still in the outbox for the relay.
    assert rw.identity.sql("SELECT count(*) FROM outbox WHERE topic = 'rewards.granted' "
                           "AND published_at IS NULL") == [(1,)]


# --- conditions and progress ----------------------------------------------------------------


def _activity(user_id: str, base: datetime) -> list[Envelope]:
    """A month of a user's activity: logins (several a day), chat messages, characters."""
    events = []
    for day in range(5):
        for hour in (1, 9, 23):
            events.append(Envelope("user.logged_in", {"user_id": user_id, "session_id": "s"},
                                   occurred_at=(base + timedelta(days=day, hours=hour))
                                   .isoformat()))
    for i in range(7):
        events.append(Envelope("chat.turn_completed", {
            "user_id": user_id, "message_id": str(uuid.uuid4()),
            "conversation_id": str(uuid.uuid4()), "character_id": str(uuid.uuid4())},
            occurred_at=(base + timedelta(hours=i)).isoformat()))
    for _ in range(2):
        events.append(Envelope("character.created", {
            "owner_id": user_id, "character_id": str(uuid.uuid4()), "visibility": "public"},
            occurred_at=base.isoformat()))
    events.append(Envelope("activity.counted", {"user_id": user_id, "name": "quests",
                                                "amount": 3}, occurred_at=base.isoformat()))
    return events


def test_replayed_and_shuffled_activity_gives_identical_progress(rw: Rewards) -> None:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    event = rw.event(time_zone="Asia/Seoul", reset_hour=4, conditions=[
        {"type": "login_streak", "min": 5}, {"type": "chat_messages", "min": 7},
        {"type": "characters_created", "min": 2}, {"type": "counter", "name": "quests",
                                                   "min": 3}])
    ordered_account, ordered = rw.user()
    shuffled_account, shuffled = rw.user()
    base = today - timedelta(days=4)
    for envelope in _activity(ordered_account["user_id"], base):
        assert rw.deliver(envelope).status_code == 204
    replay = _activity(shuffled_account["user_id"], base) * 2  # every event twice
    random.Random(7).shuffle(replay)
    for envelope in replay:
        assert rw.deliver(envelope).status_code == 204

    def progress(who: dict[str, str]) -> list[dict[str, Any]]:
        resp = rw.events.get(f"/events/{event['id']}", headers=who)
        assert resp.status_code == 200
        return list(resp.json["progress"])

    assert progress(ordered) == progress(shuffled)
    assert [p["current"] for p in progress(shuffled)][1:] == [7, 2, 3]
    facts = rw.identity.sql("SELECT count(*) FROM activity_facts WHERE user_id = :u",
                            u=shuffled_account["user_id"])
    assert facts == [(15 + 7 + 2 + 1,)]


def test_unmet_conditions_are_refused_with_reasons_and_recorded(rw: Rewards) -> None:
    event = rw.event(conditions=[{"type": "chat_messages", "min": 3},
                                 {"type": "login_streak", "min": 2}])
    account, who = rw.user()
    now = datetime.now(UTC)
    for _ in range(2):
        rw.deliver(Envelope("chat.turn_completed", {"user_id": account["user_id"],
                                                    "message_id": str(uuid.uuid4())}))
    refused = rw.claim(who, event["id"])
    assert refused.status_code == 409 and refused.json["code"] == "claim_refused"
    assert refused.json["reasons"] == [
        {"condition": "chat_messages", "current": 2, "required": 3},
        {"condition": "login_streak", "current": 0, "required": 2}]
    listed = rw.events.get("/events", headers=who).json["items"]
    mine = next(e for e in listed if e["id"] == event["id"])
    assert mine["claimable"] is False and mine["my_claims"] == 0
    rw.deliver(Envelope("chat.turn_completed", {"user_id": account["user_id"],
                                                "message_id": str(uuid.uuid4())}))
    for days_ago in (1, 0):
        rw.deliver(Envelope("user.logged_in", {"user_id": account["user_id"]},
                            occurred_at=(now - timedelta(days=days_ago)).isoformat()))
    granted = rw.claim(who, event["id"])
    assert granted.status_code == 201, granted.json
    history = rw.claims.get("/me/claims", headers=who).json["items"]
    assert [c["status"] for c in history] == ["granted", "refused"]


def test_a_missed_day_resets_the_streak(rw: Rewards) -> None:
    event = rw.event(time_zone="America/New_York", conditions=[
        {"type": "login_streak", "min": 3}])
    account, who = rw.user()
    now = datetime.now(UTC)
    for days_ago in (4, 3, 2, 0):  # three in a row, then a gap yesterday
        rw.deliver(Envelope("user.logged_in", {"user_id": account["user_id"]},
                            occurred_at=(now - timedelta(days=days_ago)).isoformat()))
    progress = rw.events.get(f"/events/{event['id']}", headers=who).json["progress"]
    assert progress[0]["current"] == 1
    assert rw.claim(who, event["id"]).json["reasons"][0]["condition"] == "login_streak"


def test_event_window_and_status_are_respected(rw: Rewards) -> None:
    now = datetime.now(UTC)
    future = rw.event(starts_at=(now + timedelta(days=1)).isoformat(),
                      ends_at=(now + timedelta(days=2)).isoformat())
    _, who = rw.user()
    early = rw.claim(who, future["id"])
    assert early.status_code == 409
    assert [r["condition"] for r in early.json["reasons"]] == ["event_window"]
    current = rw.event()
    ended = rw.events.patch(f"/events/{current['id']}", headers=rw.operator,
                            json={"status": "ended"})
    assert ended.status_code == 200 and ended.json["status"] == "ended"
    late = rw.claim(who, current["id"])
    assert late.json["reasons"][0] == {"condition": "event_status", "current": "ended",
                                       "required": "active"}
    draft = rw.event(status="draft")
    assert rw.claim(who, draft["id"]).status_code == 404
    assert rw.events.get(f"/events/{draft['id']}", headers=who).status_code == 404
    assert rw.events.get(f"/events/{draft['id']}", headers=rw.operator).status_code == 200


def test_referrals_count_each_invitee_once(rw: Rewards) -> None:
    _, inviter = rw.user()
    event = rw.event(conditions=[{"type": "friends_invited", "min": 2}])
    code = rw.events.get("/me/referral-code", headers=inviter).json["referral_code"]
    assert rw.events.get("/me/referral-code", headers=inviter).json["referral_code"] == code
    for _ in range(2):
        rw.user(referral_code=code.lower())
    rw.user(referral_code="NOSUCHCODE")
    signups = rw.outbox("auth.signups")
    for envelope in signups + signups:  # every signup delivered twice
        assert rw.deliver(envelope).status_code == 204
    progress = rw.events.get(f"/events/{event['id']}", headers=inviter).json["progress"]
    assert progress[0]["current"] == 2
    assert rw.claim(inviter, event["id"]).status_code == 201


def test_suspended_accounts_cannot_claim(rw: Rewards) -> None:
    from shared import claims, errors, lifecycle

    event = rw.event()
    account, _ = rw.user()
    lifecycle.apply(Envelope("user.status_changed", {
        "user_id": account["user_id"], "status": "suspended", "version": 1}))
    with pytest.raises(errors.Forbidden) as refused:
        claims.claim(account["user_id"], event["id"], None)
    assert refused.value.code == "account_suspended"
    assert rw.identity.sql("SELECT status, reasons FROM reward_claims WHERE user_id = :u",
                           u=account["user_id"]) == [("refused", [
                               {"condition": "account_status", "current": "suspended",
                                "required": "active"}])]


# --- approval ---------------------------------------------------------------------------------


def test_approval_grants_exactly_once_and_rejection_releases(rw: Rewards) -> None:
    event = rw.event(requires_approval=True, rewards=[
        {"type": "coupon", "name": "cake", "quantity": 1, "budget": 2}])
    (a_account, a), (_, b) = rw.user(), rw.user()
    pending = rw.claim(a, event["id"])
    assert pending.status_code == 202 and pending.json["claim"]["status"] == "pending"
    claim_id = pending.json["claim"]["id"]
    assert rw.claims.get("/me/wallet", headers=a).json["coupons"] == []
    queue = rw.claims.get("/claims/pending", headers=rw.operator,
                          query_string={"event_id": event["id"]})
    assert [c["id"] for c in queue.json["items"]] == [claim_id]
    auditor = rw.role(["user", "auditor"])
    assert rw.claims.get("/claims/pending", headers=auditor).status_code == 403
    assert rw.claims.post(f"/claims/{claim_id}/approve", headers=auditor,
                          json={}).status_code == 403
    assert rw.claims.post(f"/claims/{claim_id}/approve", headers=a, json={}).status_code == 403
    approvals = _parallel(10, lambda i: rw.claims.post(
        f"/claims/{claim_id}/approve", headers=rw.operator, json={"note": "ok"}))
    assert {r.status_code for r in approvals} == {200}
    assert {r.json["status"] for r in approvals} == {"granted"}
    assert rw.claims.get("/me/wallet", headers=a).json["coupons"] == [
        {"name": "cake", "quantity": 1}]
    assert len([e for e in rw.outbox("rewards.granted")
                if e.data["claim_id"] == claim_id]) == 1
    assert rw.claims.post(f"/claims/{claim_id}/reject", headers=rw.operator,
                          json={}).json["code"] == "claim_not_pending"

    other = rw.claim(b, event["id"]).json["claim"]["id"]
    assert _remaining(rw, event["id"]) == 0
    rejected = rw.claims.post(f"/claims/{other}/reject", headers=rw.operator,
                              json={"note": "duplicate account"})
    assert rejected.status_code == 200 and rejected.json["status"] == "rejected"
    assert _remaining(rw, event["id"]) == 1
    assert rw.claim(b, event["id"]).status_code == 202  # the slot was released too
    assert len(rw.claims.get("/claims/pending", headers=rw.operator, query_string={
        "event_id": event["id"]}).json["items"]) == 1
    assert a_account["user_id"] in {row[0] for row in rw.identity.sql(
        "SELECT CAST(user_id AS text) FROM reward_claims WHERE status = 'granted'")}


# --- audit and roles -------------------------------------------------------------------------


def test_audit_search_pagination_and_csv_export(rw: Rewards) -> None:
    event = rw.event(conditions=[{"type": "chat_messages", "min": 1}])
    accounts = [rw.user() for _ in range(3)]
    for _, who in accounts:
        rw.claim(who, event["id"])
    started = datetime.now(UTC) - timedelta(minutes=5)
    auditor = rw.role(["user", "auditor"])
    seen, cursor = [], None
    while True:
        query = {"event_id": event["id"], "status": "refused", "limit": 2,
                 "from": started.isoformat()} | ({"cursor": cursor} if cursor else {})
        page = rw.claims.get("/claims", headers=auditor, query_string=query)
        assert page.status_code == 200, page.json
        seen += page.json["items"]
        if not (cursor := page.json["nextCursor"]):
            break
    assert len(seen) == 3 and {c["user_id"] for c in seen} == {
        a["user_id"] for a, _ in accounts}
    assert seen[0]["reasons"] == [{"condition": "chat_messages", "current": 0, "required": 1}]
    one = rw.claims.get("/claims", headers=auditor,
                        query_string={"user_id": accounts[0][0]["user_id"]}).json["items"]
    assert [c["user_id"] for c in one] == [accounts[0][0]["user_id"]]
    bad = rw.claims.get("/claims", headers=auditor, query_string={"status": "lost"})
    assert bad.status_code == 400 and bad.json["parameter"] == "status"

    export = rw.claims.get("/claims/export", headers=auditor,
                           query_string={"event_id": event["id"]}, buffered=False)
    assert export.status_code == 200 and export.mimetype == "text/csv"
    assert export.is_streamed
    rows = list(csv.DictReader(io.StringIO(b"".join(export.response).decode())))
    export.close()
    assert len(rows) == 3 and {r["status"] for r in rows} == {"refused"}
    assert json.loads(rows[0]["reasons"])[0]["condition"] == "chat_messages"


def test_export_streams_in_chunks(rw: Rewards) -> None:
    from shared import claims

    event = rw.event(conditions=[{"type": "chat_messages", "min": 1}])
    _, who = rw.user()
    for _ in range(7):
        rw.claim(who, event["id"])
    lines = list(claims.export_csv(claims.Filters(event_id=event["id"]), chunk=3))
    assert len(lines) == 1 + 7 and lines[0].startswith("id,event_id,user_id")
    assert len({line.split(",")[0] for line in lines[1:]}) == 7


def test_role_checks(rw: Rewards) -> None:
    account, user = rw.user()
    auditor = rw.role(["user", "auditor"])
    body = {"title": "x", "starts_at": "2026-01-01T00:00:00Z",
            "ends_at": "2027-01-01T00:00:00Z", "rewards": [{"type": "points", "quantity": 1}]}
    for who in (user, auditor):
        denied = rw.events.post("/events", headers=who, json=body)
        assert denied.status_code == 403 and denied.json["code"] == "missing_role"
    event = rw.event()
    assert rw.events.patch(f"/events/{event['id']}", headers=user,
                           json={"status": "ended"}).status_code == 403
    assert rw.claims.get("/claims", headers=user).status_code == 403
    assert rw.claims.get("/claims/export", headers=user).status_code == 403
    assert rw.claims.get("/claims", headers=rw.operator).status_code == 403
    assert rw.claims.get("/claims", headers=auditor).status_code == 200
    # /me/claims is always the caller's own: a user_id filter cannot widen it.
    other_account, other = rw.user()
    rw.claim(other, event["id"])
    mine = rw.claims.get("/me/claims", headers=user,
                         query_string={"user_id": other_account["user_id"]}).json["items"]
    assert mine == []
    assert rw.events.get("/events", headers=user,
                         query_string={"status": "draft"}).status_code == 403
    invalid = rw.events.post("/events", headers=rw.operator, json=body | {
        "conditions": [{"type": "teleport", "min": 1}]})
    assert invalid.status_code == 422 and invalid.json["errors"][0]["field"] == \
        "conditions[0].type"
    assert account["user_id"]


# --- notifications ---------------------------------------------------------------------------


def test_grant_notification_is_written_once(rw: Rewards) -> None:
    from shared import clients

    event = rw.event()
    account, who = rw.user()
    claim = rw.claim(who, event["id"]).json["claim"]
    (granted,) = [e for e in rw.outbox("rewards.granted") if e.data["claim_id"] == claim["id"]]
    for _ in range(3):  # redelivery
        assert rw.deliver(granted).status_code == 204
    feed = (clients.firestore_client().collection("users").document(account["user_id"])
            .collection("notifications"))
    docs = list(feed.stream())
    assert [d.id for d in docs] == [claim["id"]]
    assert docs[0].to_dict()["title"] == "Spring festival"
    assert docs[0].to_dict()["rewards"][0]["quantity"] == 100


@pytest.mark.parametrize(("zone", "reset_hour"), [("Asia/Seoul", 4), ("America/New_York", 4),
                                                  ("Etc/UTC", 0)])
def test_database_event_days_match_the_rule(rw: Rewards, zone: str, reset_hour: int) -> None:
    """The claim path computes event days in SQL; they must be the days `rewards.event_day`
    gives, across the reset hour and a daylight-saving change (New York, 2026-03-08)."""
    from zoneinfo import ZoneInfo

    from shared import db, reward_events, rewards

    event = rw.event(time_zone=zone, reset_hour=reset_hour,
                     starts_at="2026-03-01T00:00:00Z", ends_at="2026-04-01T00:00:00Z",
                     conditions=[{"type": "login_streak", "min": 1}])
    account, _ = rw.user()
    tz = ZoneInfo(zone)
    # A minute before the reset (the day before) and a minute after it (that day), on
    # separate days, so a wrong zone or reset hour shifts at least one of them.
    moments = [(datetime(2026, 3, d, reset_hour, 0, tzinfo=tz) + timedelta(minutes=shift))
               .astimezone(UTC) for d, shift in ((6, -1), (8, -1), (9, 1), (12, -1), (15, 1))]
    for moment in moments:
        rw.deliver(Envelope("user.logged_in", {"user_id": account["user_id"]},
                            occurred_at=moment.isoformat()))
    with db.transaction() as conn:
        context = reward_events.claim_context(conn, event["id"], account["user_id"])
    assert context is not None
    expected = {rewards.event_day(m, tz, reset_hour) for m in moments}
    assert context.progress.login_days == expected
    assert sorted(d.day for d in expected) == [5, 7, 9, 11, 15]
