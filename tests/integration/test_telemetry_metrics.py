"""`GET /v1/services/{service}/metrics` on a real database: closed minutes from the rollups, the
rest from raw spans, merged into one series whose percentiles come from merged sketches."""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy

from infra.topology import TOPOLOGY
from shared import rollup, telemetry_store
from tests.integration.identity_fixtures import REPO, Identity

MINUTE = timedelta(minutes=1)


@dataclass
class Metrics:
    client: Any
    identity: Identity
    operator: dict[str, str]

    def insert(self, start: datetime, duration_ns: int, *, name: str = "GET /cart",
               status: int = 0, service: str = "shop") -> None:
        self.identity.sql(
            "INSERT INTO spans (trace_id, span_id, start_time, duration_ns, service, "
            "environment, name, kind, status_code) VALUES (:t, :s, :start, :d, :service, "
            "'prod', :name, 2, :status)", t=os.urandom(16), s=os.urandom(8), start=start,
            d=duration_ns, service=service, name=name, status=status)

    def get(self, path: str, **query: Any) -> Any:
        return self.client.get(path, headers=self.operator, query_string=query)


@pytest.fixture
def metrics(identity: Identity, monkeypatch: pytest.MonkeyPatch) -> Metrics:
    from functions_framework import create_app

    for name, value in TOPOLOGY.function("telemetry_query").runtime_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RATE_LIMIT_BURST", "100000")
    client = create_app("telemetry_query",
                        str(REPO / "functions/telemetry_query/main.py")).test_client()
    now = datetime.now(UTC)
    telemetry_store.forget_known()
    with identity.engine.begin() as conn:
        telemetry_store.ensure_partitions(
            conn, "spans", {(now - timedelta(days=1)).date(), now.date(),
                            (now + timedelta(days=1)).date()})
    operator = identity.signup()
    identity.sql("UPDATE users SET roles = ARRAY['user','operator'] WHERE id = :id",
                 id=operator["user_id"])
    return Metrics(client, identity, identity.bearer(operator))


def lower_quantile(values: list[int], q: float) -> int:
    return sorted(values)[math.floor(q * (len(values) - 1))]


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def test_closed_minutes_from_rollups_and_the_tail_from_raw_spans(metrics: Metrics) -> None:
    rng = random.Random(5)
    first = datetime.now(UTC).replace(second=0, microsecond=0) - 10 * MINUTE
    durations: list[list[int]] = [[] for _ in range(11)]
    errors = [0] * 11
    for minute in range(11):  # ten closed minutes and the open one
        for _ in range(rng.randint(20, 80)):
            duration = round(rng.lognormvariate(16, 1))
            status = 2 if rng.random() < 0.2 else 0
            metrics.insert(first + minute * MINUTE + timedelta(seconds=rng.uniform(0, 59.9)),
                           duration, status=status)
            durations[minute].append(duration)
            errors[minute] += status == 2
        metrics.insert(first + minute * MINUTE, 1, name="GET /other")
    # Minutes first .. first+5 are rolled up; the rest is read from raw spans.
    done = rollup.roll_up(first + 6 * MINUTE + timedelta(seconds=1))
    assert done.end == first + 6 * MINUTE

    resp = metrics.get("/v1/services/shop/metrics", operation="GET /cart", step="5m",
                       **{"from": iso(first + timedelta(seconds=20)),
                          "to": iso(first + 11 * MINUTE)})
    assert resp.status_code == 200, resp.json
    body = resp.json
    assert body["from"] == iso(first).replace("Z", ".000000Z")
    assert body["stepSeconds"] == 300 and body["operation"] == "GET /cart"
    assert body["rolledUpUntil"] == iso(first + 6 * MINUTE).replace("Z", ".000000Z")
    assert len(body["points"]) == 3
    for index, point in enumerate(body["points"]):
        minutes = range(index * 5, min(index * 5 + 5, 11))
        union = [d for m in minutes for d in durations[m]]
        assert point["requests"] == len(union)
        assert point["errors"] == sum(errors[m] for m in minutes)
        seconds = len(minutes) * 60
        assert point["ratePerSecond"] == pytest.approx(len(union) / seconds, abs=1e-6)
        for name, q in (("p50Ms", 0.5), ("p90Ms", 0.9), ("p95Ms", 0.95), ("p99Ms", 0.99)):
            truth = lower_quantile(union, q) / 1e6
            assert abs(point[name] - truth) <= 0.01 * truth + 0.001, (index, name)

    # Without an operation: the whole service; a step of one minute, no traffic is null.
    whole = metrics.get("/v1/services/shop/metrics", step="1m",
                        **{"from": iso(first - 2 * MINUTE), "to": iso(first + 11 * MINUTE)})
    points = whole.json["points"]
    assert [p["requests"] for p in points] == [0, 0] + [len(d) + 1 for d in durations]
    assert points[0]["p95Ms"] is None and points[0]["errorRate"] == 0.0


