"""Spans of this instance's work, exported as OTLP/HTTP JSON so the product can observe itself
(its own `span_ingest`, or any OpenTelemetry Collector).

Every request handled by `shared.http.Router` is a server span (`METHOD /route/{template}`);
code opens child spans with `span(...)`, such as the model call of a chat turn. Spans share the
request's trace context (`shared.context`), so a span, the log lines and the `traceparent`
answered to the caller name the same trace and span.

Export is on when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (or `OTEL_EXPORTER_OTLP_ENDPOINT`, with
`/v1/traces` appended) is set, as in the OpenTelemetry SDKs; otherwise spans cost a few objects
and are dropped. Finished spans are queued and sent by one background thread in batches (every
`EXPORT_INTERVAL_S`, or sooner when `BATCH_SIZE` are waiting), and on shutdown. The queue is
bounded: when the receiver is slow or down, spans are dropped, never requests slowed. This is
deliberately not the OpenTelemetry SDK: importing it costs cold-start time, and this needs a
few dozen lines of it.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from shared import context

log = logging.getLogger(__name__)

EXPORT_INTERVAL_S = 1.0
BATCH_SIZE = 256
MAX_QUEUED = 4096
EXPORT_TIMEOUT_S = 5.0
KINDS = {"internal": 1, "server": 2, "client": 3, "producer": 4, "consumer": 5}
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2


@dataclass
class Span:
    name: str
    trace: context.TraceContext  # its trace id, own span id and parent span id
    kind: str = "internal"
    start_ns: int = field(default_factory=time.time_ns)
    end_ns: int = 0
    attributes: dict[str, Any] = field(default_factory=dict)
    status: int = STATUS_UNSET
    status_message: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)

    def set(self, **attributes: Any) -> None:
        self.attributes.update(attributes)

    def error(self, message: str) -> None:
        self.status, self.status_message = STATUS_ERROR, message[:256]

    def record_exception(self, exc: BaseException) -> None:
        self.events.append({"name": "exception", "time_ns": time.time_ns(), "attributes": {
            "exception.type": type(exc).__name__, "exception.message": str(exc)[:512]}})


_current_span: ContextVar[Span | None] = ContextVar("current_span", default=None)


def current_span() -> Span | None:
    return _current_span.get()


@contextmanager
def span(name: str, kind: str = "internal", **attributes: Any) -> Iterator[Span]:
    """A child of the current span (or of the current trace context), current for the block.
    An exception escaping the block marks it as an error and is recorded on it."""
    with _bound(start_span(name, kind, **attributes)) as opened:
        yield opened


def start_span(name: str, kind: str = "internal", **attributes: Any) -> Span:
    """A child of the current span (or trace context) that is not made current: for work
    that outlives a block, such as a generator. Finish it with `end_span`."""
    parent = _current_span.get()
    ambient = parent.trace if parent else context.current()
    trace = ambient.child() if ambient else context.from_headers({})
    return Span(name, trace, kind, attributes=dict(attributes))


def end_span(finished: Span, exc: BaseException | None = None) -> None:
    if exc is not None:
        finished.record_exception(exc)
        if finished.status != STATUS_ERROR:
            finished.error(type(exc).__name__)
    finished.end_ns = time.time_ns()
    _exporter().submit(finished)


@contextmanager
def server_span(name: str, trace: context.TraceContext, **attributes: Any) -> Iterator[Span]:
    """The span of a request: it takes the request's own span id, so the `traceparent`
    answered and every log line name it."""
    with _bound(Span(name, trace, "server", attributes=dict(attributes))) as opened:
        yield opened


@contextmanager
def _bound(opened: Span) -> Iterator[Span]:
    token = _current_span.set(opened)
    failure: BaseException | None = None
    try:
        with context.bound(opened.trace):
            yield opened
    except BaseException as exc:
        failure = exc
        raise
    finally:
        _current_span.reset(token)
        end_span(opened, failure)


def endpoint() -> str | None:
    traces = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if traces:
        return traces
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    return f"{base.rstrip('/')}/v1/traces" if base else None


def export_headers() -> dict[str, str]:
    """`OTEL_EXPORTER_OTLP_TRACES_HEADERS` (or `OTEL_EXPORTER_OTLP_HEADERS`): comma-separated
    `key=value` pairs, values URL-encoded, e.g. `authorization=Bearer%20tt_...`."""
    from urllib.parse import unquote

    raw = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
           or os.environ.get("OTEL_EXPORTER_OTLP_HEADERS") or "")
    headers = {}
    for pair in raw.split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            headers[key.strip()] = unquote(value.strip())
    return headers


def resource_attributes() -> dict[str, Any]:
    """Who sent the spans, in OpenTelemetry's resource conventions."""
    service = (os.environ.get("OTEL_SERVICE_NAME") or os.environ.get("K_SERVICE")
               or os.environ.get("FUNCTION_TARGET") or "unknown_service")
    attributes: dict[str, Any] = {
        "service.name": service, "deployment.environment.name": os.environ.get("APP_ENV", ""),
        "cloud.provider": "gcp", "cloud.platform": "gcp_cloud_run",
        "telemetry.sdk.name": "shared.tracing", "telemetry.sdk.language": "python"}
    if revision := os.environ.get("K_REVISION"):
        attributes["service.version"] = revision
    return attributes


