"""Webhook destinations, their payloads, and exactly-once delivery.

Destinations (`webhooks` rows) are managed by operators. The HMAC secret is generated here,
answered once at creation, and never answered or logged again; the row keeps it sealed
(`shared.sealed`, AES-256-GCM under `WEBHOOK_SECRET_KEYS`), opened only to sign a delivery.

A notification becomes one `webhook_deliveries` row per matching destination (unique on
notification and destination) in the transaction that creates it, and one `webhook.delivery`
message on `webhooks.deliveries` through the outbox. `webhook_sender` POSTs it: a non-2xx answer
or a timeout raises, so Pub/Sub retries with the subscription's backoff and dead-letters it after
the maximum attempts. The row is locked while it is sent and `delivered_at` is recorded with the
success, so a redelivered or duplicated message never POSTs a delivered notification again.

Formats:
- `generic`: `{id, type, created_at, summary, data}` signed with HMAC-SHA256 over
  `"{timestamp}.{body}"`, sent as `X-Signature: t=<unix seconds>,v1=<hex digest>`;
- `slack`: an incoming-webhook message, `{"text": ..., "blocks": [...]}`;
- `alertmanager`: Alertmanager's webhook payload, version 4.
Every format carries the signature header, so any receiver can verify it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared import errors, sealed
from shared.events import Envelope

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from shared.error_groups import Notification
    from shared.outbox import OutboxTransaction

log = logging.getLogger("shared.webhooks")

DELIVERIES_TOPIC = "webhooks.deliveries"
DELIVERY_EVENT = "webhook.delivery"
FORMATS = ("generic", "slack", "alertmanager")
KINDS = ("error.new", "error.regression", "error.threshold", "alert.firing", "alert.resolved")
SEND_TIMEOUT_S = 10.0
SIGNATURE_HEADER = "X-Signature"
MAX_WEBHOOKS = 200
# Alertmanager's zero time: "the alert has not ended".
ZERO_TIME = "0001-01-01T00:00:00Z"
_COLUMNS = "id, name, url, format, kinds, enabled, created_by, created_at, updated_at"


# --- destinations -----------------------------------------------------------------------------


def _check_url(url: str) -> str:
    from urllib.parse import urlsplit

    from shared.config import get_settings

    parts = urlsplit(url)
    allowed = ("https",) if get_settings().is_production else ("https", "http")
    if parts.scheme not in allowed or not parts.hostname:
        raise errors.ValidationFailed(f"url must be an absolute {' or '.join(allowed)} URL",
                                      code="invalid_url")
    return url


def _check_kinds(kinds: Any) -> list[str]:
    if not isinstance(kinds, list) or not kinds or any(k not in KINDS for k in kinds):
        raise errors.ValidationFailed(f"kinds must be a non-empty list of {', '.join(KINDS)}",
                                      code="invalid_kinds")
    return sorted(set(kinds))


def _view(row: Any) -> dict[str, Any]:
    return {"id": str(row.id), "name": row.name, "url": row.url, "format": row.format,
            "kinds": list(row.kinds), "enabled": row.enabled,
            "created_by": str(row.created_by) if row.created_by else None,
            "created_at": row.created_at.isoformat(), "updated_at": row.updated_at.isoformat()}


def create(conn: Connection, operator: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """A new destination; the answer is the only one ever to carry its secret."""
    import sqlalchemy

    count = conn.execute(sqlalchemy.text("SELECT count(*) FROM webhooks")).scalar_one()
    if count >= MAX_WEBHOOKS:
        raise errors.Conflict(f"at most {MAX_WEBHOOKS} webhooks", code="too_many_webhooks")
    webhook_id = str(uuid.uuid4())
    secret = "whsec_" + secrets.token_urlsafe(32)
    row = conn.execute(sqlalchemy.text(f"""
        INSERT INTO webhooks (id, name, url, format, kinds, enabled, secret, created_by)
        VALUES (:id, :name, :url, :format, :kinds, :enabled, :secret, :by)
        RETURNING {_COLUMNS}
    """), {"id": webhook_id, "name": body["name"], "url": _check_url(body["url"]),
           "format": body.get("format", "generic"),
           "kinds": _check_kinds(body.get("kinds", list(KINDS))),
           "enabled": body.get("enabled", True),
           "secret": sealed.seal(secret, context=webhook_id),  # stored sealed, never plain
           "by": operator}).one()
    log.info("webhook %s created", row.id, extra={"webhookId": str(row.id)})
    return _view(row) | {"secret": secret}


def listing(conn: Connection) -> dict[str, Any]:
    import sqlalchemy

    rows = conn.execute(sqlalchemy.text(
        f"SELECT {_COLUMNS} FROM webhooks ORDER BY created_at, id LIMIT {MAX_WEBHOOKS}"))
    return {"items": [_view(r) for r in rows]}


def get(conn: Connection, webhook_id: str) -> dict[str, Any]:
    import sqlalchemy

    row = conn.execute(sqlalchemy.text(f"SELECT {_COLUMNS} FROM webhooks WHERE id = :id"),
                       {"id": webhook_id}).first()
    if row is None:
        raise errors.NotFound("no such webhook", code="webhook_not_found")
    return _view(row)


def update(conn: Connection, webhook_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
    import sqlalchemy

    changes = dict(body)
    if "url" in changes:
        _check_url(changes["url"])
    if "kinds" in changes:
        changes["kinds"] = _check_kinds(changes["kinds"])
    if not changes:
        return get(conn, webhook_id)
    assignments = ", ".join(f"{name} = :{name}" for name in sorted(changes))
    row = conn.execute(sqlalchemy.text(f"""
        UPDATE webhooks SET {assignments}, updated_at = now() WHERE id = :id
        RETURNING {_COLUMNS}
    """), changes | {"id": webhook_id}).first()
    if row is None:
        raise errors.NotFound("no such webhook", code="webhook_not_found")
    return _view(row)


def delete(conn: Connection, webhook_id: str) -> None:
    import sqlalchemy

    if conn.execute(sqlalchemy.text("DELETE FROM webhooks WHERE id = :id RETURNING 1"),
                    {"id": webhook_id}).first() is None:
        raise errors.NotFound("no such webhook", code="webhook_not_found")


def reseal(conn: Connection) -> int:
    """Seal every destination's secret with the newest key (after a rotation, and for rows
    written before sealing); returns how many rows changed. Row locks: a concurrent reseal
    waits, and each row is rewritten in this transaction or not at all."""
    import sqlalchemy

    rows = conn.execute(sqlalchemy.text(
        "SELECT id, secret FROM webhooks ORDER BY id FOR UPDATE")).all()
    newest = sealed.key_id()
    changed = 0
    for webhook_id, stored in rows:
        if sealed.sealed_with(stored) == newest:
            continue
        plain = sealed.unseal(stored, context=str(webhook_id))
        conn.execute(sqlalchemy.text("UPDATE webhooks SET secret = :s WHERE id = :id"),
                     {"s": sealed.seal(plain, context=str(webhook_id)), "id": webhook_id})
        changed += 1
    return changed


# --- fan-out ----------------------------------------------------------------------------------


def enqueue(tx: OutboxTransaction, notification: Notification) -> int:
    """One delivery per enabled destination that wants this kind; how many were new."""
    import sqlalchemy

    rows = tx.conn.execute(sqlalchemy.text("""
        INSERT INTO webhook_deliveries (id, notification_id, webhook_id)
        SELECT gen_random_uuid(), :nid, w.id FROM webhooks w
        WHERE w.enabled AND :kind = ANY(w.kinds)
        ON CONFLICT (notification_id, webhook_id) DO NOTHING
        RETURNING id
    """), {"nid": notification.id, "kind": notification.kind}).all()
    for (delivery_id,) in rows:
        tx.emit(DELIVERIES_TOPIC, Envelope(DELIVERY_EVENT, {"delivery_id": str(delivery_id)}))
    return len(rows)


# --- payloads ---------------------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value: `t=<timestamp>,v1=<HMAC-SHA256(secret, "t.body") hex>`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(secret: str, header: str, body: bytes, tolerance_s: float = 300.0,
           now: float | None = None) -> bool:
    """What a receiver does: recompute the signature, compare in constant time, and refuse
    stale timestamps (replays)."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), f"t={timestamp},v1={fields['v1']}")


