"""Spans of the product's own requests, exported as OTLP/HTTP JSON: read back through the
official OTLP protobuf messages (`opentelemetry-proto`), so the wire shape is the standard one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from shared import tracing
from tests.otlp import Receiver
from tests.otlp import attributes as _attrs
from tests.unit.conftest import make_client

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    got = Receiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", got.url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "sample")
    tracing.reset()
    yield got
    tracing.reset()
    got.server.shutdown()


def test_a_request_is_a_server_span_named_after_its_route(receiver: Receiver) -> None:
    client = make_client("sample")
    resp = client.get("/items/3", headers={"traceparent": f"00-{TRACE}-{CALLER_SPAN}-01"})
    assert tracing.flush() == 1
    (span,) = receiver.spans()
    assert span.trace_id.hex() == TRACE == resp.headers["X-Trace-Id"]
    assert span.parent_span_id.hex() == CALLER_SPAN
    # The span the caller is told about (traceparent) is this span.
    assert resp.headers["traceparent"].split("-")[2] == span.span_id.hex()
    assert span.name == "GET /items/{item_id}" and span.kind == Span.SPAN_KIND_SERVER
    attrs = _attrs(span)
    assert attrs["http.route"] == {"stringValue": "/items/{item_id}"}
    assert attrs["http.response.status_code"] == {"intValue": "200"}
    assert span.end_time_unix_nano >= span.start_time_unix_nano > 0
    assert span.status.code == Status.STATUS_CODE_UNSET
    assert receiver.resources()[0]["service.name"] == "sample"


def test_server_errors_mark_the_span_client_errors_do_not(receiver: Receiver) -> None:
    client = make_client("sample")
    assert client.get("/boom").status_code == 500
    assert client.get("/items/999").status_code == 404
    tracing.flush()
    boom, missing = receiver.spans()
    assert boom.status.code == Status.STATUS_CODE_ERROR
    assert [e.name for e in boom.events] == ["exception"]
    assert missing.status.code == Status.STATUS_CODE_UNSET


def test_child_spans_nest_under_the_current_span(receiver: Receiver) -> None:
    from shared import context

    unit = context.from_headers({"traceparent": f"00-{TRACE}-{CALLER_SPAN}-01"})
    with context.bound(unit):
        with tracing.span("outer", answer=42) as outer, tracing.span("inner", "client"):
            pass
        with pytest.raises(ValueError, match="bad"), tracing.span("failing"):
            raise ValueError("bad")
    tracing.flush()
    inner, outer_span, failing = receiver.spans()
    assert outer_span.parent_span_id.hex() == unit.span_id  # the unit of work in progress
    assert inner.parent_span_id == outer_span.span_id
    assert inner.kind == Span.SPAN_KIND_CLIENT and outer.attributes["answer"] == 42
    assert _attrs(outer_span)["answer"] == {"intValue": "42"}
    assert {s.trace_id.hex() for s in (inner, outer_span, failing)} == {TRACE}
    assert failing.status.code == Status.STATUS_CODE_ERROR


def test_an_unreachable_receiver_never_fails_a_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/v1/traces")
    tracing.reset()
    try:
        assert make_client("sample").get("/items/1").status_code == 200
        assert tracing.flush() == 0
        assert tracing._exporter().dropped == 1
    finally:
        tracing.reset()


def test_without_an_endpoint_nothing_is_queued(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    tracing.reset()
    make_client("sample").get("/items/1")
    assert tracing._exporter().queue.qsize() == 0 and tracing.flush() == 0
