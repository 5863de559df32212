"""The APM on the local stack: the official OpenTelemetry SDK sends a trace and its logs to
span_ingest over the gateway, and the trace is read back through the Jaeger-compatible API and
the native API; the product's own requests show up as traces of their functions."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.e2e.conftest import REPO

pytestmark = pytest.mark.e2e
PASSWORD = "a long and unusual passphrase"


def _url(stack: dict[str, Any], function: str, path: str) -> str:
    return f"{stack['gateway_url']}/{function}{path}"


def _wait(check: Callable[[], Any], what: str, timeout: float = 45.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def _operator(stack: dict[str, Any]) -> dict[str, str]:
    email = f"ops-{uuid.uuid4().hex[:8]}@example.com"
    signup = requests.post(_url(stack, "auth", "/signup"), timeout=10, json={
        "email": email, "password": PASSWORD, "display_name": "Ops"})
    assert signup.status_code == 201
    subprocess.run([sys.executable, "-m", "shared.users", "grant", email, "operator"], cwd=REPO,
                   env={"DATABASE_URL": stack["database_url"], "APP_ENV": "local",
                        "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60,
                   check=True)
    login = requests.post(_url(stack, "auth", "/login"), timeout=10,
                          json={"email": email, "password": PASSWORD}).json()
    return {"Authorization": f"Bearer {login['access_token']}"}


def test_an_sdk_trace_is_read_back_through_both_apis(stack: dict[str, Any]) -> None:
    import logging

    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import SpanKind

    service = f"shop-{uuid.uuid4().hex[:6]}"
    resource = Resource.create({"service.name": service, "deployment.environment.name": "e2e"})
    ingest = _url(stack, "span_ingest", "")
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(
        OTLPSpanExporter(f"{ingest}/v1/traces")))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(
        OTLPLogExporter(f"{ingest}/v1/logs")))
    logger = logging.getLogger(f"e2e-{service}")
    logger.propagate = False
    logger.addHandler(LoggingHandler(logger_provider=logger_provider))
    tracer = tracer_provider.get_tracer("e2e")
    with tracer.start_as_current_span("GET /basket", kind=SpanKind.SERVER,
                                      attributes={"http.route": "/basket"}) as root:
        with tracer.start_as_current_span("SELECT basket", kind=SpanKind.CLIENT,
                                          attributes={"db.system": "postgresql"}):
            time.sleep(0.02)
            logger.warning("basket is large")
    tracer_provider.shutdown()
    logger_provider.shutdown()
    trace_id = f"{root.get_span_context().trace_id:032x}"
    ops = _operator(stack)

    jaeger = _wait(lambda: (lambda r: r.json() if r.status_code == 200 else None)(
        requests.get(_url(stack, "telemetry_query", f"/api/traces/{trace_id}"), headers=ops,
                     timeout=10)), "the trace in the Jaeger API")
    (trace,) = jaeger["data"]
    spans = {s["operationName"]: s for s in trace["spans"]}
    assert set(spans) == {"GET /basket", "SELECT basket"}
    child = spans["SELECT basket"]
    assert child["references"] == [{"refType": "CHILD_OF", "traceID": trace_id,
                                    "spanID": spans["GET /basket"]["spanID"]}]
    assert child["duration"] >= 20_000  # microseconds
    assert trace["processes"][child["processID"]]["serviceName"] == service
    services = requests.get(_url(stack, "telemetry_query", "/api/services"), headers=ops,
                            timeout=10).json()["data"]
    assert service in services

    native = _wait(lambda: (lambda r: r.json() if r.status_code == 200 and r.json().get(
        "logs") else None)(requests.get(
            _url(stack, "telemetry_query", f"/v1/traces/{trace_id}"), headers=ops,
            timeout=10)), "the trace with its logs in the native API")
    assert {s["name"] for s in native["spans"]} == {"GET /basket", "SELECT basket"}
    assert [log["body"] for log in native["logs"]] == ["basket is large"]


def test_the_product_observes_itself(stack: dict[str, Any]) -> None:
    ops = _operator(stack)
    requests.get(_url(stack, "characters", "/characters"), headers=ops, timeout=10)
    found = _wait(lambda: (lambda r: r.json()["data"] if r.status_code == 200 and r.json()[
        "data"] else None)(requests.get(
            _url(stack, "telemetry_query", "/api/traces"), headers=ops, timeout=10,
            params={"service": "characters", "operation": "GET /characters",
                    "lookback": "1h", "limit": 5})), "the characters function's own spans")
    span = found[0]["spans"][0]
    assert span["operationName"] == "GET /characters"
    tags = {t["key"]: t["value"] for t in span["tags"]}
    assert tags["http.route"] == "/characters"


def test_otlp_json_is_read_back_too(stack: dict[str, Any]) -> None:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from tests.integration.test_telemetry_ingest import JsonExporter

    service = f"json-{uuid.uuid4().hex[:6]}"
    exporter = JsonExporter(_url(stack, "span_ingest", "/v1/traces"))
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("e2e").start_as_current_span("json op",
                                                          attributes={"n": 7}) as span:
        pass
    provider.shutdown()
    assert [r.status_code for r in exporter.responses] == [200]
    trace_id = f"{span.get_span_context().trace_id:032x}"
    ops = _operator(stack)
    found = _wait(lambda: (lambda r: r.json() if r.status_code == 200 else None)(
        requests.get(_url(stack, "telemetry_query", f"/api/traces/{trace_id}"), headers=ops,
                     timeout=10)), "the JSON-sent trace")
    (only,) = found["data"][0]["spans"]
    assert only["operationName"] == "json op"
    assert {"key": "n", "type": "int64", "value": 7} in only["tags"]