@dataclass(frozen=True)
class Message:
    """What a delivery sends: the notification's fields and the destination's."""

    notification_id: str
    kind: str
    subject: str
    summary: str
    payload: dict[str, Any]
    occurred_at: datetime
    receiver: str


def generic_payload(m: Message) -> dict[str, Any]:
    return {"id": m.notification_id, "type": m.kind, "created_at": m.occurred_at.isoformat(),
            "summary": m.summary, "data": m.payload}


def slack_payload(m: Message) -> dict[str, Any]:
    p = m.payload
    icon = {"error.new": ":new:", "error.regression": ":repeat:",
            "error.threshold": ":rotating_light:", "alert.firing": ":fire:",
            "alert.resolved": ":white_check_mark:"}.get(m.kind, ":bell:")
    facts = [f"*{k}*: {p[k]}" for k in
             ("service", "environment", "exception_type", "occurrences", "users", "value",
              "threshold") if p.get(k) not in (None, "")]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": m.kind[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{icon} {m.summary}"[:3000]}},
    ]
    if facts:
        blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                                   "text": "\n".join(facts)[:3000]}})
    blocks.append({"type": "context", "elements": [
        {"type": "mrkdwn", "text": f"{m.subject} · {m.occurred_at.isoformat()}"[:3000]}]})
    return {"text": f"{icon} {m.summary}"[:3000], "blocks": blocks}


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value) if value else ZERO_TIME


