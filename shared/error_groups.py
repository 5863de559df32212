"""Error fan-out: groups new errors by fingerprint, decides what deserves a notification, and
keeps the Firestore live feed dashboards listen to.

Fingerprint: SHA-256 of (tenant, service, exception type, normalized message, top stack frame).
Numbers, hex ids, UUIDs and quoted strings in the message become placeholders, so
"user 42 not found" and "user 7 not found" are one group.

Notifications (rows in `notifications`, each fanned out to the webhook destinations):
- `error.new`: the first occurrence of a fingerprint;
- `error.regression`: a group marked resolved, or silent for `regression_silence`, errs again;
- `error.threshold`: at least `threshold_errors` errors affecting at least `threshold_users`
  distinct users within `threshold_window`.
A regression or a threshold notification of one group is sent at most once per `dedupe_window`,
so a storm of any size yields a handful of notifications. Windows run on the errors' own times
(capped at now), so a replayed backlog is judged as it happened.

Exactly once per delivery: the envelope id is claimed (`shared.dedupe`) in the transaction that
updates the groups and writes the notifications and their webhook deliveries (outbox). The
Firestore writes run inside that transaction, before its commit, as batches that each create a
marker document `error_feed_deliveries/{envelope}-{n}`: a redelivery finds the marker and skips
the batch, so sharded counters are never incremented twice.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared import dedupe, outbox
from shared.events import Envelope

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

log = logging.getLogger("shared.error_groups")

CONSUMER = "error_fanout"
ERROR_BATCH = "telemetry.error_batch"
ALERT_TRANSITION = "alert.transition"
NOTIFICATION_NAMESPACE = uuid.UUID("6f1c4f0e-5a9b-4b8e-9a51-0e7a1d2f3c4b")

# Firestore feed
SHARDS = 10  # counter shards per group: ~10 writes/s sustained instead of ~1
LATEST_PER_SERVICE = 20  # documents kept in services/{service}/latest_errors
FEED_BATCH_WRITES = 450  # Firestore allows 500 writes per batch; one is the marker
MARKER_COLLECTION = "error_feed_deliveries"
MARKER_TTL = timedelta(days=8)  # a Firestore TTL policy on `expires_at` removes old markers

MINUTES_KEPT = timedelta(days=1)  # per-minute counts kept per group (threshold windows)
# Per-group cap on stored distinct users (exact up to the cap, then "at least cap").
USER_CAP = 10_000

_UUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                   r"[0-9a-fA-F]{12}\b")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|`[^`]*`")
_HEX = re.compile(r"\b0[xX][0-9a-fA-F]+\b|\b(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}\b")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_SPACE = re.compile(r"\s+")
_FRAME = re.compile(r"^\s*(File \"|at |#\d+\s)")
MAX_NORMALIZED = 500


def normalize_message(message: str) -> str:
    """The message with its variable parts replaced by placeholders."""
    text = _UUID.sub("<uuid>", message)
    text = _QUOTED.sub("<str>", text)
    text = _HEX.sub("<hex>", text)
    text = _NUMBER.sub("<num>", text)
    return _SPACE.sub(" ", text).strip()[:MAX_NORMALIZED]


def top_frame(stacktrace: str | None) -> str:
    """The first frame line of a stack trace (Python `File "..."`, JVM/JS `at ...`, gdb-like
    `#0 ...`), with line numbers and addresses replaced; "" when there is none."""
    for line in (stacktrace or "").splitlines():
        if _FRAME.match(line):
            frame = _HEX.sub("<hex>", line.strip())
            return _NUMBER.sub("<num>", frame)[:MAX_NORMALIZED]
    return ""


def fingerprint(tenant: str, service: str, exception_type: str, message: str,
                stacktrace: str | None) -> str:
    parts = (tenant, service, exception_type, normalize_message(message), top_frame(stacktrace))
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def error_id(error: Mapping[str, Any]) -> str:
    """A deterministic id of one error occurrence (feed document id)."""
    key = "\x1f".join(str(error.get(k) or "") for k in
                      ("kind", "tenant", "trace_id", "span_id", "time", "message"))
    return hashlib.sha256(key.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Policy:
    threshold_errors: int = 100
    threshold_users: int = 10
    threshold_window: timedelta = timedelta(minutes=5)
    regression_silence: timedelta = timedelta(hours=24)
    dedupe_window: timedelta = timedelta(minutes=30)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Policy:
        env = os.environ if env is None else env

        def number(name: str, default: int) -> int:
            value = int(env.get(name, default))
            if value < 1:
                raise ValueError(f"{name} must be at least 1")
            return value

        return cls(
            threshold_errors=number("ERROR_THRESHOLD_COUNT", 100),
            threshold_users=number("ERROR_THRESHOLD_USERS", 10),
            threshold_window=timedelta(minutes=number("ERROR_THRESHOLD_WINDOW_MIN", 5)),
            regression_silence=timedelta(minutes=number("ERROR_REGRESSION_SILENCE_MIN", 1440)),
            dedupe_window=timedelta(minutes=number("ERROR_NOTIFY_DEDUPE_MIN", 30)),
        )


@dataclass
class Group:
    """One fingerprint's share of a delivery."""

    fingerprint: str
    tenant: str
    service: str
    environment: str
    exception_type: str
    normalized: str
    frame: str
    sample: dict[str, Any]
    occurrences: int = 0
    users: set[str] = field(default_factory=set)
    first: datetime | None = None
    last: datetime | None = None
    minutes: dict[datetime, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Notification:
    id: str
    kind: str
    subject: str
    summary: str
    payload: dict[str, Any]
    occurred_at: datetime


@dataclass
class Outcome:
    duplicate: bool = False
    errors: int = 0
    groups: int = 0
    notifications: list[Notification] = field(default_factory=list)


def _when(value: Any, fallback: datetime) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return fallback
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def aggregate(errors: Iterable[Any], now: datetime
              ) -> tuple[dict[str, Group], list[dict[str, Any]]]:
    """Groups of a batch, and the batch's valid errors (each with its fingerprint and id)."""
    groups: dict[str, Group] = {}
    valid: list[dict[str, Any]] = []
    for error in errors:
        if not isinstance(error, dict):
            continue
        tenant = str(error.get("tenant") or "")
        service = str(error.get("service") or "unknown")
        exception_type = str(error.get("exception_type") or "")
        message = str(error.get("exception_message") or error.get("message") or
                      error.get("name") or "")
        stack = error.get("stacktrace")
        fp = fingerprint(tenant, service, exception_type, message,
                         stack if isinstance(stack, str) else None)
        when = min(_when(error.get("time"), now), now)
        group = groups.get(fp)
        if group is None:
            group = groups[fp] = Group(
                fp, tenant, service, str(error.get("environment") or ""), exception_type,
                normalize_message(message), top_frame(stack if isinstance(stack, str) else None),
                {"message": message[:2000], "name": str(error.get("name") or "")})
        group.occurrences += 1
        user = error.get("user_id")
        if isinstance(user, str) and user:
            group.users.add(user)
        group.first = when if group.first is None else min(group.first, when)
        group.last = when if group.last is None else max(group.last, when)
        minute = when.replace(second=0, microsecond=0)
        group.minutes[minute] = group.minutes.get(minute, 0) + 1
        valid.append(error | {"fingerprint": fp, "error_id": error_id(error), "at": when})
    return groups, valid


def _notification(envelope_id: str, kind: str, subject: str, summary: str,
                  payload: dict[str, Any], at: datetime) -> Notification:
    nid = str(uuid.uuid5(NOTIFICATION_NAMESPACE, f"{envelope_id}:{kind}:{subject}"))
    return Notification(nid, kind, subject, summary, payload | {"summary": summary}, at)


def handle_errors(envelope: Envelope, policy: Policy | None = None,
                  now: datetime | None = None, feed: bool = True) -> Outcome:
    """Apply one `telemetry.error_batch` exactly once; see the module docstring."""
    from shared import webhooks

    policy = policy or Policy.from_env()
    now = now or datetime.now(UTC)
    raw = envelope.data.get("errors")
    groups, valid = aggregate(raw if isinstance(raw, list) else [], now)
    with outbox.transaction() as tx:
        if not dedupe.claim(tx.conn, CONSUMER, envelope.id):
            return Outcome(duplicate=True)
        outcome = Outcome(errors=len(valid), groups=len(groups))
        if groups:
            rows = _apply(tx.conn, envelope.id, groups, policy, outcome)
            for notification in outcome.notifications:
                _store_notification(tx.conn, notification)
                webhooks.enqueue(tx, notification)
            if feed:
                write_feed(envelope.id, rows, valid)
    if feed and valid:
        prune_latest({e["service"] or "unknown" for e in valid})
    return outcome


def handle_alert(envelope: Envelope) -> Outcome:
    """An alert transition notifies when a rule starts firing (from pending) or resolves."""
    from shared import webhooks

    data = envelope.data
    to, before = data.get("to"), data.get("from")
    notify = (to == "firing" and before == "pending") or to == "resolved"
    with outbox.transaction() as tx:
        if not dedupe.claim(tx.conn, CONSUMER, envelope.id):
            return Outcome(duplicate=True)
        outcome = Outcome()
        if notify:
            at = _when(data.get("minute") or envelope.occurred_at, datetime.now(UTC))
            summary = str(data.get("summary") or
                          f"{data.get('rule_name')} {to} on {data.get('service')}")
            notification = _notification(envelope.id, f"alert.{to}",
                                         str(data.get("rule_id") or ""), summary[:1000],
                                         dict(data), at)
            outcome.notifications.append(notification)
            _store_notification(tx.conn, notification)
            webhooks.enqueue(tx, notification)
    return outcome


def _apply(conn: Connection, envelope_id: str, groups: dict[str, Group], policy: Policy,
           outcome: Outcome) -> dict[str, dict[str, Any]]:
    """Update the groups of one delivery; collect notifications; the groups' rows after it."""
    import sqlalchemy

    fps = sorted(groups)  # one lock order for every delivery: no deadlocks between them
    new = set()
    for fp in fps:
        g = groups[fp]
        inserted = conn.execute(sqlalchemy.text("""
            INSERT INTO error_groups (fingerprint, tenant, service, environment, exception_type,
                                      message, top_frame, sample_message, first_seen, last_seen)
            VALUES (:fp, :tenant, :service, :env, :type, :message, :frame, :sample, :first,
                    :last)
            ON CONFLICT (fingerprint) DO NOTHING RETURNING 1
        """), {"fp": fp, "tenant": g.tenant, "service": g.service, "env": g.environment,
               "type": g.exception_type, "message": g.normalized, "frame": g.frame,
               "sample": g.sample["message"], "first": g.first, "last": g.last}).first()
        if inserted is not None:
            new.add(fp)
    before = {r.fingerprint: r for r in conn.execute(sqlalchemy.text("""
        SELECT fingerprint, status, last_seen, occurrences, users FROM error_groups
        WHERE fingerprint = ANY(:fps) ORDER BY fingerprint FOR UPDATE
    """), {"fps": fps})}
    # Distinct users (exact, capped per group) and per-minute counts for the windows.
    user_rows = [(fp, user, groups[fp].last) for fp in fps
                 if before[fp].users < USER_CAP for user in sorted(groups[fp].users)]
    added: dict[str, int] = {}
    if user_rows:
        for fp, n in conn.execute(sqlalchemy.text("""
            WITH input AS (
                SELECT * FROM unnest(CAST(:fps AS text[]), CAST(:users AS text[]),
                                     CAST(:times AS timestamptz[])) AS t(fp, user_id, seen)
            ), upsert AS (
                INSERT INTO error_group_users (fingerprint, user_id, last_seen)
                SELECT fp, user_id, seen FROM input
                ON CONFLICT (fingerprint, user_id)
                DO UPDATE SET last_seen = GREATEST(error_group_users.last_seen,
                                                   EXCLUDED.last_seen)
                RETURNING fingerprint, (xmax = 0) AS inserted
            )
            SELECT fingerprint, count(*) FILTER (WHERE inserted) FROM upsert GROUP BY 1
        """), {"fps": [r[0] for r in user_rows], "users": [r[1] for r in user_rows],
               "times": [r[2] for r in user_rows]}):
            added[fp] = int(n)
    minute_rows = [(fp, minute, n) for fp in fps for minute, n in groups[fp].minutes.items()]
    conn.execute(sqlalchemy.text("""
        INSERT INTO error_group_minutes (fingerprint, minute, occurrences)
        SELECT * FROM unnest(CAST(:fps AS text[]), CAST(:minutes AS timestamptz[]),
                             CAST(:counts AS bigint[]))
        ON CONFLICT (fingerprint, minute)
        DO UPDATE SET occurrences = error_group_minutes.occurrences + EXCLUDED.occurrences
    """), {"fps": [r[0] for r in minute_rows], "minutes": [r[1] for r in minute_rows],
           "counts": [r[2] for r in minute_rows]})
    after = {r.fingerprint: dict(r._mapping) for r in conn.execute(sqlalchemy.text("""
        UPDATE error_groups AS g
        SET occurrences = g.occurrences + t.n, users = g.users + t.added,
            last_seen = GREATEST(g.last_seen, t.last), first_seen = LEAST(g.first_seen, t.first),
            status = 'open', resolved_at = NULL, updated_at = now()
        FROM unnest(CAST(:fps AS text[]), CAST(:ns AS bigint[]), CAST(:added AS bigint[]),
                    CAST(:firsts AS timestamptz[]), CAST(:lasts AS timestamptz[]))
             AS t(fp, n, added, first, last)
        WHERE g.fingerprint = t.fp
        RETURNING g.fingerprint, g.tenant, g.service, g.environment, g.exception_type,
                  g.message, g.top_frame, g.sample_message, g.occurrences, g.users, g.status,
                  g.first_seen, g.last_seen
    """), {"fps": fps, "ns": [groups[fp].occurrences for fp in fps],
           "added": [added.get(fp, 0) for fp in fps],
           "firsts": [groups[fp].first for fp in fps], "lasts": [groups[fp].last for fp in fps]})}
    at = max(g.last for g in groups.values() if g.last is not None)
    since = at - policy.threshold_window
    # Minute counts only serve the threshold window: each group keeps about a day of them.
    conn.execute(sqlalchemy.text(
        "DELETE FROM error_group_minutes WHERE fingerprint = ANY(:fps) AND minute < :before"),
        {"fps": fps, "before": at - max(policy.threshold_window, MINUTES_KEPT)})
    window_errors: dict[str, int] = dict(conn.execute(sqlalchemy.text("""
        SELECT fingerprint, sum(occurrences) FROM error_group_minutes
        WHERE fingerprint = ANY(:fps) AND minute > :since GROUP BY 1
    """), {"fps": fps, "since": since.replace(second=0, microsecond=0)}).all())
    window_users: dict[str, int] = dict(conn.execute(sqlalchemy.text("""
        SELECT fingerprint, count(*) FROM error_group_users
        WHERE fingerprint = ANY(:fps) AND last_seen > :since GROUP BY 1
    """), {"fps": fps, "since": since}).all())
    last_sent = {(r[0], r[1]): r[2] for r in conn.execute(sqlalchemy.text("""
        SELECT subject, kind, max(occurred_at) FROM notifications
        WHERE subject = ANY(:fps) AND kind IN ('error.regression', 'error.threshold')
        GROUP BY 1, 2
    """), {"fps": fps})}

    def recently(fp: str, kind: str, when: datetime) -> bool:
        sent = last_sent.get((fp, kind))
        return sent is not None and abs(when - sent) < policy.dedupe_window

    for fp in fps:
        g, old, row = groups[fp], before[fp], after[fp]
        assert g.first is not None and g.last is not None
        payload = _payload(row)
        label = f"{g.exception_type or 'Error'}: {g.sample['message'][:200]}"
        if fp in new:
            outcome.notifications.append(_notification(
                envelope_id, "error.new", fp, f"New error in {g.service}: {label}",
                payload, g.first))
        regressed = fp not in new and (
            old.status == "resolved" or g.first - old.last_seen > policy.regression_silence)
        if regressed and not recently(fp, "error.regression", g.first):
            outcome.notifications.append(_notification(
                envelope_id, "error.regression", fp,
                f"Regression in {g.service}: {label}", payload, g.first))
        errors_in_window = int(window_errors.get(fp, 0))
        users_in_window = int(window_users.get(fp, 0))
        if (errors_in_window >= policy.threshold_errors
                and users_in_window >= policy.threshold_users
                and not recently(fp, "error.threshold", at)):
            minutes = int(policy.threshold_window.total_seconds() // 60)
            outcome.notifications.append(_notification(
                envelope_id, "error.threshold", fp,
                f"{errors_in_window} errors affecting {users_in_window} users in {minutes} min "
                f"in {g.service}: {label}",
                payload | {"window": {"errors": errors_in_window, "users": users_in_window,
                                      "minutes": minutes}}, at))
    return after


def _payload(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"fingerprint": row["fingerprint"], "tenant": row["tenant"],
            "service": row["service"], "environment": row["environment"],
            "exception_type": row["exception_type"], "message": row["sample_message"],
            "normalized_message": row["message"], "top_frame": row["top_frame"],
            "occurrences": int(row["occurrences"]), "users": int(row["users"]),
            "first_seen": row["first_seen"].isoformat(),
            "last_seen": row["last_seen"].isoformat()}


def _store_notification(conn: Connection, notification: Notification) -> None:
    import json

    import sqlalchemy

    conn.execute(sqlalchemy.text("""
        INSERT INTO notifications (id, kind, subject, summary, payload, occurred_at)
        VALUES (:id, :kind, :subject, :summary, CAST(:payload AS jsonb), :at)
        ON CONFLICT (id) DO NOTHING
    """), {"id": notification.id, "kind": notification.kind, "subject": notification.subject,
           "summary": notification.summary,
           "payload": json.dumps(notification.payload, default=str),
           "at": notification.occurred_at})
    log.info("notification %s %s", notification.kind, notification.subject,
             extra={"notificationId": notification.id, "kind": notification.kind})


GROUP_STATUSES = ("open", "resolved")
MAX_GROUPS = 500


def list_groups(conn: Connection, service: str | None, status: str | None, tenant: str | None,
                limit: int = 100, fingerprint: str | None = None) -> list[dict[str, Any]]:
    """Error groups, most recently seen first, optionally of one service, status, tenant or
    fingerprint."""
    import sqlalchemy

    clauses: list[str] = ["true"]
    params: dict[str, Any] = {"limit": min(limit, MAX_GROUPS)}
    for column, value in (("service", service), ("status", status), ("tenant", tenant),
                          ("fingerprint", fingerprint)):
        if value is not None:
            clauses.append(f"{column} = :{column}")
            params[column] = value
    rows = conn.execute(sqlalchemy.text(
        "SELECT fingerprint, tenant, service, environment, exception_type, message, top_frame, "
        "sample_message, occurrences, users, status, first_seen, last_seen, resolved_at "
        f"FROM error_groups WHERE {' AND '.join(clauses)} "
        "ORDER BY last_seen DESC, fingerprint LIMIT :limit"), params).all()
    return [{"fingerprint": r[0], "tenant": r[1], "service": r[2], "environment": r[3],
             "exceptionType": r[4], "message": r[5], "topFrame": r[6], "sampleMessage": r[7],
             "occurrences": int(r[8]), "users": int(r[9]), "status": r[10],
             "firstSeen": r[11].isoformat(), "lastSeen": r[12].isoformat(),
             "resolvedAt": r[13].isoformat() if r[13] else None} for r in rows]


def resolve(conn: Connection, fp: str) -> bool:
    """Mark a group resolved: its next error is a regression."""
    import sqlalchemy

    return conn.execute(sqlalchemy.text(
        "UPDATE error_groups SET status = 'resolved', resolved_at = now(), updated_at = now() "
        "WHERE fingerprint = :fp RETURNING 1"), {"fp": fp}).first() is not None


# --- Firestore live feed ----------------------------------------------------------------------


def write_feed(envelope_id: str, rows: Mapping[str, Mapping[str, Any]],
               errors: list[dict[str, Any]]) -> int:
    """The delivery's feed writes in as few batches as Firestore allows, each guarded by its
    marker document; the number of batches written (0 when all were written before)."""
    from google.api_core import exceptions
    from google.cloud import firestore

    from shared import clients

    client = clients.firestore_client()
    counts: dict[str, int] = {}
    for error in errors:
        counts[error["fingerprint"]] = counts.get(error["fingerprint"], 0) + 1
    ops: list[tuple[Any, dict[str, Any], bool]] = []  # (document, data, merge)
    for fp in sorted(rows):
        row = rows[fp]
        group = client.collection("error_groups").document(fp)
        ops.append((group, _payload(row) | {"status": row["status"], "shards": SHARDS,
                                             "updated_at": firestore.SERVER_TIMESTAMP}, True))
        shard = group.collection("shards").document(str(random.randrange(SHARDS)))
        ops.append((shard, {"count": firestore.Increment(counts.get(fp, 0))}, True))
    latest: dict[str, list[dict[str, Any]]] = {}
    for error in errors:
        latest.setdefault(error["service"] or "unknown", []).append(error)
    for service in sorted(latest):
        newest = sorted(latest[service], key=lambda e: (e["at"], e["error_id"]))
        for error in newest[-LATEST_PER_SERVICE:]:
            document = (client.collection("services").document(service)
                        .collection("latest_errors").document(error["error_id"]))
            ops.append((document, _feed_error(error), False))
    written = 0
    expires = datetime.now(UTC) + MARKER_TTL
    for n, start in enumerate(range(0, len(ops), FEED_BATCH_WRITES)):
        batch = client.batch()
        batch.create(client.collection(MARKER_COLLECTION).document(f"{envelope_id}-{n}"),
                     {"envelope_id": envelope_id, "expires_at": expires})
        for document, data, merge in ops[start:start + FEED_BATCH_WRITES]:
            batch.set(document, data, merge=merge)
        try:
            batch.commit()
            written += 1
        except exceptions.AlreadyExists:
            log.info("feed batch %s-%s was written before", envelope_id, n)
    return written


def _feed_error(error: Mapping[str, Any]) -> dict[str, Any]:
    return {"error_id": error["error_id"], "fingerprint": error["fingerprint"],
            "kind": error.get("kind"), "service": error.get("service"),
            "environment": error.get("environment"), "tenant": error.get("tenant"),
            "name": error.get("name"), "time": error["at"],
            "message": str(error.get("message") or "")[:2000],
            "exception_type": error.get("exception_type"),
            "exception_message": error.get("exception_message"),
            "trace_id": error.get("trace_id"), "span_id": error.get("span_id"),
            "user_id": error.get("user_id")}


def prune_latest(services: Iterable[str], keep: int = LATEST_PER_SERVICE) -> int:
    """Delete all but the newest `keep` feed errors of each service; how many were deleted."""
    from google.cloud import firestore

    from shared import clients

    client = clients.firestore_client()
    deleted = 0
    for service in sorted(services):
        stale = (client.collection("services").document(service).collection("latest_errors")
                 .order_by("time", direction=firestore.Query.DESCENDING)
                 .offset(keep).limit(FEED_BATCH_WRITES).stream())
        batch = client.batch()
        count = 0
        for snapshot in stale:
            batch.delete(snapshot.reference)
            count += 1
        if count:
            batch.commit()
            deleted += count
    return deleted


def group_count(fp: str) -> int:
    """A group's occurrence count as the dashboards read it: the sum of its shards."""
    from shared import clients

    shards = (clients.firestore_client().collection("error_groups").document(fp)
              .collection("shards").stream())
    return sum(int((s.to_dict() or {}).get("count", 0)) for s in shards)
