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
