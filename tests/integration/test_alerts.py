"""Alert rules on a real database: synthetic traffic inserted as spans, rolled up and evaluated
minute by minute with an injected clock; each default rule goes pending -> firing -> resolved
with exactly one `alert.transition` outbox row per transition. And the operator API."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy
from google.cloud import pubsub_v1

from emulators.bridge import ensure_topics
from infra.topology import TOPOLOGY
from shared import alerts, outbox, rollup, telemetry_store
from shared.events import Envelope
from tests.integration.conftest import PROJECT
from tests.integration.identity_fixtures import REPO, Identity

BASE = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)  # minute 0 of every scenario
MINUTE = timedelta(minutes=1)
STEADY = 20  # requests per minute of normal traffic
FAST_NS = 50_000_000  # 50 ms
SLOW_NS = 3_000_000_000  # 3 s

Transition = tuple[int, str, str]  # (minute index, from, to)


@dataclass(frozen=True)
class Minute:
    """One minute of a service's traffic: requests per operation, errors, slow requests."""

    requests: int = STEADY
    errors: int = 0
    slow: int = 0  # requests of 3 s, all on a second operation (the rest 50 ms)


class Traffic:
    def __init__(self, engine: sqlalchemy.Engine) -> None:
        self.engine = engine
        self.seen = 0  # outbox rows of telemetry.alerts read so far

    def insert(self, index: int, minute: Minute, service: str = "shop") -> None:
        start = BASE + index * MINUTE
        rows = []
        for n in range(minute.requests):
            slow = n < minute.slow
            rows.append({
                "t": os.urandom(16), "s": os.urandom(8),
                "start": start + timedelta(seconds=n * 59 / max(minute.requests, 1)),
                "d": SLOW_NS if slow else FAST_NS, "service": service,
                "name": "GET /report" if slow else "GET /cart",
                "status": 2 if n >= minute.requests - minute.errors else 0})
        if rows:
            with self.engine.begin() as conn:
                conn.execute(sqlalchemy.text(
                    "INSERT INTO spans (trace_id, span_id, start_time, duration_ns, service, "
                    "environment, name, kind, status_code) VALUES (:t, :s, :start, :d, "
                    ":service, 'prod', :name, 2, :status)"), rows)

    def tick(self, index: int) -> alerts.EvaluationResult:
        """The scheduled run once minute `index` has closed: roll up, then evaluate."""
        now = BASE + (index + 1) * MINUTE + timedelta(seconds=30)
        assert not rollup.roll_up(now).skipped
        return alerts.evaluate(now)

    def events(self) -> list[dict[str, Any]]:
        """The alert events written to the outbox since the last call."""
        with self.engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text(
                "SELECT id, payload FROM outbox WHERE topic = :topic AND id > :seen "
                "ORDER BY id"), {"topic": alerts.TOPIC, "seen": self.seen}).all()
        if rows:
            self.seen = rows[-1][0]
        found = []
        for _, payload in rows:
            envelope = Envelope.from_json(bytes(payload))
            assert envelope.type == "alert.transition"
            found.append(envelope.data | {"_id": envelope.id})
        return found

    def states(self) -> dict[tuple[str, str], str]:
        with self.engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text(
                "SELECT r.kind, s.service, s.state FROM alert_states s "
                "JOIN alert_rules r ON r.id = s.rule_id")).all()
        return {(r[0], r[1]): r[2] for r in rows}


@pytest.fixture
def traffic(platform_env: dict[str, str]) -> Iterator[Traffic]:
    engine = sqlalchemy.create_engine(platform_env["DATABASE_URL"])
    telemetry_store.forget_known()
    ensure_topics(TOPOLOGY, PROJECT, pubsub_v1.PublisherClient())
    with engine.begin() as conn:
        telemetry_store.ensure_partitions(conn, "spans", {
            (BASE - timedelta(days=1)).date(), BASE.date(), (BASE + timedelta(days=1)).date()})
    found = Traffic(engine)
    # 35 minutes of steady traffic before minute 0 (the spike rule's 30-minute baseline), then
    # the first run: it backfills the rollups and starts evaluating at minute -1.
    for index in range(-35, 0):
        found.insert(index, Minute())
    found.tick(-1)
    assert found.events() == []
    try:
        yield found
    finally:
        engine.dispose()


