"""The telemetry_query function on a real database: spans and logs are inserted in the stored
format the writer produces, then read through the Jaeger API and the native API as operators,
admins and tenants' read tokens do."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy

from infra.topology import TOPOLOGY
from shared import telemetry_store, telemetry_tokens
from tests.integration.identity_fixtures import REPO, Identity

T1 = "0af7651916cd43dd8448eb211c80319c"
T2 = "4bf92f3577b34da6a3ce929d0e0e4736"
T3 = "11111111111111111111111111111111"
A, B, C = "b7ad6b7169203331", "00f067aa0ba902b7", "53995c3f42cd8ad8"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


@dataclass
class Telemetry:
    client: Any
    identity: Identity
    base: datetime
    operator: dict[str, str]

    def insert_span(self, trace: str, span: str, start: datetime, duration_ns: int, *,
                    service: str, name: str, parent: str | None = None, kind: int = 2,
                    status: int = 0, status_message: str = "", tenant: str = "",
                    environment: str = "prod", attributes: dict[str, Any] | None = None,
                    resource: dict[str, Any] | None = None, events: list[Any] | None = None,
                    links: list[Any] | None = None, scope: str = "") -> None:
        self.identity.sql(
            "INSERT INTO spans (trace_id, span_id, parent_span_id, start_time, duration_ns, "
            "tenant, service, environment, name, kind, status_code, status_message, attributes, "
            "resource, events, links, scope) VALUES (decode(:t, 'hex'), decode(:s, 'hex'), "
            "decode(:p, 'hex'), :start, :d, :tenant, :service, :env, :name, :kind, :status, "
            ":msg, CAST(:a AS jsonb), CAST(:r AS jsonb), CAST(:e AS jsonb), CAST(:l AS jsonb), "
            ":scope)",
            t=trace, s=span, p=parent, start=start, d=duration_ns, tenant=tenant, service=service,
            env=environment, name=name, kind=kind, status=status, msg=status_message,
            a=json.dumps(attributes or {}),
            r=json.dumps(resource or {"service.name": service}), e=json.dumps(events or []),
            l=json.dumps(links or []), scope=scope)

    def insert_log(self, log_id: str, time: datetime, body: str, *, service: str,
                   severity: int = 9, severity_text: str = "INFO", trace: str | None = None,
                   span: str | None = None, tenant: str = "") -> None:
        self.identity.sql(
            "INSERT INTO logs (log_id, time, observed_time, tenant, service, environment, "
            "severity_number, severity_text, body, trace_id, span_id, attributes, resource) "
            "VALUES (decode(:id, 'hex'), :time, :time, :tenant, :service, 'prod', :sev, :text, "
            ":body, decode(:t, 'hex'), decode(:s, 'hex'), '{}', '{}')",
            id=log_id, time=time, tenant=tenant, service=service, sev=severity,
            text=severity_text, body=body, t=trace, s=span)

    def get(self, path: str, who: dict[str, str] | None = None, **query: Any) -> Any:
        return self.client.get(path, headers=self.operator if who is None else who,
                               query_string=query)


@pytest.fixture
def tel(identity: Identity, monkeypatch: pytest.MonkeyPatch) -> Telemetry:
    from functions_framework import create_app

    for name, value in TOPOLOGY.function("telemetry_query").runtime_env().items():
        monkeypatch.setenv(name, value)
    # Many requests from one caller per test: this is not a rate-limit test.
    monkeypatch.setenv("RATE_LIMIT_BURST", "100000")
    client = create_app("telemetry_query",
                        str(REPO / "functions/telemetry_query/main.py")).test_client()
    now = datetime.now(UTC)
    base = (now - timedelta(minutes=10)).replace(microsecond=123456)
    telemetry_store.forget_known()  # a fresh database per test
    with identity.engine.begin() as conn:
        for table in telemetry_store.TABLES:
            telemetry_store.ensure_partitions(
                conn, table, {(now - timedelta(days=d)).date() for d in range(3)} | {now.date()})
    operator = identity.signup()
    identity.sql("UPDATE users SET roles = ARRAY['user','operator'] WHERE id = :id",
                 id=operator["user_id"])
    tel = Telemetry(client, identity, base, identity.bearer(operator))
    _checkout_trace(tel)
    return tel


def _checkout_trace(tel: Telemetry) -> None:
    """frontend GET /checkout (A) -> frontend call payments (B) -> payments POST /charge (C,
    failed, linked to T2); an error log on C and an unrelated info log."""
    base = tel.base
    tel.insert_span(T1, A, base, 120_000_000, service="frontend", name="GET /checkout",
                    attributes={"http.route": "/checkout", "http.status_code": 200,
                                "retry": True, "ratio": 0.5, "list": ["a", "b"], "big": 2**60},
                    resource={"service.name": "frontend", "host.name": "web-1"},
                    events=[{"name": "cache miss", "time_unix_nano": micros(base) * 1000 + 1_500,
                             "attributes": {"key": "user:1"}}],
                    scope="io.opentelemetry.flask")
    tel.insert_span(T1, B, base + timedelta(milliseconds=5), 80_000_000, service="frontend",
                    name="call payments", parent=A, kind=3,
                    resource={"service.name": "frontend", "host.name": "web-1"})
    tel.insert_span(T1, C, base + timedelta(milliseconds=10), 60_000_000, service="payments",
                    name="POST /charge", parent=B, status=2, status_message="card declined",
                    attributes={"payment.provider": "visa"},
                    resource={"service.name": "payments", "host.name": "pay-1"},
                    links=[{"trace_id": T2, "span_id": A, "attributes": {}}])
    tel.insert_log("aa" * 16, base + timedelta(milliseconds=20), "card declined for order 42",
                   service="payments", severity=17, severity_text="ERROR", trace=T1, span=C)
    tel.insert_log("bb" * 16, base + timedelta(milliseconds=30), "user logged in",
                   service="frontend")


def _jaeger_span(trace: dict[str, Any], span_id: str) -> dict[str, Any]:
    return next(s for s in trace["spans"] if s["spanID"] == span_id)


def _tags(span: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    return {t["key"]: (t["type"], t["value"]) for t in span["tags"]}


# --- Jaeger API ----------------------------------------------------------------------------


def test_jaeger_trace_by_id(tel: Telemetry) -> None:
    resp = tel.get(f"/api/traces/{T1}")
    assert resp.status_code == 200, resp.json
    body = resp.json
    assert (body["total"], body["limit"], body["offset"], body["errors"]) == (0, 0, 0, None)
    (trace,) = body["data"]
    assert trace["traceID"] == T1 and len(trace["spans"]) == 3
    a, b, c = (_jaeger_span(trace, s) for s in (A, B, C))
    assert a["references"] == []
    assert b["references"] == [{"refType": "CHILD_OF", "traceID": T1, "spanID": A}]
    assert c["references"] == [{"refType": "CHILD_OF", "traceID": T1, "spanID": B},
                               {"refType": "FOLLOWS_FROM", "traceID": T2, "spanID": A}]
    assert a["startTime"] == micros(tel.base) and a["duration"] == 120_000
    assert c["startTime"] == micros(tel.base) + 10_000 and c["duration"] == 60_000
    assert a["operationName"] == "GET /checkout" and a["flags"] == 1
    tags = _tags(a)
    assert tags["http.status_code"] == ("int64", 200)
    assert tags["retry"] == ("bool", True) and tags["ratio"] == ("float64", 0.5)
    assert tags["list"] == ("string", '["a","b"]') and tags["big"] == ("int64", str(2**60))
    assert tags["span.kind"] == ("string", "server")
    assert tags["otel.scope.name"] == ("string", "io.opentelemetry.flask")
    assert "error" not in tags
    assert _tags(b)["span.kind"] == ("string", "client")
    c_tags = _tags(c)
    assert c_tags["error"] == ("bool", True) and c_tags["otel.status_code"] == ("string", "ERROR")
    assert c_tags["otel.status_description"] == ("string", "card declined")
    assert a["logs"] == [{"timestamp": micros(tel.base) + 1, "fields": [
        {"key": "event", "type": "string", "value": "cache miss"},
        {"key": "key", "type": "string", "value": "user:1"}]}]
    processes = trace["processes"]
    assert a["processID"] == b["processID"] != c["processID"]
    assert processes[a["processID"]] == {
        "serviceName": "frontend", "tags": [{"key": "host.name", "type": "string",
                                             "value": "web-1"}]}
    assert processes[c["processID"]]["serviceName"] == "payments"
    assert set(processes) == {"p1", "p2"}


def test_jaeger_unknown_trace_and_bad_ids(tel: Telemetry) -> None:
    resp = tel.get(f"/api/traces/{'ab' * 16}")
    assert resp.status_code == 404
    body = resp.json
    assert {k: body[k] for k in ("data", "total", "limit", "offset", "errors")} == {
        "data": None, "total": 0, "limit": 0, "offset": 0,
        "errors": [{"code": 404, "msg": "trace not found"}]}
    assert body["code"] == "trace_not_found"  # and still a problem+json body
    for bad_id in ("not-hex-at-all-not-hex-at-all-00", "abcd", "0" * 33, "zz" * 16):
        resp = tel.get(f"/api/traces/{bad_id}")
        assert resp.status_code == 400, bad_id
        assert resp.json["errors"][0]["code"] == 400 and resp.json["code"] == "invalid_id"
    # A 64-bit Jaeger id is the low half of a 128-bit one.
    assert tel.get(f"/api/traces/{T3[16:]}").status_code == 404


def test_jaeger_services_and_operations(tel: Telemetry) -> None:
    resp = tel.get("/api/services")
    assert resp.json == {"data": ["frontend", "payments"], "total": 2, "limit": 0, "offset": 0,
                         "errors": None}
    resp = tel.get("/api/services/frontend/operations")
    assert resp.json["data"] == ["GET /checkout", "call payments"]
    assert resp.json["total"] == 2
    resp = tel.get("/api/operations", service="frontend")
    assert resp.json["data"] == [{"name": "GET /checkout", "spanKind": "server"},
                                 {"name": "call payments", "spanKind": "client"}]
    resp = tel.get("/api/operations", service="frontend", spanKind="client")
    assert resp.json["data"] == [{"name": "call payments", "spanKind": "client"}]
    assert tel.get("/api/operations").status_code == 400
    assert tel.get("/api/operations", service="frontend", spanKind="sideways").status_code == 400
    assert tel.get("/api/services/nobody/operations").json["data"] == []


def _trace_ids(resp: Any) -> list[str]:
    assert resp.status_code == 200, resp.json
    return [t["traceID"] for t in resp.json["data"]]


def test_jaeger_search(tel: Telemetry) -> None:
    for i in range(6):
        tel.insert_span(f"{i:032x}", A, tel.base - timedelta(seconds=i + 1), 1_000_000,
                        service="frontend", name="GET /health")
    start, end = micros(tel.base - timedelta(minutes=5)), micros(tel.base + timedelta(minutes=5))
    window = {"start": start, "end": end}
    found = tel.get("/api/traces", service="frontend", **window)
    traces = found.json["data"]
    assert _trace_ids(found)[0] == T1 and len(traces) == 7
    assert len(traces[0]["spans"]) == 3  # the whole trace, payments' span included
    assert found.json["errors"] is None
    assert _trace_ids(tel.get("/api/traces", service="frontend", limit=2, **window)) == [
        T1, f"{0:032x}"]
    assert _trace_ids(tel.get("/api/traces", service="payments", operation="POST /charge",
                              **window)) == [T1]
    assert _trace_ids(tel.get("/api/traces", service="frontend", operation="nope",
                              **window)) == []
    tags = json.dumps({"payment.provider": "visa"})
    assert _trace_ids(tel.get("/api/traces", service="payments", tags=tags, **window)) == [T1]
    tags = json.dumps({"payment.provider": "amex"})
    assert _trace_ids(tel.get("/api/traces", service="payments", tags=tags, **window)) == []
    assert _trace_ids(tel.get("/api/traces", service="payments", tags="error=true",
                              **window)) == [T1]
    assert _trace_ids(tel.get("/api/traces", service="frontend",
                              tags='host.name="web-1" http.status_code=200', **window)) == [T1]
    assert _trace_ids(tel.get("/api/traces", service="frontend", tag="http.route:/checkout",
                              **window)) == [T1]
    assert _trace_ids(tel.get("/api/traces", service="frontend", minDuration="100ms",
                              **window)) == [T1]
    assert _trace_ids(tel.get("/api/traces", service="frontend", minDuration="0.2s",
                              **window)) == []
    assert _trace_ids(tel.get("/api/traces", service="frontend", minDuration="50ms",
                              maxDuration="90000us", **window)) == [T1]  # span B: 80 ms
    assert len(_trace_ids(tel.get("/api/traces", service="frontend", maxDuration="2ms",
                                  **window))) == 6
    later = {"start": micros(tel.base + timedelta(seconds=1)), "end": end}
    assert _trace_ids(tel.get("/api/traces", service="frontend", **later)) == []
    by_id = tel.get("/api/traces", traceID=[T1, T3])
    assert _trace_ids(by_id) == [T1]
    assert by_id.json["errors"] == [{"code": 404, "msg": "trace not found", "traceID": T3}]
    # The Jaeger UI sends lookback with start/end; alone it sets the range.
    assert _trace_ids(tel.get("/api/traces", service="payments", lookback="1h")) == [T1]


def test_jaeger_dependencies(tel: Telemetry) -> None:
    """Links between services from parent spans in another service, counted, per tenant."""
    base = tel.base
    # A second trace: frontend -> payments -> ledger (and a call inside payments).
    tel.insert_span(T2, A, base + timedelta(seconds=1), 9_000_000, service="frontend",
                    name="GET /cart")
    tel.insert_span(T2, B, base + timedelta(seconds=1, milliseconds=1), 8_000_000,
                    service="payments", name="POST /charge", parent=A)
    tel.insert_span(T2, C, base + timedelta(seconds=1, milliseconds=2), 1_000_000,
                    service="ledger", name="INSERT entry", parent=B)
    tel.insert_span(T2, "c" * 16, base + timedelta(seconds=1, milliseconds=3), 1_000_000,
                    service="payments", name="validate", parent=B)
    # Another tenant's call, and a span whose parent is not stored (no link).
    tel.insert_span(T3, A, base, 5_000_000, service="acme-api", name="GET /", tenant="acme")
    tel.insert_span(T3, B, base, 1_000_000, service="acme-db", name="SELECT", parent=A,
                    tenant="acme")
    tel.insert_span(T3, C, base, 1_000_000, service="orphan", name="x", parent="d" * 16)

    end = str(micros(datetime.now(UTC)) // 1000)
    resp = tel.get("/api/dependencies", endTs=end, lookback="3600000")
    assert resp.status_code == 200, resp.json
    assert resp.json["data"] == [
        {"parent": "acme-api", "child": "acme-db", "callCount": 1},
        {"parent": "frontend", "child": "payments", "callCount": 2},
        {"parent": "payments", "child": "ledger", "callCount": 1}]
    assert resp.json["total"] == 3 and resp.json["errors"] is None
    # Jaeger's service filter keeps the links touching it; the defaults are now and 24 h.
    assert tel.get("/api/dependencies", service="ledger").json["data"] == [
        {"parent": "payments", "child": "ledger", "callCount": 1}]
    assert [d["parent"] for d in tel.get("/api/dependencies", tenant="acme").json["data"]] == [
        "acme-api"]
    with tel.identity.engine.begin() as conn:
        acme = telemetry_tokens.create(conn, "acme", "read")
    mine = tel.get("/api/dependencies", {"Authorization": f"Bearer {acme}"}).json["data"]
    assert mine == [{"parent": "acme-api", "child": "acme-db", "callCount": 1}]
    # A window that ends before the spans has none.
    before = str(micros(base - timedelta(minutes=1)) // 1000)
    assert tel.get("/api/dependencies", endTs=before, lookback="60000").json["data"] == []
    for query in ({"lookback": "soon"}, {"lookback": "0"}, {"endTs": "-1"},
                  {"lookback": str(8 * 86_400_000)}):
        resp = tel.get("/api/dependencies", **query)
        assert resp.status_code == 400, query
        assert resp.json["errors"][0]["code"] == 400 and resp.json["data"] is None


@pytest.mark.parametrize(("query", "code"), [
    ({"service": "frontend", "minDuration": "abc"}, "invalid_duration"),
    ({"service": "frontend", "maxDuration": "10"}, "invalid_duration"),
    ({"service": "frontend", "minDuration": "-5ms"}, "invalid_duration"),
    ({"service": "frontend", "minDuration": "2s", "maxDuration": "1s"}, "invalid_duration"),
    ({"service": "frontend", "tags": "{bad json"}, "invalid_tags"),
    ({"service": "frontend", "tags": '{"k": {"nested": 1}}'}, "invalid_tags"),
    ({"service": "frontend", "tag": "novalue"}, "invalid_tags"),
    ({"service": "frontend", "start": "200", "end": "100"}, "invalid_range"),
    ({"service": "frontend", "start": "yesterday"}, "invalid_time"),
    ({"service": "frontend", "limit": "many"}, "invalid_limit"),
    ({"traceID": "xyz"}, "invalid_id"),
    ({}, "missing_parameter"),
])
def test_jaeger_bad_parameters(tel: Telemetry, query: dict[str, str], code: str) -> None:
    resp = tel.get("/api/traces", **query)
    assert resp.status_code == 400, resp.json
    assert resp.json["code"] == code
    assert resp.json["data"] is None and resp.json["errors"][0]["code"] == 400
    assert resp.json["errors"][0]["msg"] == resp.json["detail"]


# --- native API ----------------------------------------------------------------------------


def test_native_trace_in_tree_order_with_logs(tel: Telemetry) -> None:
    # A late sibling of B under A, started after C: tree order puts it after B's subtree.
    tel.insert_span(T1, "1234567890abcdef", tel.base + timedelta(milliseconds=50), 1_000_000,
                    service="frontend", name="render", parent=A, kind=1)
    resp = tel.get(f"/v1/traces/{T1}")
    assert resp.status_code == 200, resp.json
    body = resp.json
    assert [(s["spanId"], s["depth"]) for s in body["spans"]] == [
        (A, 0), (B, 1), (C, 2), ("1234567890abcdef", 1)]
    assert body["spanCount"] == 4 and body["services"] == ["frontend", "payments"]
    assert body["durationNs"] == 120_000_000
    c = body["spans"][2]
    assert (c["status"], c["kind"], c["parentSpanId"]) == ("error", "server", B)
    assert c["startTime"].endswith("Z") and c["durationNs"] == 60_000_000
    assert [g["body"] for g in body["logs"]] == ["card declined for order 42"]
    assert body["logs"][0]["spanId"] == C and body["logs"][0]["severityText"] == "ERROR"
    assert tel.get(f"/v1/traces/{T3}").status_code == 404
    for bad in ("abc", "zz" * 16, T1[:16]):
        resp = tel.get(f"/v1/traces/{bad}")
        assert resp.status_code == 400 and resp.json["code"] == "invalid_id"
        assert "errors" not in resp.json  # native errors are plain problem+json


def test_span_search_filters(tel: Telemetry) -> None:
    def names(**query: Any) -> list[str]:
        resp = tel.get("/v1/spans", **query)
        assert resp.status_code == 200, resp.json
        return [s["name"] for s in resp.json["items"]]

    assert names() == ["POST /charge", "call payments", "GET /checkout"]
    assert names(service="payments") == ["POST /charge"]
    assert names(kind="client") == ["call payments"]
    assert names(status="error") == ["POST /charge"]
    assert names(name="GET /checkout", environment="prod") == ["GET /checkout"]
    assert names(environment="staging") == []
    assert names(min_duration="70ms", max_duration="100ms") == ["call payments"]
    assert names(trace_id=T1, parent_id=B) == ["POST /charge"]
    assert names(parent_id="root") == ["GET /checkout"]
    assert names(sort="duration", order="asc") == ["POST /charge", "call payments",
                                                   "GET /checkout"]
    from_ = (tel.base + timedelta(milliseconds=1)).isoformat()
    assert names(**{"from": from_}) == ["POST /charge", "call payments"]
    assert names(**{"to": tel.base.isoformat()}) == []
    for query, code in (({"kind": "weird"}, "invalid_parameter"),
                        ({"min_duration": "fast"}, "invalid_duration"),
                        ({"trace_id": "abc"}, "invalid_id"), ({"parent_id": "x"}, "invalid_id"),
                        ({"sort": "name"}, "invalid_sort"), ({"order": "up"}, "invalid_sort"),
                        ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
                         "invalid_range"),
                        ({"from": "2025-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
                         "invalid_range"),
                        ({"from": "last tuesday"}, "invalid_time"),
                        ({"limit": "0"}, "invalid_limit"), ({"cursor": "junk"}, "invalid_cursor")):
        resp = tel.get("/v1/spans", **query)
        assert resp.status_code == 400 and resp.json["code"] == code, (query, resp.json)


@pytest.mark.parametrize(("sort", "order"), [("start_time", "desc"), ("duration", "asc")])
def test_span_pagination_is_stable_under_inserts(tel: Telemetry, sort: str, order: str) -> None:
    for i in range(25):
        tel.insert_span(f"{i + 1:032x}", A, tel.base - timedelta(seconds=i + 1),
                        (i % 7 + 1) * 1_000_000, service="pager", name=f"op {i}")
    expected = [s["name"] for s in tel.get("/v1/spans", service="pager", sort=sort, order=order,
                                           limit=100).json["items"]]
    assert len(expected) == 25
    seen: list[str] = []
    cursor: str | None = None
    for page_number in range(10):
        query: dict[str, Any] = {"service": "pager", "sort": sort, "order": order, "limit": 10}
        resp = tel.get("/v1/spans", **query, **({"cursor": cursor} if cursor else {}))
        assert resp.status_code == 200, resp.json
        seen += [s["name"] for s in resp.json["items"]]
        cursor = resp.json["nextCursor"]
        if page_number == 0:  # new spans arrive while the client pages: newer than page one
            for j in range(5):
                tel.insert_span(f"{100 + j:032x}", A, tel.base + timedelta(seconds=j + 1),
                                900_000_000, service="pager", name=f"new {j}")
        if not cursor:
            break
    if sort == "start_time":
        assert seen == expected  # newer than page one: not in it; no duplicates, no gaps
    else:
        # Durations ascending: the new spans are in the range the first page fixed and slower
        # than every old one, so they come after them, once each.
        assert seen == expected + [f"new {j}" for j in range(5)]
    other = tel.get("/v1/spans", service="pager", sort="duration", order="desc",
                    cursor=tel.get("/v1/spans", service="pager", sort=sort, order=order,
                                   limit=10).json["nextCursor"])
    if (sort, order) != ("duration", "desc"):
        assert other.status_code == 400 and other.json["code"] == "invalid_cursor"


def test_log_search(tel: Telemetry) -> None:
    tel.insert_log("cc" * 16, datetime.now(UTC) - timedelta(minutes=40), "declined long ago",
                   service="payments", severity=17, severity_text="ERROR")

    def bodies(**query: Any) -> list[str]:
        resp = tel.get("/v1/logs", **query)
        assert resp.status_code == 200, resp.json
        return [g["body"] for g in resp.json["items"]]

    assert bodies() == ["user logged in", "card declined for order 42"]  # last 15 minutes
    assert bodies(q="declined") == ["card declined for order 42"]
    assert bodies(q="DECLINED order") == ["card declined for order 42"]
    assert bodies(q="declined refunded") == []
    assert bodies(level="error") == ["card declined for order 42"]
    assert bodies(level="17") == ["card declined for order 42"]
    assert bodies(level="info") == ["user logged in", "card declined for order 42"]
    assert bodies(trace_id=T1) == bodies(span_id=C) == ["card declined for order 42"]
    assert bodies(service="frontend") == ["user logged in"]
    hour = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert bodies(q="declined", **{"from": hour}) == ["card declined for order 42",
                                                      "declined long ago"]
    first = tel.get("/v1/logs", limit=1, **{"from": hour})
    assert len(first.json["items"]) == 1 and first.json["nextCursor"]
    rest = tel.get("/v1/logs", limit=5, cursor=first.json["nextCursor"])
    assert [g["body"] for g in rest.json["items"]] == ["card declined for order 42",
                                                       "declined long ago"]
    for query in ({"level": "loud"}, {"level": "30"}, {"trace_id": "12"}, {"span_id": T1}):
        assert tel.get("/v1/logs", **query).status_code == 400, query


def _stats_data(tel: Telemetry) -> None:
    """stats-svc: GET /a 20 requests of 1..20 ms (2 failed), GET /b 10 of 100 ms (5 failed),
    plus internal child spans that are not requests."""
    for i in range(20):
        trace = f"a{i:031x}"
        tel.insert_span(trace, A, tel.base + timedelta(seconds=i), (i + 1) * 1_000_000,
                        service="stats-svc", name="GET /a", status=2 if i < 2 else 1)
        tel.insert_span(trace, B, tel.base + timedelta(seconds=i), 999_000_000,
                        service="stats-svc", name="db query", parent=A, kind=1, status=2)
    for i in range(10):
        tel.insert_span(f"b{i:031x}", A, tel.base + timedelta(seconds=i), 100_000_000,
                        service="stats-svc", name="GET /b", status=2 if i % 2 else 0)


def test_services_overview_and_endpoint_ranking(tel: Telemetry) -> None:
    _stats_data(tel)
    resp = tel.get("/v1/services")
    assert resp.status_code == 200, resp.json
    by_service = {s["service"]: s for s in resp.json["items"]}
    stats = by_service["stats-svc"]
    assert (stats["requests"], stats["errors"]) == (30, 7)
    assert stats["errorRate"] == pytest.approx(7 / 30, abs=1e-6)
    # percentile_cont over 1..20 ms and ten 100 ms: position 0.95 * 29 = 27.55 -> 100 ms.
    assert stats["p95Ms"] == pytest.approx(100.0)
    assert by_service["frontend"]["requests"] == 1  # GET /checkout; B is a client span
    assert by_service["payments"]["requests"] == 1 and by_service["payments"]["errors"] == 1
    ranking = tel.get("/v1/services/stats-svc/endpoints", sort="p95", order="asc")
    assert ranking.status_code == 200, ranking.json
    items = ranking.json["items"]
    assert [e["endpoint"] for e in items] == ["GET /a", "GET /b"]
    a, b = items
    assert (a["requests"], a["errors"], a["errorRate"]) == (20, 2, 0.1)
    assert a["p95Ms"] == pytest.approx(19.05)  # 19 + 0.05 * (20 - 19)
    assert a["p50Ms"] == pytest.approx(10.5)
    assert (b["requests"], b["errors"], b["errorRate"], b["p95Ms"]) == (10, 5, 0.5, 100.0)
    by_errors = tel.get("/v1/services/stats-svc/endpoints", sort="error_rate").json["items"]
    assert [e["endpoint"] for e in by_errors] == ["GET /b", "GET /a"]
    assert [e["endpoint"] for e in tel.get("/v1/services/stats-svc/endpoints",
                                           limit=1).json["items"]] == ["GET /a"]
    assert tel.get("/v1/services/stats-svc/endpoints", sort="name").status_code == 400
    assert tel.get("/v1/services/nobody/endpoints").json["items"] == []


def test_slow_and_failed_traces(tel: Telemetry) -> None:
    _stats_data(tel)
    slow = tel.get("/v1/services/stats-svc/traces", kind="slow", limit=3)
    assert slow.status_code == 200, slow.json
    assert [t["durationNs"] for t in slow.json["items"]] == [100_000_000] * 3
    slow_a = tel.get("/v1/services/stats-svc/traces", endpoint="GET /a", limit=2).json
    assert [t["durationNs"] for t in slow_a["items"]] == [20_000_000, 19_000_000]
    assert slow_a["items"][0]["traceId"] == f"a{19:031x}"
    failed = tel.get("/v1/services/stats-svc/traces", endpoint="GET /b", kind="failed").json
    assert len(failed["items"]) == 5 and {t["status"] for t in failed["items"]} == {"error"}
    starts = [t["startTime"] for t in failed["items"]]
    assert starts == sorted(starts, reverse=True)
    assert tel.get("/v1/services/stats-svc/traces", kind="fast").status_code == 400


# --- access --------------------------------------------------------------------------------


def test_read_tokens_see_only_their_tenant(tel: Telemetry) -> None:
    tel.insert_span(T3, A, tel.base, 5_000_000, service="acme-api", name="GET /", tenant="acme")
    tel.insert_log("dd" * 16, tel.base, "acme says hello", service="acme-api", tenant="acme",
                   trace=T3)
    with tel.identity.engine.begin() as conn:
        acme = telemetry_tokens.create(conn, "acme", "read")
        globex = telemetry_tokens.create(conn, "globex", "read")
        ingest = telemetry_tokens.create(conn, "acme", "ingest")
    as_acme = {"Authorization": f"Bearer {acme}"}
    as_globex = {"Authorization": f"Bearer {globex}"}
    assert tel.get("/api/services", as_acme).json["data"] == ["acme-api"]
    assert tel.get("/api/services", as_globex).json["data"] == []
    assert tel.get(f"/api/traces/{T3}", as_acme).status_code == 200
    assert tel.get(f"/api/traces/{T3}", as_globex).status_code == 404
    assert tel.get(f"/api/traces/{T1}", as_acme).status_code == 404
    assert tel.get(f"/v1/traces/{T1}", as_acme).status_code == 404
    assert [g["body"] for g in tel.get("/v1/logs", as_acme).json["items"]] == ["acme says hello"]
    assert [s["service"] for s in tel.get("/v1/spans", as_acme).json["items"]] == ["acme-api"]
    assert [s["service"] for s in tel.get("/v1/services", as_acme).json["items"]] == ["acme-api"]
    assert _trace_ids(tel.get("/api/traces", as_acme, service="frontend")) == []
    resp = tel.get("/v1/spans", as_acme, tenant="globex")
    assert resp.status_code == 403 and resp.json["code"] == "tenant_forbidden"
    # Operators see every tenant, or one.
    assert tel.get("/api/services").json["data"] == ["acme-api", "frontend", "payments"]
    assert tel.get("/api/services", tenant="acme").json["data"] == ["acme-api"]
    assert tel.get("/api/services", tenant="").json["data"] == ["frontend", "payments"]
    # Wrong scope, unknown and revoked tokens are 401.
    for token in (ingest, "tt_" + "x" * 43):
        resp = tel.get("/api/services", {"Authorization": f"Bearer {token}"})
        assert resp.status_code == 401, token
    with tel.identity.engine.begin() as conn:
        telemetry_tokens.revoke(conn, acme)
    assert tel.get("/api/services", as_acme).status_code == 401


def test_users_without_the_role_are_refused(tel: Telemetry) -> None:
    user = tel.identity.bearer(tel.identity.signup())
    for path in ("/api/services", f"/api/traces/{T1}", "/v1/spans", "/v1/services"):
        resp = tel.get(path, user)
        assert resp.status_code == 403 and resp.json["code"] == "missing_role", path
        assert tel.get(path, {}).status_code == 401
    admin = tel.identity.signup()
    tel.identity.make_admin(admin)
    assert tel.get("/api/services", tel.identity.bearer(admin)).status_code == 200


def test_queries_are_bounded_by_a_statement_timeout(tel: Telemetry) -> None:
    from shared import errors, telemetry_query

    with pytest.raises(errors.ServiceUnavailable) as caught, \
            telemetry_query.reading(timeout_ms=50) as conn:
        conn.execute(sqlalchemy.text("SELECT pg_sleep(5)"))
    assert caught.value.code == "query_timeout"
    with pytest.raises(sqlalchemy.exc.DBAPIError) as refused, \
            telemetry_query.reading() as conn:
        conn.execute(sqlalchemy.text("DELETE FROM spans"))
    assert "read-only" in str(refused.value)
    assert os.environ["RATE_LIMIT_CLASS"] == "users"


def test_responses_match_the_openapi_document(tel: Telemetry) -> None:
    """Real bodies (success and error) against the schemas `openapi.yaml` documents."""
    import jsonschema_rs
    import yaml

    from tests.unit.test_openapi_contract import deref

    spec = yaml.safe_load((REPO / "openapi.yaml").read_text(encoding="utf-8"))
    _stats_data(tel)

    def check(path: str, template: str, status: int, **query: Any) -> None:
        resp = tel.get(path, **query)
        assert resp.status_code == status, resp.json
        operation = spec["paths"][f"/telemetry_query{template}"]["get"]
        response = deref(operation["responses"][str(status)], spec)
        (content,) = response["content"].values()
        jsonschema_rs.validator_for(content["schema"]).validate(resp.json)

    check("/api/services", "/api/services", 200)
    check("/api/services/frontend/operations", "/api/services/{service}/operations", 200)
    check("/api/operations", "/api/operations", 200, service="frontend")
    check("/api/traces", "/api/traces", 200, service="frontend")
    check("/api/traces", "/api/traces", 200, traceID=[T1, T3])
    check("/api/traces", "/api/traces", 400, service="frontend", minDuration="x")
    check(f"/api/traces/{T1}", "/api/traces/{trace_id}", 200)
    check(f"/api/traces/{T3}", "/api/traces/{trace_id}", 404)
    check(f"/v1/traces/{T1}", "/v1/traces/{trace_id}", 200)
    check(f"/v1/traces/{T3}", "/v1/traces/{trace_id}", 404)
    check("/v1/spans", "/v1/spans", 200, limit=2)
    check("/v1/spans", "/v1/spans", 400, kind="x")
    check("/v1/logs", "/v1/logs", 200)
    check("/v1/services", "/v1/services", 200)
    check("/v1/services/stats-svc/endpoints", "/v1/services/{service}/endpoints", 200)
    check("/v1/services/stats-svc/traces", "/v1/services/{service}/traces", 200,
          kind="failed")
