"""A fake OTLP/HTTP traces receiver (our own boundary) for tests of the product's spans."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span


class Receiver:
    """An OTLP/HTTP traces endpoint that keeps what it is sent."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1/traces"

    def spans(self) -> list[Span]:
        out: list[Span] = []
        for body in self.bodies:
            request = _parse(body)
            for resource_spans in request.resource_spans:
                for scope in resource_spans.scope_spans:
                    out.extend(scope.spans)
        return out

    def resources(self) -> list[dict[str, str]]:
        request = _parse(self.bodies[0])
        return [{a.key: a.value.string_value for a in rs.resource.attributes}
                for rs in request.resource_spans]


def _parse(body: dict[str, Any]) -> ExportTraceServiceRequest:
    """OTLP/JSON differs from protobuf's JSON mapping in one way that matters here: trace and
    span ids are hex, not base64. Translate them, then let protobuf check everything else."""
    def ids(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (base64.b64encode(bytes.fromhex(v)).decode()
                        if k in ("traceId", "spanId", "parentSpanId") else ids(v))
                    for k, v in node.items()}
        return [ids(v) for v in node] if isinstance(node, list) else node

    return json_format.ParseDict(ids(body), ExportTraceServiceRequest())


def attributes(span: Span) -> dict[str, Any]:
    return {a.key: json_format.MessageToDict(a.value) for a in span.attributes}
