"""The shared router through the real functions-framework app: validation, problem+json,
trace propagation, masking, pagination and roles."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.errors import PROBLEM_JSON
from tests.unit.conftest import LogCapture, make_client

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


@pytest.fixture
def client():
    return make_client("sample")


def test_health(client) -> None:
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json == {"status": "ok", "service": "sample"}


def test_trace_id_continues_the_callers_trace_in_every_log_line(client, logs: LogCapture
                                                                 ) -> None:
    resp = client.get("/items/3", headers={"traceparent": PARENT, "X-Request-Id": "req-42"})
    assert resp.status_code == 200
    assert resp.headers["X-Trace-Id"] == TRACE
    assert resp.headers["X-Request-Id"] == "req-42"
    assert resp.headers["traceparent"].startswith(f"00-{TRACE}-")
    assert len(logs.lines) == 2  # the handler's line and the access log
    for line in logs.lines:
        assert line["logging.googleapis.com/trace"] == f"projects/unit-project/traces/{TRACE}"
        assert line["requestId"] == "req-42"


def test_cloud_trace_header_is_accepted(client) -> None:
    resp = client.get("/healthz", headers={"X-Cloud-Trace-Context": f"{TRACE}/12345;o=1"})
    assert resp.headers["X-Trace-Id"] == TRACE


def test_trace_is_generated_when_absent_and_matches_error_body(client, logs: LogCapture) -> None:
    resp = client.get("/items/999")
    assert resp.status_code == 404
    assert resp.mimetype == PROBLEM_JSON
    trace = resp.headers["X-Trace-Id"]
    assert len(trace) == 32 and resp.json["traceId"] == trace
    assert resp.json["code"] == "item_not_found"
    assert {line["logging.googleapis.com/trace"] for line in logs.lines} == {
        f"projects/unit-project/traces/{trace}"}


def test_malformed_trace_headers_never_fail_a_request(client) -> None:
    resp = client.get("/healthz", headers={"traceparent": "00-zz-1-01",
                                           "X-Cloud-Trace-Context": "nope",
                                           "X-Request-Id": "bad id with spaces"})
    assert resp.status_code == 200 and len(resp.headers["X-Trace-Id"]) == 32
    assert " " not in resp.headers["X-Request-Id"]


def test_no_secret_from_headers_or_body_reaches_the_logs(client, logs: LogCapture) -> None:
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"
    resp = client.post(
        "/items?token=querysecret",
        json={"name": "box", "password": "hunter2-very-secret"},
        headers={"Authorization": f"Bearer {token}", "Cookie": "session=cookie-secret-value",
                 "X-Api-Key": "apikey-secret-value"},
    )
    assert resp.status_code == 201
    for secret in ("hunter2-very-secret", token, "cookie-secret-value", "apikey-secret-value",
                   "querysecret", "c2lnbmF0dXJl"):
        assert secret not in logs.raw
    (handler_line,) = [line for line in logs.lines if line["logger"] == "sample"]
    assert handler_line["body"]["password"] == "***"
    assert handler_line["headers"]["Authorization"] == "***"
    assert handler_line["body"]["name"] == "box"


def test_unhandled_error_is_a_generic_500_without_internals(client, logs: LogCapture) -> None:
    resp = client.get("/boom")
    assert resp.status_code == 500 and resp.mimetype == PROBLEM_JSON
    assert resp.json["code"] == "internal"
    assert "hunter2" not in resp.get_data(as_text=True)
    assert "Traceback" not in resp.get_data(as_text=True)
    error_line = next(line for line in logs.lines if line["severity"] == "ERROR")
    assert "stack_trace" in error_line and "hunter2" not in logs.raw


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"data": "{not json", "content_type": "application/json"}, 400, "invalid_json"),
        ({"data": "name=x", "content_type": "application/x-www-form-urlencoded"}, 415,
         "unsupported_media_type"),
        ({"json": ["a list"]}, 422, "validation_failed"),
        ({"json": {}}, 422, "validation_failed"),
        ({"json": {"name": "x", "count": "3"}}, 422, "validation_failed"),
        ({"json": {"name": "x", "count": True}}, 422, "validation_failed"),
        ({"json": {"name": "x", "count": 11}}, 422, "validation_failed"),
        ({"json": {"name": "x", "extra": 1}}, 422, "validation_failed"),
        ({"json": {"name": "x", "tags": ["ok", "toolong"]}}, 422, "validation_failed"),
        ({"data": b"\xff\xfe", "content_type": "application/json"}, 400, "invalid_json"),
    ],
)
def test_bad_bodies_are_4xx_problems(client, kwargs, status: int, code: str) -> None:
    resp = client.post("/items", **kwargs)
    assert resp.status_code == status
    assert resp.mimetype == PROBLEM_JSON
    assert resp.json["code"] == code and resp.json["status"] == status


def test_validation_lists_every_problem(client) -> None:
    resp = client.post("/items", json={"count": -1, "extra": True})
    fields = {e["field"] for e in resp.json["errors"]}
    assert fields == {"name", "count", "extra"}


def test_oversized_body_is_413(client) -> None:
    resp = client.post("/items", data=b"{" + b" " * (1024 * 1024 + 10) + b"}",
                       content_type="application/json")
    assert resp.status_code == 413 and resp.json["code"] == "payload_too_large"


def test_unknown_route_and_wrong_method(client) -> None:
    assert client.get("/nope").status_code == 404
    resp = client.delete("/items")
    assert resp.status_code == 405 and "GET" in resp.headers["Allow"]


def test_cursor_pagination_walks_every_item_once(client) -> None:
    seen, cursor = [], None
    while True:
        resp = client.get("/items", query_string={"limit": 3, **({"cursor": cursor} if cursor
                                                               else {})})
        assert resp.status_code == 200
        seen += [item["id"] for item in resp.json["items"]]
        cursor = resp.json["nextCursor"]
        if cursor is None:
            break
    assert seen == [str(i) for i in range(1, 8)]


@pytest.mark.parametrize("query", [{"cursor": "forged"}, {"cursor": "eyJhZnRlciI6M30.AAAA"},
                                   {"limit": "0"}, {"limit": "many"}, {"limit": "101"}])
def test_bad_pagination_is_400(client, query) -> None:
    resp = client.get("/items", query_string=query)
    assert resp.status_code == 400 and resp.mimetype == PROBLEM_JSON


@pytest.fixture
def signing_key(monkeypatch: pytest.MonkeyPatch):
    from shared import clients

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    monkeypatch.setenv("JWT_PUBLIC_KEY_PEM", pem.decode())
    clients.reset()  # settings and key resolvers are built once per instance
    yield key
    clients.reset()


def _token(key, **overrides) -> str:
    now = int(time.time())
    claims = {"sub": "u1", "roles": ["user"], "iss": "https://auth.local", "aud": "app",
              "iat": now, "exp": now + 600, "sid": "s1", "jti": "j1"} | overrides
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm="RS256")


def test_roles_are_enforced(client, signing_key) -> None:
    assert client.get("/operator").status_code == 401
    user = _token(signing_key)
    resp = client.get("/operator", headers={"Authorization": f"Bearer {user}"})
    assert resp.status_code == 403 and resp.json["code"] == "missing_role"
    for roles in (["operator"], ["admin"]):
        token = _token(signing_key, roles=roles)
        resp = client.get("/operator", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 200 and resp.json == {"subject": "u1"}


def test_deeply_nested_body_is_400(client) -> None:
    resp = client.post("/items", data="[" * 100_000, content_type="application/json")
    assert resp.status_code == 400 and resp.json["code"] == "invalid_json"


def test_paths_the_framework_cannot_route_still_get_problem_json(client) -> None:
    resp = client.get("/items/a%0Ab")
    assert resp.status_code == 404 and resp.mimetype == PROBLEM_JSON
    assert len(resp.headers["X-Trace-Id"]) == 32