def test_bad_steps_are_refused(metrics: Metrics) -> None:
    for step in ("90s", "0", "2d", "5x", "1m"):
        query = {"step": step}
        if step == "1m":  # 7 days at one minute is too many points
            end = datetime.now(UTC)
            query |= {"from": iso(end - timedelta(days=7)), "to": iso(end)}
        resp = metrics.get("/v1/services/shop/metrics", **query)
        assert resp.status_code == 400, step
        assert resp.json["code"] == "invalid_step"
    resp = metrics.get("/v1/services/shop/metrics")
    assert resp.status_code == 200 and resp.json["stepSeconds"] == 60
    assert len(resp.json["points"]) in (60, 61)


def test_read_tokens_see_only_their_tenant(metrics: Metrics) -> None:
    from shared import telemetry_tokens

    minute = datetime.now(UTC).replace(second=0, microsecond=0) - 3 * MINUTE
    metrics.insert(minute, 5_000)
    metrics.identity.sql("UPDATE spans SET tenant = 'acme'")
    metrics.insert(minute, 7_000)
    rollup.roll_up()
    with metrics.identity.engine.begin() as conn:
        acme = telemetry_tokens.create(conn, "acme", "read")
    query = {"from": iso(minute), "to": iso(minute + MINUTE), "step": "1m"}
    as_acme = metrics.client.get("/v1/services/shop/metrics", query_string=query,
                                 headers={"Authorization": f"Bearer {acme}"})
    assert [p["requests"] for p in as_acme.json["points"]] == [1]
    assert [p["requests"] for p in metrics.get("/v1/services/shop/metrics", **query)
            .json["points"]] == [2]
    with metrics.identity.engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT count(*) FROM rollups")).scalar() == 2


