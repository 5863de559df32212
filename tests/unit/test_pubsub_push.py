"""Push deliveries in every shape production and the local cloud send them."""

from __future__ import annotations

import base64
import json

import pytest

from tests.unit.conftest import LogCapture, make_client

CE_HEADERS = {
    "ce-specversion": "1.0", "ce-id": "m-1",
    "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
    "ce-source": "//pubsub.googleapis.com/projects/p/topics/t",
}


@pytest.fixture
def client():
    return make_client("echo_consumer")


def _body(data: bytes = b'{"a":1}', **extra):
    message = {"data": base64.b64encode(data).decode(), "messageId": "m-1",
               "attributes": {"k": "v"}, "publishTime": "2026-01-01T00:00:00Z"}
    return {"message": message, "subscription": "projects/p/subscriptions/s", **extra}


def parsed(logs: LogCapture) -> dict:
    (line,) = [line for line in logs.lines if line["logger"] == "echo_consumer"]
    return line["parsed"]


def test_pubsub_push_wrapper(client, logs: LogCapture) -> None:
    resp = client.post("/", json=_body(deliveryAttempt=3))
    assert resp.status_code == 204
    assert parsed(logs) == {"id": "m-1", "data": {"a": 1}, "attrs": {"k": "v"},
                            "attempt": 3, "subscription": "projects/p/subscriptions/s"}


def test_binary_cloudevent(client, logs: LogCapture) -> None:
    resp = client.post("/", data=json.dumps(_body()), headers=CE_HEADERS,
                       content_type="application/json")
    assert resp.status_code == 204 and parsed(logs)["id"] == "m-1"


def test_structured_cloudevent(client, logs: LogCapture) -> None:
    event = {"specversion": "1.0", "id": "m-1", "source": "//pubsub", "data": _body(),
             "type": "google.cloud.pubsub.topic.v1.messagePublished"}
    resp = client.post("/", data=json.dumps(event), content_type="application/cloudevents+json")
    assert resp.status_code == 204 and parsed(logs)["data"] == {"a": 1}


def test_trace_continues_from_message_attributes(client) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    body = _body()
    body["message"]["attributes"]["traceparent"] = f"00-{trace}-00f067aa0ba902b7-01"
    resp = client.post("/", json=body)
    assert resp.headers["X-Trace-Id"] == trace


@pytest.mark.parametrize(
    "payload",
    [
        "not json",
        json.dumps([1, 2]),
        json.dumps({"message": "x"}),
        json.dumps({"message": {"data": "!!notbase64!!", "messageId": "1"}}),
        json.dumps({"message": {"data": "", "attributes": {"k": 1}, "messageId": "1"}}),
        json.dumps({"message": {"data": ""}}),
    ],
)
def test_malformed_deliveries_are_400(client, payload: str) -> None:
    resp = client.post("/", data=payload, content_type="application/json")
    assert resp.status_code == 400
    assert resp.json["code"] == "invalid_push"


def test_other_cloudevent_types_are_refused(client) -> None:
    resp = client.post("/", data=json.dumps(_body()),
                       headers=CE_HEADERS | {"ce-type": "google.cloud.storage.object.v1.finalized"},
                       content_type="application/json")
    assert resp.status_code == 400


def test_non_json_data_is_422(client) -> None:
    resp = client.post("/", json=_body(b"\x00binary"))
    assert resp.status_code == 422 and resp.json["code"] == "invalid_data"


def test_push_identity_is_required_when_configured(client, monkeypatch) -> None:
    from shared import clients

    monkeypatch.setenv("PUSH_AUDIENCE", "https://fn.example")
    clients.reset()
    resp = client.post("/", json=_body())
    assert resp.status_code == 401
    resp = client.post("/", json=_body(), headers={"Authorization": "Basic eDp5"})
    assert resp.status_code == 401


@pytest.mark.parametrize("payload", ["[" * 100_000, '{"message":' * 5000])
def test_deeply_nested_json_is_400_not_a_crash(client, payload: str) -> None:
    resp = client.post("/", data=payload, content_type="application/json")
    assert resp.status_code == 400 and resp.json["code"] == "invalid_push"
    assert len(resp.headers["X-Trace-Id"]) == 32


def test_oversized_delivery_is_413(client) -> None:
    from shared.pubsub_push import MAX_PUSH_BYTES

    resp = client.post("/", data=b" " * (MAX_PUSH_BYTES + 1), content_type="application/json")
    assert resp.status_code == 413 and resp.json["code"] == "payload_too_large"


def test_structured_cloudevent_continues_the_message_trace(client) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    body = _body()
    body["message"]["attributes"]["traceparent"] = f"00-{trace}-00f067aa0ba902b7-01"
    event = {"specversion": "1.0", "id": "m-1", "source": "//pubsub", "data": body,
             "type": "google.cloud.pubsub.topic.v1.messagePublished"}
    resp = client.post("/", data=json.dumps(event), content_type="application/cloudevents+json")
    assert resp.status_code == 204 and resp.headers["X-Trace-Id"] == trace
