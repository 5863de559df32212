"""telemetry_query on the local stack, over HTTP through the gateway, as Grafana's Jaeger data
source and a dashboard call it: a tenant's read token and an operator's access token read the
same stored trace through the Jaeger API and the native API."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import sqlalchemy

pytestmark = pytest.mark.e2e
PASSWORD = "a long and unusual passphrase"


def _url(stack: dict[str, Any], path: str) -> str:
    return f"{stack['gateway_url']}/telemetry_query{path}"


def _store_trace(engine: sqlalchemy.Engine, tenant: str, service: str, trace: str,
                 start: datetime) -> None:
    from shared import telemetry_store

    telemetry_store.forget_known()
    with engine.begin() as conn:
        for table in telemetry_store.TABLES:
            telemetry_store.ensure_partitions(conn, table, {start.date()})
        for span, parent, offset, name in (("aaaaaaaaaaaaaaa1", None, 0, "GET /orders"),
                                           ("aaaaaaaaaaaaaaa2", "aaaaaaaaaaaaaaa1", 2, "db")):
            conn.execute(sqlalchemy.text(
                "INSERT INTO spans (trace_id, span_id, parent_span_id, start_time, duration_ns, "
                "tenant, service, name, kind, status_code, attributes, resource) VALUES "
                "(decode(:t, 'hex'), decode(:s, 'hex'), decode(:p, 'hex'), :start, :d, :tenant, "
                ":service, :name, :kind, 0, '{\"http.route\": \"/orders\"}', "
                "CAST(:resource AS jsonb))"),
                {"t": trace, "s": span, "p": parent,
                 "start": start + timedelta(milliseconds=offset), "d": 5_000_000,
                 "tenant": tenant, "service": service, "name": name,
                 "kind": 2 if parent is None else 3,
                 "resource": json.dumps({"service.name": service})})
        conn.execute(sqlalchemy.text(
            "INSERT INTO logs (log_id, time, tenant, service, severity_number, severity_text, "
            "body, trace_id, span_id) VALUES (decode(:id, 'hex'), :time, :tenant, :service, 17, "
            "'ERROR', 'order lookup failed', decode(:t, 'hex'), decode('aaaaaaaaaaaaaaa2', "
            "'hex'))"), {"id": uuid.uuid4().hex, "time": start + timedelta(milliseconds=3),
                         "tenant": tenant, "service": service, "t": trace})


def test_read_token_and_operator_read_a_trace_through_both_apis(stack: dict[str, Any]) -> None:
    from shared import telemetry_tokens

    tenant, service, trace = f"t-{uuid.uuid4().hex[:8]}", f"orders-{uuid.uuid4().hex[:6]}", \
        uuid.uuid4().hex
    start = datetime.now(UTC) - timedelta(minutes=1)
    engine = sqlalchemy.create_engine(stack["database_url"])
    try:
        _store_trace(engine, tenant, service, trace, start)
        with engine.begin() as conn:
            token = telemetry_tokens.create(conn, tenant, "read", "e2e dashboard")
        email = f"ops-{uuid.uuid4().hex[:8]}@example.com"
        signup = requests.post(f"{stack['gateway_url']}/auth/signup", timeout=10, json={
            "email": email, "password": PASSWORD, "display_name": "Ops"}).json()
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("UPDATE users SET roles = ARRAY['user','operator'] "
                                         "WHERE id = :id"), {"id": signup["user_id"]})
    finally:
        engine.dispose()
    reader = {"Authorization": f"Bearer {token}"}
    operator = {"Authorization": f"Bearer {signup['access_token']}"}

    services = requests.get(_url(stack, "/api/services"), headers=reader, timeout=10)
    assert services.status_code == 200 and services.json()["data"] == [service]
    assert "RateLimit" in services.headers and "X-Trace-Id" in services.headers
    found = requests.get(_url(stack, "/api/traces"), headers=reader, timeout=10, params={
        "service": service, "lookback": "1h", "limit": 20, "tags": '{"http.route":"/orders"}'})
    assert found.status_code == 200, found.text
    (jaeger,) = found.json()["data"]
    assert jaeger["traceID"] == trace and len(jaeger["spans"]) == 2
    child = next(s for s in jaeger["spans"] if s["spanID"] == "aaaaaaaaaaaaaaa2")
    assert child["references"] == [{"refType": "CHILD_OF", "traceID": trace,
                                    "spanID": "aaaaaaaaaaaaaaa1"}]
    by_id = requests.get(_url(stack, f"/api/traces/{trace}"), headers=operator, timeout=10)
    assert by_id.status_code == 200 and by_id.json()["data"][0]["traceID"] == trace
    missing = requests.get(_url(stack, f"/api/traces/{uuid.uuid4().hex}"), headers=reader,
                           timeout=10)
    assert missing.status_code == 404
    assert missing.json()["errors"] == [{"code": 404, "msg": "trace not found"}]

    native = requests.get(_url(stack, f"/v1/traces/{trace}"), headers=reader, timeout=10).json()
    assert [(s["name"], s["depth"]) for s in native["spans"]] == [("GET /orders", 0), ("db", 1)]
    assert [g["body"] for g in native["logs"]] == ["order lookup failed"]
    logs = requests.get(_url(stack, "/v1/logs"), headers=operator, timeout=10,
                        params={"q": "lookup", "level": "error", "tenant": tenant}).json()
    assert [g["traceId"] for g in logs["items"]] == [trace]
    overview = requests.get(_url(stack, "/v1/services"), headers=reader, timeout=10).json()
    assert [(s["service"], s["requests"]) for s in overview["items"]] == [(service, 1)]
    bad = requests.get(_url(stack, "/api/traces"), headers=reader, timeout=10,
                       params={"service": service, "minDuration": "soon"})
    assert bad.status_code == 400 and bad.json()["errors"][0]["code"] == 400