def alertmanager_payload(m: Message) -> dict[str, Any]:
    """Alertmanager's webhook body (version 4): one alert per notification."""
    p = m.payload
    resolved = m.kind == "alert.resolved"
    status = "resolved" if resolved else "firing"
    if m.kind.startswith("alert."):
        labels = {"alertname": str(p.get("rule_name") or p.get("rule_id") or "alert"),
                  "rule_id": str(p.get("rule_id") or ""), "kind": str(p.get("kind") or ""),
                  "tenant": str(p.get("tenant") or ""), "service": str(p.get("service") or "")}
        annotations = {"summary": m.summary, "value": str(p.get("value")),
                       "threshold": str(p.get("threshold"))}
        starts = _iso(p.get("started_at") or m.occurred_at)
        ends = m.occurred_at.isoformat() if resolved else ZERO_TIME
    else:
        labels = {"alertname": {"error.new": "NewError", "error.regression": "ErrorRegression",
                                "error.threshold": "ErrorThreshold"}.get(m.kind, "Error"),
                  "fingerprint": m.subject, "tenant": str(p.get("tenant") or ""),
                  "service": str(p.get("service") or ""),
                  "environment": str(p.get("environment") or ""),
                  "exception_type": str(p.get("exception_type") or "")}
        annotations = {"summary": m.summary, "message": str(p.get("message") or ""),
                       "occurrences": str(p.get("occurrences")), "users": str(p.get("users"))}
        starts = _iso(p.get("first_seen") or m.occurred_at)
        ends = ZERO_TIME
    labels = {k: v for k, v in labels.items() if v}
    group_labels = {"alertname": labels["alertname"]}
    alert_fp = hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "version": "4",
        "groupKey": "{}:" + json.dumps(group_labels, sort_keys=True, separators=(",", ":")),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": m.receiver,
        "groupLabels": group_labels,
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "",
        "alerts": [{"status": status, "labels": labels, "annotations": annotations,
                    "startsAt": starts, "endsAt": ends, "generatorURL": "",
                    "fingerprint": alert_fp}],
    }


