"""Turns Pub/Sub push deliveries into calls of a plain handler.

Accepts what production and the local cloud send to a consumer's URL:
- a Pub/Sub push request (`{"message": {...}, "subscription": "...", "deliveryAttempt": n}`),
  which is what the explicit push subscriptions in the manifest deliver;
- a binary-mode CloudEvent (`ce-type: google.cloud.pubsub.topic.v1.messagePublished`, data
  `{message, subscription}`), which is what Eventarc and the local bridge deliver;
- a structured-mode CloudEvent (`application/cloudevents+json`).

Contract: the handler returns to acknowledge and raises to be retried (a non-2xx answer is a
nack; after the subscription's max attempts the message goes to its dead-letter topic). A
malformed delivery is 400: nacked, so it ends in the dead-letter topic and is never lost.
Consumers are HTTP functions so they also answer `GET /healthz` like every other function.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import flask

from shared import errors
from shared.config import get_settings
from shared.events import Envelope, EnvelopeError
from shared.http import Call, Router
from shared.validation import parse_json

log = logging.getLogger("shared.pubsub_push")

PUBSUB_CE_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
MAX_PUSH_BYTES = 11 * 1024 * 1024  # a Pub/Sub message is at most 10 MB, plus the JSON wrapper


@dataclass(frozen=True)
class PushMessage:
    id: str
    data: bytes
    attributes: dict[str, str] = field(default_factory=dict)
    publish_time: str | None = None
    subscription: str | None = None
    delivery_attempt: int | None = None

    def envelope(self) -> Envelope:
        """The JSON envelope this message carries; 422 (and dead letter) when it has none."""
        try:
            return Envelope.from_json(self.data)
        except EnvelopeError as exc:
            raise errors.ValidationFailed(str(exc), code="invalid_envelope") from None

    def json(self) -> Any:
        """The data as JSON (e.g. a Cloud Scheduler payload); {} when empty."""
        if not self.data:
            return {}
        try:
            return json.loads(self.data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise errors.ValidationFailed("message data is not JSON", code="invalid_data") from None


_PARSED = "app.push_body"  # the decoded delivery, kept on the request: decoded once


def _delivery_body(request: flask.Request) -> dict[str, Any]:
    """The `{message, subscription, deliveryAttempt}` object of any accepted delivery shape.
    Decoded once per request (the trace source and the handler both need it)."""
    cached = request.environ.get(_PARSED)
    if cached is None:
        cached = request.environ[_PARSED] = _decode_delivery(request)
    return cached  # type: ignore[no-any-return]


def _decode_delivery(request: flask.Request) -> dict[str, Any]:
    body = parse_json(request.get_data(cache=True) or b"null", "push body", "invalid_push")
    ce_type = request.headers.get("ce-type")
    if request.mimetype == "application/cloudevents+json" and isinstance(body, dict):
        ce_type, body = body.get("type"), body.get("data")
    if ce_type is not None and ce_type != PUBSUB_CE_TYPE:
        raise errors.BadRequest(f"unsupported CloudEvent type {ce_type}", code="invalid_push")
    if not isinstance(body, dict) or not isinstance(body.get("message"), dict):
        raise errors.BadRequest("push body has no message", code="invalid_push")
    return body


def parse_push(request: flask.Request) -> PushMessage:
    """Read a push delivery in any of the accepted shapes; BadRequest when it is none of them."""
    body = _delivery_body(request)
    message = body["message"]
    message_id = message.get("messageId") or message.get("message_id") or request.headers.get(
        "ce-id")
    if not isinstance(message_id, str) or not message_id:
        raise errors.BadRequest("push message has no id", code="invalid_push")
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
    ):
        raise errors.BadRequest("message attributes must map strings", code="invalid_push")
    raw = message.get("data") or ""
    try:
        data = base64.b64decode(raw, validate=True) if isinstance(raw, str) else None
    except (binascii.Error, ValueError):
        data = None
    if data is None:
        raise errors.BadRequest("message data is not base64", code="invalid_push")
    attempt = body.get("deliveryAttempt")
    return PushMessage(
        id=message_id,
        data=data,
        attributes=attributes,
        publish_time=message.get("publishTime") or message.get("publish_time"),
        subscription=body.get("subscription") if isinstance(body.get("subscription"), str)
        else None,
        delivery_attempt=attempt if isinstance(attempt, int) and not isinstance(attempt, bool)
        else None,
    )


def _verify_push_identity(request: flask.Request) -> None:
    """In production, only Pub/Sub's OIDC token for our invoker account may deliver."""
    settings = get_settings()
    if not settings.push_audience:
        return
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        raise errors.Unauthorized("push delivery without a bearer token")
    from google.auth import exceptions as auth_exceptions
    from google.auth.transport import requests as google_requests
    from google.oauth2 import id_token

    try:
        claims = id_token.verify_oauth2_token(  # type: ignore[no-untyped-call]
            header.removeprefix("Bearer "), google_requests.Request(), settings.push_audience
        )
    except auth_exceptions.TransportError:
        # Google's certificates could not be fetched: retryable, so nack with a 503.
        raise errors.ServiceUnavailable("cannot verify push tokens right now") from None
    except (ValueError, auth_exceptions.GoogleAuthError):
        raise errors.Unauthorized("push token is invalid") from None
    if settings.push_invoker_email and (
        claims.get("email") != settings.push_invoker_email or not claims.get("email_verified")
    ):
        raise errors.Forbidden("push token is not from the invoker account")


def message_trace_headers(request: flask.Request) -> Mapping[str, str]:
    """Trace headers for a delivery: the message's `traceparent` attribute when it has one, so
    the consumer's logs and response join the producer's trace; else the request's headers."""
    if request.method == "POST":
        try:
            parent = _delivery_body(request)["message"].get("attributes", {}).get("traceparent")
        except (errors.AppError, AttributeError):
            parent = None  # parse_push answers the malformed delivery with a 400
        if isinstance(parent, str):
            return {"traceparent": parent, "X-Request-Id": request.headers.get("X-Request-Id", "")}
    return dict(request.headers.items())


def push_function(service: str, handle: Callable[[PushMessage], None]) -> Router:
    """A router for a Pub/Sub consumer: `POST /` delivers, `GET /healthz` answers health."""
    router = Router(service, max_body_bytes=MAX_PUSH_BYTES, trace_source=message_trace_headers)

    @router.route("POST", "/", summary="Pub/Sub push delivery")
    def deliver(call: Call) -> None:
        _verify_push_identity(call.request)
        message = parse_push(call.request)
        log.info("delivery %s attempt %s", message.id, message.delivery_attempt or 1,
                 extra={"messageId": message.id, "subscription": message.subscription})
        handle(message)

    return router
