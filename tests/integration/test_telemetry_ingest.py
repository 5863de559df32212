"""OTLP ingest end to end on real parts: the official OpenTelemetry SDK exports to span_ingest
(its own process, as deployed), Pub/Sub (the emulator) carries the batches, span_writer (its
own process, fed by the push bridge) COPYs them into PostgreSQL. Bad input is checked against
the in-process function; duplicate and Collector-format deliveries against the writer."""

from __future__ import annotations

import gzip
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.integration.conftest import PROJECT, deployed
from tests.integration.identity_fixtures import REPO

NOW_NS = time.time_ns()


def _wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def _rows(env: dict[str, str], sql: str, **params: Any) -> list[Any]:
    engine = sqlalchemy.create_engine(env["DATABASE_URL"])
    try:
        with engine.connect() as conn:
            return list(conn.execute(sqlalchemy.text(sql), params).all())
    finally:
        engine.dispose()


@pytest.fixture
def pipeline(platform_env: dict[str, str], run_dir: Path) -> Iterator[str]:
    """span_ingest and span_writer as processes; yields the OTLP base URL."""
    from google.cloud import pubsub_v1

    from emulators.bridge import ensure_topics
    from infra.topology import TOPOLOGY

    ensure_topics(TOPOLOGY, PROJECT, pubsub_v1.PublisherClient())
    env = platform_env | {"GOOGLE_CLOUD_PROJECT": PROJECT, "TELEMETRY_ANONYMOUS_INGEST": "true"}
    with deployed("span_writer", env, run_dir), deployed("span_ingest", env, run_dir) as ingest:
        yield ingest.function_urls["span_ingest"]