PAYLOADS = {"generic": generic_payload, "slack": slack_payload,
            "alertmanager": alertmanager_payload}


def request_for(m: Message, fmt: str, secret: str, delivery_id: str,
                timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one POST."""
    body = json.dumps(PAYLOADS[fmt](m), separators=(",", ":"), default=str).encode()
    stamp = int(time.time()) if timestamp is None else timestamp
    return body, {"Content-Type": "application/json", "User-Agent": "chat-rewards-apm-webhooks",
                  SIGNATURE_HEADER: sign(secret, stamp, body),
                  "X-Webhook-Id": delivery_id, "X-Webhook-Event": m.kind}


# --- sending ----------------------------------------------------------------------------------


class DeliveryFailed(errors.ServiceUnavailable):
    """The receiver did not accept it: answered 503 so Pub/Sub retries with backoff."""


def deliver(delivery_id: str, timeout_s: float = SEND_TIMEOUT_S) -> str:
    """Send one delivery unless it was delivered: 'delivered', 'already_delivered' or 'gone'
    (its destination or notification was deleted); raises DeliveryFailed to be retried."""
    import requests
    import sqlalchemy

    from shared import db

    failure: str | None = None
    with db.transaction() as conn:
        row = conn.execute(sqlalchemy.text("""
            SELECT d.id, d.delivered_at, w.id AS wid, w.name, w.url, w.format, w.secret,
                   w.enabled,
                   n.id AS nid, n.kind, n.subject, n.summary, n.payload, n.occurred_at
            FROM webhook_deliveries d
            JOIN webhooks w ON w.id = d.webhook_id
            JOIN notifications n ON n.id = d.notification_id
            WHERE d.id = :id
            FOR UPDATE OF d SKIP LOCKED
        """), {"id": delivery_id}).first()
        if row is None:
            exists = conn.execute(sqlalchemy.text(
                "SELECT 1 FROM webhook_deliveries WHERE id = :id"), {"id": delivery_id}).first()
            if exists is not None:  # another instance is sending it right now
                raise DeliveryFailed("delivery in progress elsewhere", code="delivery_busy")
            return "gone"
        if row.delivered_at is not None:
            return "already_delivered"
        if not row.enabled:
            return "gone"
        payload = row.payload if isinstance(row.payload, dict) else json.loads(row.payload)
        message = Message(str(row.nid), row.kind, row.subject, row.summary, payload,
                          row.occurred_at, row.name)
        secret = sealed.unseal(row.secret, context=str(row.wid))
        body, headers = request_for(message, row.format, secret, str(row.id))
        status: int | None = None
        try:
            response = requests.post(row.url, data=body, headers=headers, timeout=timeout_s,
                                     allow_redirects=False)
            status = response.status_code
            if not 200 <= status < 300:
                failure = f"HTTP {status}"
        except requests.RequestException as exc:
            failure = type(exc).__name__
        conn.execute(sqlalchemy.text("""
            UPDATE webhook_deliveries
            SET attempts = attempts + 1, last_status = :status, last_error = :error,
                last_attempt_at = now(),
                delivered_at = CASE WHEN :ok THEN now() ELSE NULL END
            WHERE id = :id
        """), {"id": delivery_id, "status": status, "error": failure, "ok": failure is None})
    if failure is not None:
        log.warning("webhook delivery %s failed: %s", delivery_id, failure,
                    extra={"deliveryId": delivery_id})
        raise DeliveryFailed(f"receiver failed: {failure}", code="delivery_failed")
    log.info("webhook delivery %s delivered", delivery_id, extra={"deliveryId": delivery_id})
    return "delivered"


if __name__ == "__main__":
    # `python -m shared.webhooks reseal`: after rotating WEBHOOK_SECRET_KEYS (README).
    import sys

    from shared import db

    if sys.argv[1:] != ["reseal"]:
        sys.exit("usage: python -m shared.webhooks reseal")
    with db.transaction() as connection:
        sys.stdout.write(f"{reseal(connection)} webhook secret(s) resealed\n")
