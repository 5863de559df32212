"""Error fan-out without services: message normalization, fingerprints, grouping of a batch,
the policy from the environment, signatures and the three webhook payload shapes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared import error_groups, webhooks
from shared.error_groups import fingerprint, normalize_message, top_frame

AT = datetime(2026, 11, 21, 10, 5, tzinfo=UTC)


@pytest.mark.parametrize(("message", "normalized"), [
    ("user 42 not found", "user <num> not found"),
    ("order 9f1c2a3b-1234-4abc-8def-0123456789ab failed",
     "order <uuid> failed"),
    ("bad key 'abc' in \"x y\"", "bad key <str> in <str>"),
    ("segfault at 0x7ffee1a2b3c4", "segfault at <hex>"),
    ("object deadbeef12 missing", "object <hex> missing"),
    ("took 12.5s   after  3 retries", "took <num>s after <num> retries"),
    ("plain words stay", "plain words stay"),
])
def test_normalize_message(message: str, normalized: str) -> None:
    assert normalize_message(message) == normalized


def test_top_frame_is_the_first_frame_line_without_numbers() -> None:
    python = ('Traceback (most recent call last):\n  File "/app/x.py", line 12, in handle\n'
              '  File "/app/y.py", line 3, in inner\nValueError: no')
    assert top_frame(python) == 'File "/app/x.py", line <num>, in handle'
    java = "java.lang.IllegalStateException: x\n\tat com.acme.Foo.bar(Foo.java:42)\n\tat q"
    assert top_frame(java) == "at com.acme.Foo.bar(Foo.java:<num>)"
    assert top_frame("no frames here") == ""
    assert top_frame(None) == ""


def test_fingerprint_groups_variants_and_separates_what_differs() -> None:
    base = fingerprint("t", "api", "KeyError", "user 1 not found", None)
    assert base == fingerprint("t", "api", "KeyError", "user 999 not found", None)
    assert len(base) == 32
    others = {
        fingerprint("t", "web", "KeyError", "user 1 not found", None),
        fingerprint("t", "api", "ValueError", "user 1 not found", None),
        fingerprint("t", "api", "KeyError", "group 1 not found", None),
        fingerprint("t", "api", "KeyError", "user 1 not found", '  File "a.py", line 1, in f'),
        fingerprint("u", "api", "KeyError", "user 1 not found", None),
    }
    assert base not in others and len(others) == 5


def _error(message: str, user: str | None, at: datetime, **extra: Any) -> dict[str, Any]:
    return {"kind": "log", "tenant": "t", "service": "api", "environment": "prod",
            "name": "GET /x", "time": at.isoformat(), "message": message, "user_id": user,
            "exception_type": "KeyError", "exception_message": message,
            "stacktrace": None, "trace_id": "a" * 32, "span_id": "b" * 16} | extra


def test_aggregate_counts_users_minutes_and_caps_future_times() -> None:
    errors = [_error("user 1 not found", "u1", AT), _error("user 2 not found", "u2",
                                                           AT + timedelta(seconds=70)),
              _error("user 3 not found", None, AT + timedelta(days=2)), "not an error",
              _error("other", "u1", AT)]
    groups, valid = error_groups.aggregate(errors, now=AT + timedelta(minutes=5))
    assert len(valid) == 4 and len(groups) == 2
    fp = fingerprint("t", "api", "KeyError", "user 1 not found", None)
    group = groups[fp]
    assert (group.occurrences, group.users) == (3, {"u1", "u2"})
    assert group.last == AT + timedelta(minutes=5)  # a future time is capped at now
    assert group.minutes == {AT: 1, AT + timedelta(minutes=1): 1, AT + timedelta(minutes=5): 1}
    assert len({e["error_id"] for e in valid}) == 4


def test_error_id_is_deterministic() -> None:
    one = _error("x", "u", AT)
    assert error_groups.error_id(one) == error_groups.error_id(dict(one))
    assert error_groups.error_id(one) != error_groups.error_id(one | {"span_id": "c" * 16})


def test_policy_from_env() -> None:
    policy = error_groups.Policy.from_env({
        "ERROR_THRESHOLD_COUNT": "7", "ERROR_THRESHOLD_USERS": "2",
        "ERROR_THRESHOLD_WINDOW_MIN": "10", "ERROR_REGRESSION_SILENCE_MIN": "60",
        "ERROR_NOTIFY_DEDUPE_MIN": "15"})
    assert policy == error_groups.Policy(7, 2, timedelta(minutes=10), timedelta(hours=1),
                                         timedelta(minutes=15))
    assert error_groups.Policy.from_env({}) == error_groups.Policy()
    with pytest.raises(ValueError, match="ERROR_THRESHOLD_COUNT"):
        error_groups.Policy.from_env({"ERROR_THRESHOLD_COUNT": "0"})


# --- signatures and payloads ------------------------------------------------------------------


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    body = b'{"a":1}'
    header = webhooks.sign("s3cret", 1_700_000_000, body)
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert webhooks.verify("s3cret", header, body, now=1_700_000_010)
    assert not webhooks.verify("s3cret", header, body, now=1_700_001_000)  # stale: a replay
    assert not webhooks.verify("other", header, body, now=1_700_000_010)
    assert not webhooks.verify("s3cret", header, body + b"x", now=1_700_000_010)
    assert not webhooks.verify("s3cret", "garbage", body)


def _message(kind: str, payload: dict[str, Any]) -> webhooks.Message:
    return webhooks.Message("n-1", kind, "subject-1", "something happened", payload, AT, "ops")


ERROR_PAYLOAD = {"fingerprint": "f" * 32, "tenant": "t", "service": "api",
                 "environment": "prod", "exception_type": "KeyError", "message": "user 1",
                 "occurrences": 3, "users": 2, "first_seen": AT.isoformat(),
                 "last_seen": AT.isoformat()}
ALERT_PAYLOAD = {"rule_id": "r-1", "rule_name": "p95 above 2 s", "kind": "latency",
                 "tenant": "t", "service": "api", "from": "pending", "to": "firing",
                 "minute": AT.isoformat(), "value": 2.5, "threshold": 2.0,
                 "started_at": "2026-11-21T10:00:00+00:00", "summary": "p95 2.5 s > 2 s"}


def test_generic_payload_and_request_headers() -> None:
    body, headers = webhooks.request_for(_message("error.new", ERROR_PAYLOAD), "generic",
                                         "s3cret", "d-1", timestamp=1_700_000_000)
    assert json.loads(body) == {"id": "n-1", "type": "error.new",
                                "created_at": AT.isoformat(), "summary": "something happened",
                                "data": ERROR_PAYLOAD}
    assert headers[webhooks.SIGNATURE_HEADER] == webhooks.sign("s3cret", 1_700_000_000, body)
    assert headers["Content-Type"] == "application/json"
    assert "s3cret" not in json.dumps(headers)


def test_slack_payload_has_text_and_blocks() -> None:
    slack = webhooks.slack_payload(_message("error.threshold", ERROR_PAYLOAD))
    assert "something happened" in slack["text"]
    types = [b["type"] for b in slack["blocks"]]
    assert types == ["header", "section", "section", "context"]
    assert "*service*: api" in slack["blocks"][2]["text"]["text"]


@pytest.mark.parametrize(("kind", "status"), [("alert.firing", "firing"),
                                              ("alert.resolved", "resolved")])
def test_alertmanager_v4_shape_for_alerts(kind: str, status: str) -> None:
    body = webhooks.alertmanager_payload(_message(kind, ALERT_PAYLOAD))
    assert set(body) == {"version", "groupKey", "truncatedAlerts", "status", "receiver",
                         "groupLabels", "commonLabels", "commonAnnotations", "externalURL",
                         "alerts"}
    assert (body["version"], body["status"], body["receiver"]) == ("4", status, "ops")
    (alert,) = body["alerts"]
    assert alert["status"] == status
    assert alert["labels"] == {"alertname": "p95 above 2 s", "rule_id": "r-1",
                               "kind": "latency", "tenant": "t", "service": "api"}
    assert alert["annotations"]["summary"] == "something happened"
    assert alert["startsAt"] == "2026-11-21T10:00:00+00:00"
    assert (alert["endsAt"] == webhooks.ZERO_TIME) == (status == "firing")
    assert len(alert["fingerprint"]) == 16
    assert body["groupKey"] == '{}:{"alertname":"p95 above 2 s"}'


def test_alertmanager_shape_for_errors() -> None:
    body = webhooks.alertmanager_payload(_message("error.regression", ERROR_PAYLOAD))
    (alert,) = body["alerts"]
    assert body["status"] == "firing" and alert["labels"]["alertname"] == "ErrorRegression"
    assert alert["labels"]["fingerprint"] == "subject-1"
    assert alert["startsAt"] == AT.isoformat() and alert["endsAt"] == webhooks.ZERO_TIME