# Each default rule's scenario: the traffic of minutes 0.. and the transitions it must make.
SCENARIOS: dict[str, tuple[list[Minute], list[Transition]]] = {
    # Steady traffic in each of the 5 minutes before, then two silent minutes.
    "service_down": (
        [Minute(), Minute(), Minute(0), Minute(0), Minute(), Minute()],
        [(2, "ok", "pending"), (2, "pending", "firing"), (4, "firing", "resolved"),
         (5, "resolved", "ok")]),
    # 20% errors for three minutes: fires after two.
    "error_rate": (
        [Minute(), Minute(errors=4), Minute(errors=4), Minute(errors=4), Minute(), Minute()],
        [(1, "ok", "pending"), (2, "pending", "firing"), (4, "firing", "resolved"),
         (5, "resolved", "ok")]),
    # Half the requests take 3 s on one operation, half 50 ms on another: the merged p95 is
    # 3 s (averaging the two operations' p95 would say 1.5 s and never fire). Six minutes.
    "latency": (
        [Minute(), *[Minute(slow=10)] * 6, Minute(), Minute()],
        [(1, "ok", "pending"), (5, "pending", "firing"), (7, "firing", "resolved"),
         (8, "resolved", "ok")]),
    # 5x the 30-minute baseline for three minutes.
    "traffic_spike": (
        [Minute(), Minute(100), Minute(100), Minute(100), Minute(), Minute()],
        [(1, "ok", "pending"), (2, "pending", "firing"), (4, "firing", "resolved"),
         (5, "resolved", "ok")]),
}


@pytest.mark.parametrize("kind", list(SCENARIOS))
def test_each_default_rule_goes_pending_firing_resolved_once_per_transition(
        traffic: Traffic, kind: str) -> None:
    minutes, expected = SCENARIOS[kind]
    seen: list[Transition] = []
    for index, minute in enumerate(minutes):
        traffic.insert(index, minute)
        result = traffic.tick(index)
        assert result.minutes == 1
        events = traffic.events()
        assert result.transitions == len(events)
        assert {e["kind"] for e in events} <= {kind}, events  # no other rule moved
        seen += [(index, e["from"], e["to"]) for e in events]
        for e in events:
            assert e["minute"] == alerts.iso(BASE + index * MINUTE)
            assert (e["tenant"], e["service"]) == ("", "shop")
            assert set(e) - {"_id"} == {
                "rule_id", "rule_name", "kind", "tenant", "service", "from", "to", "minute",
                "value", "threshold", "started_at", "summary"}
        # A duplicate tick, and the same minute evaluated again: nothing changes.
        states = traffic.states()
        assert traffic.tick(index).minutes == 0
        with outbox.transaction() as tx:
            assert alerts.evaluate_minutes(tx, [BASE + index * MINUTE]) == 0
        assert traffic.events() == [] and traffic.states() == states
    assert seen == expected
    assert traffic.states() == {(kind, "shop"): "ok"}


def test_events_describe_the_transition(traffic: Traffic) -> None:
    for index, minute in enumerate(SCENARIOS["error_rate"][0][:3]):
        traffic.insert(index, minute)
        traffic.tick(index)
    pending, firing = traffic.events()
    assert firing["rule_id"] == "00000000-0000-4000-8000-0000000a1e02"
    assert firing["rule_name"] == "Error rate above 5%"
    assert (firing["from"], firing["to"]) == ("pending", "firing")
    assert firing["value"] == pytest.approx(0.2) and firing["threshold"] == 0.05
    assert firing["started_at"] == pending["minute"] == alerts.iso(BASE + MINUTE)
    assert "20.0%" in firing["summary"] and "shop" in firing["summary"]
    with traffic.engine.connect() as conn:
        row = conn.execute(sqlalchemy.text(
            "SELECT state, since, started_at, fired_at, last_value, last_evaluated_minute "
            "FROM alert_states")).one()
    assert row[0] == "firing" and row[1] == row[3] == BASE + 2 * MINUTE
    assert row[2] == BASE + MINUTE and row[5] == BASE + 2 * MINUTE