def test_jaeger_monitor_tab_api(metrics: Metrics) -> None:
    """`/api/metrics/*` as the Jaeger UI's monitor tab calls them: each point looks back
    `ratePer` (here 2 minutes) from its time, like Prometheus' rate()."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    first = now - 6 * MINUTE
    per_minute: list[list[int]] = []
    for minute in range(6):  # six closed minutes: 10 requests each, one of them an error
        durations = [(minute + 1) * 1_000_000 * (i + 1) for i in range(10)]
        for i, duration in enumerate(durations):
            metrics.insert(first + minute * MINUTE + timedelta(seconds=i), duration,
                           status=2 if i == 0 else 0,
                           name="GET /cart" if i % 2 else "POST /pay")
        per_minute.append(durations)
    rollup.roll_up(first + 4 * MINUTE + timedelta(seconds=1))  # half from rollups
    base = {"service": "shop", "endTs": int((now - MINUTE).timestamp() * 1000),
            "lookback": 3 * 60_000, "step": 60_000, "ratePer": 2 * 60_000}

    calls = metrics.get("/api/metrics/calls", **base)
    assert calls.status_code == 200, calls.json
    family = calls.json
    assert family["name"] == "service_call_rate" and family["type"] == "GAUGE"
    (series,) = family["metrics"]
    assert series["labels"] == [{"name": "service_name", "value": "shop"}]
    assert [p["gaugeValue"]["doubleValue"] for p in series["metricPoints"]] == [
        pytest.approx(20 / 120, abs=1e-6)] * 3
    assert series["metricPoints"][-1]["timestamp"] == (now - MINUTE).strftime(
        "%Y-%m-%dT%H:%M:%SZ")

    errors = metrics.get("/api/metrics/errors", **base).json
    assert errors["name"] == "service_error_rate"
    assert [p["gaugeValue"]["doubleValue"] for p in errors["metrics"][0]["metricPoints"]] == [
        pytest.approx(0.1, abs=1e-6)] * 3

    latencies = metrics.get("/api/metrics/latencies", quantile="0.95", **base).json
    assert latencies["name"] == "service_latencies"
    last = latencies["metrics"][0]["metricPoints"][-1]["gaugeValue"]["doubleValue"]
    union = per_minute[4] + per_minute[5]  # the last point's two-minute window
    truth = lower_quantile(union, 0.95) / 1e6
    assert abs(last - truth) <= 0.01 * truth

    grouped = metrics.get("/api/metrics/calls", groupByOperation="true", **base).json
    assert grouped["name"] == "service_operation_call_rate"
    assert [m["labels"][1]["value"] for m in grouped["metrics"]] == ["GET /cart", "POST /pay"]

    # Client spans are not requests: no series. Bad parameters: 400 with Jaeger's errors.
    client = metrics.get("/api/metrics/calls", spanKind="SPAN_KIND_CLIENT", **base).json
    assert client["metrics"] == []
    for bad in ({"quantile": "2"}, {"quantile": "x"}):
        resp = metrics.get("/api/metrics/latencies", **base | bad)
        assert resp.status_code == 400 and resp.json["errors"][0]["code"] == 400
    for bad in ({"service": ""}, {"spanKind": "SPAN_KIND_NOPE"}, {"lookback": "-5"},
                {"endTs": "yesterday"}, {"groupByOperation": "maybe"}):
        resp = metrics.get("/api/metrics/calls", **base | bad)
        assert resp.status_code == 400, bad
        assert "unable to parse param" in resp.json["errors"][0]["msg"]
    minstep = metrics.get("/api/metrics/minstep").json
    assert minstep["data"] == 60_000


def test_long_ranges_of_the_overview_and_ranking_come_from_rollups(metrics: Metrics) -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    first = now - 7 * timedelta(hours=1)
    durations = []
    for i in range(200):  # spread over seven hours, then rolled up
        duration = (i + 1) * 1_000_000
        metrics.insert(first + timedelta(minutes=2 * i), duration, status=2 if i < 10 else 0)
        durations.append(duration)
    moment = first + rollup.MAX_MINUTES * MINUTE  # the first run backfills MAX_MINUTES
    while moment < now - 30 * MINUTE:
        rollup.roll_up(moment)
        moment += rollup.MAX_MINUTES * MINUTE
    rollup.roll_up(now - 30 * MINUTE)
    # The raw spans of rolled-up minutes go: only the rollups can still answer for them.
    metrics.identity.sql("DELETE FROM spans WHERE start_time < :t", t=now - 31 * MINUTE)
    metrics.insert(now - 5 * MINUTE, 1_000_000)  # the raw tail the rollup has not reached
    window = {"from": iso(first - MINUTE), "to": iso(now)}
    overview = metrics.get("/v1/services", **window)
    assert overview.status_code == 200, overview.json
    (shop,) = overview.json["items"]
    # Rolled-up minutes from rollups, the later ones (and the extra span) from raw spans.
    assert shop["requests"] == len(durations) + 1 and shop["errors"] == 10
    truth = lower_quantile([*durations, 1_000_000], 0.95) / 1e6
    assert abs(shop["p95Ms"] - truth) <= 0.01 * truth
    ranking = metrics.get("/v1/services/shop/endpoints", **window).json
    assert [e["endpoint"] for e in ranking["items"]] == ["GET /cart"]
    assert ranking["items"][0]["requests"] == shop["requests"]
    # Whole hours come from the hourly merge: without their minute rows, the same answer.
    ((hours,),) = metrics.identity.sql("SELECT count(DISTINCT hour) FROM rollups_hourly")
    assert hours >= 5
    whole_hours_from = (first - MINUTE).replace(minute=0) + timedelta(hours=1)
    metrics.identity.sql(
        "DELETE FROM rollups WHERE minute >= :h AND "
        "minute < (SELECT max(hour) + interval '1 hour' FROM rollups_hourly)",
        h=whole_hours_from)
    again = metrics.get("/v1/services", **window).json["items"][0]
    assert again == shop
    # A short range is still answered from raw spans (only the tail is left there).
    short = metrics.get("/v1/services", **{"from": iso(now - 10 * MINUTE), "to": iso(now)})
    assert short.json["items"][0]["requests"] == 1