def _sdk_provider(exporter: Any, service: str) -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({
        "service.name": service, "deployment.environment.name": "test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


class JsonExporter:
    """The official OTLP/JSON encoding of the SDK's spans, POSTed as OTLP/HTTP JSON (what
    opentelemetry-exporter-otlp-json-http does; see requirements-dev.txt for why not it)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.responses: list[requests.Response] = []

    def export(self, spans: Any) -> Any:
        from opentelemetry.exporter.otlp.json.common.trace_encoder import encode_spans
        from opentelemetry.sdk.trace.export import SpanExportResult

        resp = requests.post(self.endpoint, data=encode_spans(spans).to_json(), timeout=10,
                             headers={"Content-Type": "application/json"})
        self.responses.append(resp)
        return SpanExportResult.SUCCESS if resp.ok else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _make_trace(provider: Any) -> tuple[str, str, str]:
    """A server span with a child client span that fails; (trace id, root id, child id)."""
    tracer = provider.get_tracer("it.tests")
    with tracer.start_as_current_span("GET /orders/{id}", kind=_kind("SERVER"),
                                      attributes={"http.route": "/orders/{id}",
                                                  "http.response.status_code": 500}) as root:
        with tracer.start_as_current_span("SELECT orders", kind=_kind("CLIENT"),
                                          attributes={"db.system": "postgresql",
                                                      "enduser.id": "u-42"}) as child:
            time.sleep(0.01)
            try:
                raise TimeoutError("statement timeout")
            except TimeoutError as exc:
                child.record_exception(exc)
                child.set_status(_error_status("statement timeout"))
    return (f"{root.get_span_context().trace_id:032x}", f"{root.get_span_context().span_id:016x}",
            f"{child.get_span_context().span_id:016x}")


def _kind(name: str) -> Any:
    from opentelemetry.trace import SpanKind

    return getattr(SpanKind, name)


def _error_status(message: str) -> Any:
    from opentelemetry.trace import Status, StatusCode

    return Status(StatusCode.ERROR, message)


def test_the_official_sdk_exports_spans_and_logs_and_they_are_stored(
        platform_env: dict[str, str], pipeline: str) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    traces = []
    for service, exporter in (("orders-proto", OTLPSpanExporter(f"{pipeline}/v1/traces")),
                              ("orders-json", JsonExporter(f"{pipeline}/v1/traces"))):
        provider = _sdk_provider(exporter, service)
        traces.append((service, *_make_trace(provider)))
        provider.shutdown()
    for service, trace_id, root_id, child_id in traces:
        rows = _wait_for(lambda t=trace_id: _rows(platform_env, (
            "SELECT encode(span_id, 'hex'), encode(parent_span_id, 'hex'), service, name, "
            "kind, status_code, duration_ns, attributes, events, environment, resource "
            "FROM spans WHERE trace_id = decode(:t, 'hex') ORDER BY start_time"), t=t)
            if len(_rows(platform_env, "SELECT 1 FROM spans WHERE trace_id = decode(:t, 'hex')",
                         t=t)) == 2 else None, f"{service} spans")
        root, child = rows
        assert root[0] == root_id and root[1] is None and child[1] == root_id
        assert child[0] == child_id
        assert (root[2], root[3], root[4], root[9]) == (service, "GET /orders/{id}", 2, "test")
        assert root[7]["http.response.status_code"] == 500
        assert child[4] == 3 and child[5] == 2 and child[6] >= 10_000_000  # >= the 10 ms sleep
        assert child[7] == {"db.system": "postgresql", "enduser.id": "u-42"}
        assert child[8][0]["name"] == "exception"
        assert child[8][0]["attributes"]["exception.type"] == "TimeoutError"
        assert root[10]["telemetry.sdk.name"] == "opentelemetry"
    # The failing span was announced on telemetry.errors, once per trace.
    announced = _rows(platform_env, "SELECT payload FROM outbox WHERE topic = 'telemetry.errors'")
    found = [e for (p,) in announced for e in json.loads(bytes(p))["data"]["errors"]]
    assert sorted((e["service"], e["exception_type"], e["user_id"]) for e in found) == [
        ("orders-json", "TimeoutError", "u-42"), ("orders-proto", "TimeoutError", "u-42")]
    # Logs through the SDK's OTLP log exporter, correlated with their span. (One test: the
    # pipeline's processes and subscriptions are set up once.)
    _sdk_logs_are_stored_with_their_trace(platform_env, pipeline)


def _sdk_logs_are_stored_with_their_trace(platform_env: dict[str, str], pipeline: str) -> None:
    import logging

    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    provider = LoggerProvider(resource=Resource.create({"service.name": "billing"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(
        OTLPLogExporter(f"{pipeline}/v1/logs")))
    logger = logging.getLogger(f"it-otel-{uuid.uuid4().hex[:6]}")
    logger.propagate = False
    logger.addHandler(LoggingHandler(logger_provider=provider))
    tracer = _sdk_provider(JsonExporter(f"{pipeline}/v1/traces"), "billing").get_tracer("t")
    with tracer.start_as_current_span("charge") as span:
        logger.error("card declined for order %s", "o-7")
    provider.shutdown()
    trace_id = f"{span.get_span_context().trace_id:032x}"
    rows = _wait_for(lambda: _rows(platform_env, (
        "SELECT service, severity_number, severity_text, body, encode(span_id, 'hex') "
        "FROM logs WHERE trace_id = decode(:t, 'hex')"), t=trace_id), "the log record")
    assert rows == [("billing", 17, "ERROR", "card declined for order o-7",
                     f"{span.get_span_context().span_id:016x}")]


# ------------------------------------------------------------- bad input (in-process)


@pytest.fixture
def ingest(platform_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    from functions_framework import create_app
    from google.cloud import pubsub_v1

    from emulators.bridge import ensure_topics
    from infra.topology import TOPOLOGY

    monkeypatch.setenv("TELEMETRY_ANONYMOUS_INGEST", "true")
    ensure_topics(TOPOLOGY, PROJECT, pubsub_v1.PublisherClient())
    return create_app("span_ingest", str(REPO / "functions/span_ingest/main.py")).test_client()


def _span(trace: str | None = None, span: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"traceId": trace or uuid.uuid4().hex, "spanId": span or uuid.uuid4().hex[:16],
            "name": "op", "kind": 2, "startTimeUnixNano": str(NOW_NS - 5_000_000),
            "endTimeUnixNano": str(NOW_NS), **extra}


def _request(*spans: dict[str, Any]) -> dict[str, Any]:
    return {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
        "scopeSpans": [{"scope": {"name": "t"}, "spans": list(spans)}]}]}


def _post_json(ingest: Any, body: Any, **headers: str) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return ingest.post("/v1/traces", data=data,
                       headers={"Content-Type": "application/json"} | headers)


def test_bad_items_are_rejected_with_partial_success_and_the_rest_kept(ingest: Any) -> None:
    good = _span()
    resp = _post_json(ingest, _request(
        good,
        _span(trace="abc"),  # too short
        _span(trace=uuid.uuid4().hex[:30] + "zz"),  # not hex
        _span(span="AAECAwQFBgc="),  # base64 instead of hex
        _span(trace="0" * 32),  # all zero
        _span(endTimeUnixNano=str(NOW_NS - 10_000_000)),  # ends before it starts
        _span(startTimeUnixNano=str(NOW_NS - 30 * 86_400 * 10**9),
              endTimeUnixNano=str(NOW_NS - 30 * 86_400 * 10**9 + 1)),  # beyond retention
    ))
    assert resp.status_code == 200, resp.data
    partial = resp.json["partialSuccess"]
    assert partial["rejectedSpans"] == "6"
    assert "hex" in partial["errorMessage"] and "retention" in partial["errorMessage"]


def test_oversized_values_and_future_clocks_are_clamped(ingest: Any) -> None:
    future = NOW_NS + 3600 * 10**9
    huge = _span(attributes=[{"key": "big", "value": {"stringValue": "x" * 100_000}},
                             {"key": "nul", "value": {"stringValue": "a\u0000b"}}],
                 startTimeUnixNano=str(future), endTimeUnixNano=str(future + 1000))
    resp = _post_json(ingest, _request(huge))
    assert resp.status_code == 200
    assert resp.json["partialSuccess"]["rejectedSpans"] == "0"
    assert "clamped" in resp.json["partialSuccess"]["errorMessage"]


def test_malformed_bodies_are_4xx_never_5xx(ingest: Any) -> None:
    proto = {"Content-Type": "application/x-protobuf"}
    assert ingest.post("/v1/traces", data=b"\xff\xff\xff\x0f", headers=proto).status_code == 400
    bad_json = _post_json(ingest, b"{not json")
    assert bad_json.status_code == 400 and bad_json.json["code"] == "invalid_json"
    wrong_shape = _post_json(ingest, {"resourceSpans": "nope"})
    assert wrong_shape.status_code == 400 and wrong_shape.json["code"] == "invalid_otlp_json"
    assert ingest.post("/v1/traces", data=b"x", headers={"Content-Type": "text/plain"}
                       ).status_code == 415
    corrupt = _post_json(ingest, b"\x1f\x8b\x08garbage", **{"Content-Encoding": "gzip"})
    assert corrupt.status_code == 400 and corrupt.json["code"] == "invalid_gzip"
    assert _post_json(ingest, _request(_span()), **{"Content-Encoding": "br"}).status_code == 415
    bomb = gzip.compress(b"{" + b" " * (70 * 1024 * 1024) + b"}")
    assert _post_json(ingest, bomb, **{"Content-Encoding": "gzip"}).status_code == 413


def test_protobuf_and_gzip_answer_a_protobuf_response(ingest: Any) -> None:
    message = json_format.ParseDict({"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "AAECAwQFBgcICQoLDA0ODw==", "spanId": "AAECAwQFBgc=", "name": "op",
        "startTimeUnixNano": str(NOW_NS - 1000), "endTimeUnixNano": str(NOW_NS)}]}]}]},
        ExportTraceServiceRequest())
    resp = ingest.post("/v1/traces", data=gzip.compress(message.SerializeToString()),
                       headers={"Content-Type": "application/x-protobuf",
                                "Content-Encoding": "gzip"})
    assert resp.status_code == 200 and resp.mimetype == "application/x-protobuf"
    assert not ExportTraceServiceResponse.FromString(resp.data).HasField("partial_success")


def test_ingest_tokens(ingest: Any, platform_env: dict[str, str],
                       monkeypatch: pytest.MonkeyPatch) -> None:
    from shared import db, telemetry_tokens

    monkeypatch.setenv("TELEMETRY_ANONYMOUS_INGEST", "false")
    assert _post_json(ingest, _request(_span())).status_code == 401
    with db.transaction() as conn:
        token = telemetry_tokens.create(conn, "acme", "ingest")
        reader = telemetry_tokens.create(conn, "acme", "read")
    ok = _post_json(ingest, _request(_span()), Authorization=f"Bearer {token}")
    assert ok.status_code == 200
    assert _post_json(ingest, _request(_span()), Authorization=f"Bearer {reader}"
                      ).status_code == 401
    with db.transaction() as conn:
        telemetry_tokens.revoke(conn, token)
    assert _post_json(ingest, _request(_span()), Authorization=f"Bearer {token}"
                      ).status_code == 401


def test_the_deployed_self_export_token_is_accepted(
        ingest: Any, platform_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """README's deployment recipe: a token from the CLI, turned into the header secret by the
    Pulumi program, read back by the functions' exporter, accepted by span_ingest."""
    from infra import program
    from shared import telemetry_tokens, tracing

    monkeypatch.setenv("TELEMETRY_ANONYMOUS_INGEST", "false")
    assert telemetry_tokens.main(["create", "--tenant", "self", "--scope", "ingest"]) == 0
    token = capsys.readouterr().out.strip()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", program._bearer(token))
    headers = tracing.export_headers()
    assert _post_json(ingest, _request(_span()), **headers).status_code == 200


# ------------------------------------------------------------------ the writer (in-process)


def _write(data: bytes, attributes: dict[str, str]) -> Any:
    from shared import span_writer

    return span_writer.store(span_writer.decode(data, attributes))


def _batch(*spans: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    from shared import otlp, span_ingest

    outcome = otlp.Outcome()
    otlp.span_rows(otlp.parse_traces(json.dumps(_request(*spans)).encode(), "json", outcome),
                   "", outcome)
    return (gzip.compress(otlp.encode_csv(outcome.rows)),
            span_ingest.batch_attributes("traces", ""))


def test_the_same_batch_twice_stores_each_span_once(platform_env: dict[str, str]) -> None:
    failing = _span(status={"code": 2, "message": "boom"})
    data, attributes = _batch(_span(), _span(), failing)
    first = _write(data, attributes)
    again = _write(data, attributes)
    assert (first.received, first.inserted, first.errors) == (3, 3, 1)
    assert (again.received, again.inserted, again.errors) == (3, 0, 0)
    assert _rows(platform_env, "SELECT count(*) FROM spans") == [(3,)]
    assert _rows(platform_env, "SELECT count(*) FROM outbox WHERE topic = 'telemetry.errors'"
                 ) == [(1,)]
    # The announcement is published in the background and marked when Pub/Sub confirms it.
    _wait_for(lambda: _rows(platform_env, "SELECT 1 FROM outbox WHERE topic = "
                            "'telemetry.errors' AND published_at IS NOT NULL"),
              "the error announcement to be published")


def test_collector_messages_on_the_topic_are_stored(platform_env: dict[str, str]) -> None:
    """The Collector's Google Cloud Pub/Sub exporter: protobuf, ce-type, optional gzip."""
    trace = uuid.uuid4().hex
    spans = _collector_traces(trace)
    written = _write(gzip.compress(spans), {
        "ce-specversion": "1.0", "ce-id": str(uuid.uuid4()), "ce-source": "collector",
        "ce-type": "org.opentelemetry.otlp.traces.v1", "content-type": "application/protobuf",
        "content-encoding": "gzip"})
    assert written.inserted == 1
    logs = ExportLogsServiceRequest()
    record = logs.resource_logs.add().scope_logs.add().log_records.add()
    record.time_unix_nano, record.severity_number = NOW_NS, 21
    record.body.string_value = "disk full"
    written = _write(logs.SerializeToString(), {"ce-type": "org.opentelemetry.otlp.logs.v1",
                                                "content-type": "application/protobuf"})
    assert (written.inserted, written.errors) == (1, 1)
    assert _rows(platform_env, "SELECT service FROM spans WHERE trace_id = decode(:t, 'hex')",
                 t=trace) == [("via-collector",)]


def _collector_traces(trace: str) -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    attribute = resource_spans.resource.attributes.add()
    attribute.key, attribute.value.string_value = "service.name", "via-collector"
    span = resource_spans.scope_spans.add().spans.add()
    span.trace_id, span.span_id = bytes.fromhex(trace), uuid.uuid4().bytes[:8]
    span.name, span.start_time_unix_nano, span.end_time_unix_nano = "op", NOW_NS - 1000, NOW_NS
    return request.SerializeToString()


def test_malformed_deliveries_are_refused_for_the_dead_letter_topic(
        platform_env: dict[str, str]) -> None:
    from shared import errors

    for data, attributes in ((b"junk", {"ce-type": "org.opentelemetry.otlp.traces.v1"}),
                             (b"junk", {"format": "otlp-rows.csv.v1", "signal": "spans",
                                        "content-encoding": "gzip"}),
                             (b"{}", {})):
        with pytest.raises(errors.ValidationFailed):
            _write(data, attributes)


def test_retention_drops_whole_old_days_and_prepares_the_next(
        platform_env: dict[str, str]) -> None:
    from datetime import date, timedelta

    from shared import db, telemetry_store

    today = date(2026, 11, 21)
    with db.transaction() as conn:
        for age in (0, 6, 7, 8, 30):
            telemetry_store.ensure_partitions(conn, "spans", [today - timedelta(days=age)])
        telemetry_store.ensure_partitions(conn, "logs", [today - timedelta(days=9)])
        dropped = telemetry_store.apply_retention(conn, 7, today)
        kept = telemetry_store.partitions(conn)
    assert sorted(dropped) == ["logs_p20261112", "spans_p20261022", "spans_p20261113"]
    assert ("spans", date(2026, 11, 14)) in kept and ("spans", date(2026, 11, 22)) in kept
    assert ("logs", date(2026, 11, 21)) in kept and ("logs", date(2026, 11, 22)) in kept
    assert all(day >= date(2026, 11, 14) for _, day in kept)


def test_rows_older_than_the_retention_are_dropped_by_the_writer(
        platform_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch that sat in Pub/Sub past the retention finds its day gone: the old rows are
    dropped instead of failing the delivery forever."""
    data, attributes = _batch(_span(), _span(startTimeUnixNano=str(NOW_NS - 3 * 86_400 * 10**9),
                                           endTimeUnixNano=str(NOW_NS - 3 * 86_400 * 10**9 + 5)))
    monkeypatch.setenv("TELEMETRY_RETENTION_DAYS", "1")
    written = _write(data, attributes)
    assert (written.received, written.inserted) == (2, 1)


def test_text_that_looks_like_csv_or_null_is_stored_as_sent(platform_env: dict[str, str]
                                                            ) -> None:
    tricky = ['\\N', "", 'quote " and, comma', "line\nbreak", "\\x00 not bytes"]
    spans = [_span(name=name or "x", status={"code": 1, "message": name},
                   attributes=[{"key": "v", "value": {"stringValue": name}}]) for name in tricky]
    written = _write(*_batch(*spans))
    assert written.inserted == len(tricky)
    stored = _rows(platform_env, "SELECT status_message, attributes->>'v' FROM spans")
    assert sorted(stored) == sorted((name, name) for name in tricky)


def test_when_pubsub_does_not_take_the_batch_the_answer_is_503_retry_after(
        ingest: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from emulators.proc import free_port
    from shared import clients, span_ingest

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{free_port()}")  # nobody there
    monkeypatch.setattr(span_ingest, "PUBLISH_TIMEOUT_S", 1.0)
    clients.reset()
    try:
        resp = _post_json(ingest, _request(_span()))
    finally:
        clients.reset()
    assert resp.status_code == 503 and resp.json["code"] == "ingest_unavailable"
    assert resp.headers["Retry-After"] == "5"


def test_old_rollups_are_pruned(platform_env: dict[str, str]) -> None:
    from shared import db, telemetry_store

    with db.transaction() as conn:
        for age in (1, 89, 91, 400):
            conn.execute(sqlalchemy.text(
                "INSERT INTO rollups (minute, tenant, service, environment, operation, requests, "
                "errors, sketch) VALUES (date_trunc('minute', now()) - make_interval(days => :a),"
                " '', 's', '', 'op', 1, 0, '\\x00')"), {"a": age})
        assert telemetry_store.prune_rollups(conn, 90) == 2
    assert _rows(platform_env, "SELECT count(*) FROM rollups") == [(2,)]