@pytest.mark.parametrize("kind", list(SCENARIOS))
def test_a_catch_up_run_makes_the_same_transitions_as_live_runs(
        traffic: Traffic, kind: str) -> None:
    minutes, expected = SCENARIOS[kind]
    for index, minute in enumerate(minutes):
        traffic.insert(index, minute)
    result = traffic.tick(len(minutes) - 1)  # every tick in between was lost
    assert result.minutes == len(minutes)
    events = traffic.events()
    assert [(e["minute"], e["from"], e["to"]) for e in events] == [
        (alerts.iso(BASE + index * MINUTE), source, target) for index, source, target in expected]


def test_a_disabled_rule_is_not_evaluated_and_a_scoped_rule_sees_its_service_only(
        traffic: Traffic) -> None:
    with traffic.engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE alert_rules SET enabled = false"))
        conn.execute(sqlalchemy.text(
            "INSERT INTO alert_rules (id, name, kind, service, params) VALUES "
            "('00000000-0000-4000-8000-00000000b001', 'cart errors', 'error_rate', 'cart', "
            "'{\"threshold\": 0.05, \"for_minutes\": 1, \"min_requests\": 10}')"))
    for index in range(2):
        traffic.insert(index, Minute(errors=10))
        traffic.insert(index, Minute(errors=10 if index == 0 else 0), service="cart")
        traffic.tick(index)
    assert [(e["service"], e["from"], e["to"]) for e in traffic.events()] == [
        ("cart", "ok", "pending"), ("cart", "pending", "firing"), ("cart", "firing", "resolved")]


def test_the_rollup_function_evaluates_the_rules_after_rolling_up(traffic: Traffic) -> None:
    from functions_framework import create_app

    client = create_app("rollup", str(REPO / "functions/rollup/main.py")).test_client()
    tick = {"message": {"data": base64.b64encode(b"{}").decode(), "messageId": "tick-1",
                        "attributes": {}, "publishTime": "2026-11-20T12:00:00Z"},
            "subscription": f"projects/{PROJECT}/subscriptions/rollup.rollup-tick"}
    assert client.post("/", json=tick).status_code == 204
    with traffic.engine.connect() as conn:
        cursors = dict(conn.execute(sqlalchemy.text(
            "SELECT name, last_minute FROM rollup_state")).all())
    # The real clock is days later: both catch up (at most 180 minutes a run), in step.
    assert cursors[alerts.CURSOR] == cursors[rollup.STATE] > BASE


# --- the operator API --------------------------------------------------------------------------


@dataclass
class Api:
    client: Any
    identity: Identity
    operator: dict[str, str]
    user: dict[str, str]


@pytest.fixture
def api(identity: Identity, monkeypatch: pytest.MonkeyPatch) -> Api:
    from functions_framework import create_app

    for name, value in TOPOLOGY.function("alerts").runtime_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RATE_LIMIT_BURST", "100000")
    client = create_app("alerts", str(REPO / "functions/alerts/main.py")).test_client()
    operator = identity.signup()
    identity.sql("UPDATE users SET roles = ARRAY['user','operator'] WHERE id = :id",
                 id=operator["user_id"])
    return Api(client, identity, identity.bearer(operator), identity.bearer(identity.signup()))


def test_only_operators_and_admins_manage_rules(api: Api) -> None:
    assert api.client.get("/rules").status_code == 401
    for path in ("/rules", "/alerts", "/rules/00000000-0000-4000-8000-0000000a1e01"):
        denied = api.client.get(path, headers=api.user)
        assert denied.status_code == 403 and denied.json["code"] == "missing_role"
        assert denied.mimetype == "application/problem+json"
    assert api.client.post("/rules", headers=api.user,
                           json={"name": "x", "kind": "latency"}).status_code == 403
    admin = api.identity.signup()
    api.identity.make_admin(admin)
    assert api.client.get("/rules", headers=api.identity.bearer(admin)).status_code == 200


