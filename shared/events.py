"""The event envelope every Pub/Sub message carries, and awaited publishing.

Envelope: JSON `{id, type, occurred_at, schema, data}`. Trace context travels in message
attributes (`traceparent`), next to `type` and `id`, so consumers can filter and correlate
without parsing the body.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared import clients, context

PUBLISH_TIMEOUT_S = 30.0


class EnvelopeError(ValueError):
    """A message body that is not a valid envelope (a permanent failure: it goes to dead letter)."""


@dataclass(frozen=True)
class Envelope:
    type: str
    data: dict[str, Any]
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    occurred_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    schema: int = 1

    def to_json(self) -> bytes:
        return json.dumps(
            {"id": self.id, "type": self.type, "occurred_at": self.occurred_at,
             "schema": self.schema, "data": self.data},
            separators=(",", ":"), default=str,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Envelope:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise EnvelopeError("message data is not JSON") from exc
        if not isinstance(body, dict):
            raise EnvelopeError("envelope must be a JSON object")
        missing = [k for k in ("id", "type", "occurred_at", "data") if k not in body]
        if missing:
            raise EnvelopeError(f"envelope lacks {', '.join(missing)}")
        if not isinstance(body["data"], dict) or not isinstance(body["type"], str):
            raise EnvelopeError("envelope has a malformed type or data")
        schema = body.get("schema", 1)
        if not isinstance(schema, int) or isinstance(schema, bool):
            raise EnvelopeError("envelope schema must be an integer")
        return cls(type=body["type"], data=body["data"], id=str(body["id"]),
                   occurred_at=str(body["occurred_at"]), schema=schema)

    def attributes(self) -> dict[str, str]:
        attrs = {"type": self.type, "id": self.id, "schema": str(self.schema)}
        ctx = context.current()
        if ctx is not None:
            attrs["traceparent"] = ctx.traceparent
        return attrs


def publish(topic: str, envelope: Envelope, attributes: dict[str, str] | None = None) -> str:
    """Publish and wait for the server's ack (after the response the CPU may be throttled).

    Returns the message id; raises on failure so callers can retry or leave it to the outbox.
    """
    attrs = envelope.attributes() | (attributes or {})
    future = clients.publisher().publish(clients.topic_path(topic), envelope.to_json(), **attrs)
    return str(future.result(timeout=PUBLISH_TIMEOUT_S))