def _value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}  # OTLP/JSON: 64-bit integers as strings
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, list | tuple):
        return {"arrayValue": {"values": [_value(v) for v in value]}}
    return {"stringValue": str(value)}


def _attributes(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": _value(v)} for k, v in values.items() if v is not None]


def encode(spans: list[Span], resource: dict[str, Any]) -> dict[str, Any]:
    """An OTLP `ExportTraceServiceRequest` in its JSON mapping (hex ids, string int64s)."""
    return {"resourceSpans": [{
        "resource": {"attributes": _attributes(resource)},
        "scopeSpans": [{"scope": {"name": "shared.tracing"}, "spans": [{
            "traceId": s.trace.trace_id, "spanId": s.trace.span_id,
            **({"parentSpanId": s.trace.parent_span_id} if s.trace.parent_span_id else {}),
            "name": s.name, "kind": KINDS.get(s.kind, 1),
            "startTimeUnixNano": str(s.start_ns), "endTimeUnixNano": str(s.end_ns),
            "attributes": _attributes(s.attributes),
            "events": [{"name": e["name"], "timeUnixNano": str(e["time_ns"]),
                        "attributes": _attributes(e["attributes"])} for e in s.events],
            "status": {"code": s.status,
                       **({"message": s.status_message} if s.status_message else {})},
        } for s in spans]}],
    }]}


class Exporter:
    """A bounded queue and one daemon thread that posts batches to the OTLP endpoint."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self.headers = export_headers()
        self.queue: queue.Queue[Span] = queue.Queue(MAX_QUEUED)
        self.dropped = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def submit(self, finished: Span) -> None:
        if self.url is None:
            return
        try:
            self.queue.put_nowait(finished)
        except queue.Full:
            self.dropped += 1
            return
        if self.queue.qsize() >= BATCH_SIZE:
            self._wake.set()
        self._ensure_thread()

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="otlp-export",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(EXPORT_INTERVAL_S)
            self._wake.clear()
            self.flush()

    def flush(self) -> int:
        """Send everything queued now; the number of spans sent."""
        sent = 0
        while True:
            batch: list[Span] = []
            while len(batch) < BATCH_SIZE:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            if not batch:
                return sent
            sent += self._post(batch)

    def _post(self, batch: list[Span]) -> int:
        import urllib.request  # only instances that export pay for it (and for ssl)

        assert self.url is not None
        body = json.dumps(encode(batch, resource_attributes()), separators=(",", ":")).encode()
        request = urllib.request.Request(self.url, data=body, method="POST",  # noqa: S310
                                         headers={**self.headers,
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=EXPORT_TIMEOUT_S):  # noqa: S310
                return len(batch)
        except Exception as exc:  # noqa: BLE001 - telemetry must never break the product
            self.dropped += len(batch)
            log.warning("span export to %s failed: %s", self.url, type(exc).__name__)
            return 0


_instance: Exporter | None = None
_instance_lock = threading.Lock()


def _exporter() -> Exporter:
    global _instance  # one exporter per instance, created on first use
    if _instance is None:
        with _instance_lock:
            if _instance is None:
                _instance = Exporter(endpoint())
                atexit.register(_instance.flush)
    return _instance


def flush() -> int:
    """Send queued spans now (tests; shutdown)."""
    return _exporter().flush()


def reset() -> None:
    """Forget the exporter, so the endpoint is read again (tests)."""
    global _instance
    with _instance_lock:
        if _instance is not None:
            _instance.flush()
        _instance = None