def test_rules_crud(api: Api) -> None:
    client, headers = api.client, api.operator
    defaults = client.get("/rules", headers=headers).json["rules"]
    assert [r["kind"] for r in defaults] == ["service_down", "error_rate", "latency",
                                             "traffic_spike"]
    assert all(r["tenant"] is None and r["service"] is None and r["enabled"] for r in defaults)
    assert defaults[2]["params"] == {"threshold": 2000, "quantile": 0.95, "for_minutes": 5,
                                     "min_requests": 1}

    created = client.post("/rules", headers=headers, json={
        "name": "  Checkout errors ", "kind": "error_rate", "service": "checkout",
        "params": {"threshold": 0.02}})
    assert created.status_code == 201, created.json
    rule = created.json
    assert rule["name"] == "Checkout errors" and rule["service"] == "checkout"
    assert rule["params"] == {"threshold": 0.02, "for_minutes": 2, "min_requests": 10}
    assert client.get(f"/rules/{rule['id']}", headers=headers).json == rule

    changed = client.patch(f"/rules/{rule['id']}", headers=headers,
                           json={"params": {"for_minutes": 4}, "enabled": False})
    assert changed.status_code == 200
    assert changed.json["params"] == {"threshold": 0.02, "for_minutes": 4, "min_requests": 10}
    assert changed.json["enabled"] is False
    rekind = client.patch(f"/rules/{rule['id']}", headers=headers, json={"kind": "latency"})
    assert rekind.json["params"] == {"threshold": 2000, "quantile": 0.95, "for_minutes": 5,
                                     "min_requests": 1}

    assert client.delete(f"/rules/{rule['id']}", headers=headers).status_code == 204
    gone = client.get(f"/rules/{rule['id']}", headers=headers)
    assert gone.status_code == 404 and gone.json["code"] == "rule_not_found"
    assert client.delete(f"/rules/{rule['id']}", headers=headers).status_code == 404
    assert client.get("/rules/not-a-uuid", headers=headers).status_code == 404
    assert len(client.get("/rules", headers=headers).json["rules"]) == 4


@pytest.mark.parametrize("body", [
    {"name": "x"},
    {"name": "x", "kind": "bogus"},
    {"name": "   ", "kind": "latency"},
    {"name": "x", "kind": "latency", "params": {"threshold": -1}},
    {"name": "x", "kind": "latency", "params": {"multiplier": 3}},
    {"name": "x", "kind": "latency", "params": {"for_minutes": 2.5}},
    {"name": "x", "kind": "latency", "extra": 1},
    {"name": "x", "kind": "latency", "service": ""},
])
def test_bad_rules_are_422(api: Api, body: dict[str, Any]) -> None:
    answer = api.client.post("/rules", headers=api.operator, json=body)
    assert answer.status_code == 422, answer.json
    assert answer.mimetype == "application/problem+json"


def test_current_alerts_are_listed_and_filtered(api: Api, traffic: Traffic) -> None:
    for index, minute in enumerate(SCENARIOS["error_rate"][0][:3]):
        traffic.insert(index, minute)
        traffic.tick(index)
    client, headers = api.client, api.operator
    (firing,) = client.get("/alerts", headers=headers).json["alerts"]
    assert firing["state"] == "firing" and firing["kind"] == "error_rate"
    assert firing["service"] == "shop" and firing["tenant"] == ""
    assert firing["fired_at"] == alerts.iso(BASE + 2 * MINUTE)
    assert firing["last_value"] == pytest.approx(0.2)
    assert client.get("/alerts", headers=headers,
                      query_string={"state": "firing", "service": "shop"}).json["alerts"]
    assert client.get("/alerts", headers=headers,
                      query_string={"state": "pending"}).json["alerts"] == []
    assert client.get("/alerts", headers=headers,
                      query_string={"service": "other"}).json["alerts"] == []
    assert client.get("/alerts", headers=headers, query_string={
        "rule_id": firing["rule_id"]}).json["alerts"] == [firing]
    for bad in ({"state": "on fire"}, {"rule_id": "nope"}):
        answer = client.get("/alerts", headers=headers, query_string=bad)
        assert answer.status_code == 400 and answer.mimetype == "application/problem+json"
