"""The `activity` consumer: turns product events into activity facts for reward progress, and
`rewards.granted` into the user's Firestore notification.

A fact is keyed by its source's natural id (the login's event id, the chat message id, the
character id, the invitee's user id), so recording is `INSERT ... ON CONFLICT DO NOTHING`: a
redelivered event changes nothing, and since progress is computed from the set of facts (never
from running totals or arrival order), shuffled delivery gives the same progress.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared import errors
from shared.events import Envelope
from shared.validation import canonical_uuid, clean_string

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

log = logging.getLogger("shared.activity")

COUNTER_EVENT = "activity.counted"  # {user_id, name, amount?}: the generic named counter
MAX_COUNTER_AMOUNT = 1_000_000


def _sql(text: str) -> Any:
    import sqlalchemy

    return sqlalchemy.text(text)


@dataclass(frozen=True)
class Fact:
    user_id: str
    kind: str
    key: str
    occurred_at: datetime
    amount: int = 1


def _malformed(what: str) -> errors.ValidationFailed:
    # Permanent: 422, so the message goes to the dead-letter topic instead of round and round.
    return errors.ValidationFailed(f"activity event is malformed: {what}", code="invalid_event")


def _uuid(data: dict[str, Any], name: str) -> str:
    value = canonical_uuid(data.get(name))
    if value is None:
        raise _malformed(f"{name} must be a UUID")
    return value


def _when(envelope: Envelope) -> datetime:
    try:
        moment = datetime.fromisoformat(envelope.occurred_at.replace("Z", "+00:00"))
    except ValueError:
        raise _malformed("occurred_at must be an RFC 3339 date-time") from None
    if moment.tzinfo is None:
        raise _malformed("occurred_at must carry an offset")
    return moment


def fact_of(envelope: Envelope) -> Fact | None:
    """The fact an event contributes, or None for events that carry none (a signup without a
    referral code, types this consumer does not count)."""
    data = envelope.data
    kind = envelope.type
    if not clean_string(envelope.id) or not 1 <= len(envelope.id) <= 200:
        raise _malformed("id must be 1 to 200 characters of text")
    if kind == "user.logged_in":
        return Fact(_uuid(data, "user_id"), "login", envelope.id, _when(envelope))
    if kind == "chat.turn_completed":
        if data.get("kind") == "regenerate":
            return None  # a new reply to a message already counted: the user sent nothing
        return Fact(_uuid(data, "user_id"), "chat_message", _uuid(data, "message_id"),
                    _when(envelope))
    if kind == "character.created":
        return Fact(_uuid(data, "owner_id"), "character_created", _uuid(data, "character_id"),
                    _when(envelope))
    if kind == COUNTER_EVENT:
        name, amount = data.get("name"), data.get("amount", 1)
        if not isinstance(name, str) or not 1 <= len(name) <= 64 or not clean_string(name):
            raise _malformed("name must be 1 to 64 characters")
        if (not isinstance(amount, int) or isinstance(amount, bool)
                or not 1 <= amount <= MAX_COUNTER_AMOUNT):
            raise _malformed(f"amount must be an integer from 1 to {MAX_COUNTER_AMOUNT}")
        return Fact(_uuid(data, "user_id"), f"counter:{name}", envelope.id, _when(envelope),
                    amount)
    return None


def record(conn: Connection, fact: Fact) -> bool:
    """Store a fact once; False when it was already there (a duplicate delivery)."""
    return conn.execute(_sql(
        "INSERT INTO activity_facts (user_id, kind, key, amount, occurred_at) "
        "VALUES (CAST(:u AS uuid), :kind, :key, :amount, :at) ON CONFLICT DO NOTHING "
        "RETURNING 1"),
        {"u": fact.user_id, "kind": fact.kind, "key": fact.key, "amount": fact.amount,
         "at": fact.occurred_at}).first() is not None


def referral_fact(conn: Connection, envelope: Envelope) -> Fact | None:
    """A signup with a referral code counts once for the code's owner (never for oneself)."""
    code = envelope.data.get("referral_code")
    if code is None:
        return None
    invitee = _uuid(envelope.data, "user_id")
    if not isinstance(code, str) or len(code) > 64 or not clean_string(code):
        raise _malformed("referral_code must be a string of at most 64 characters")
    row = conn.execute(_sql("SELECT user_id FROM referral_codes WHERE code = :c"),
                       {"c": code.strip().upper()}).first()
    if row is None or str(row[0]) == invitee:
        log.info("signup with unknown or own referral code ignored", extra={"eventId":
                                                                           envelope.id})
        return None
    return Fact(str(row[0]), "friend_invited", invitee, _when(envelope))


def apply(envelope: Envelope) -> str:
    """Record what an event contributes; returns what happened (for the log). Raises to retry."""
    from shared import db

    if envelope.type == "rewards.granted":
        notify(envelope)
        return "notified"
    with db.transaction() as conn:
        fact = (referral_fact(conn, envelope) if envelope.type == "user.signed_up"
                else fact_of(envelope))
        if fact is None:
            return "ignored"
        return "recorded" if record(conn, fact) else "duplicate"


def notify(envelope: Envelope) -> None:
    """The user's notification feed gets one document per claim: its id is the claim id, and
    `create` leaves an existing document alone, so redelivery neither duplicates nor resets
    what the client changed (a read flag)."""
    from google.api_core import exceptions

    from shared import clients

    data = envelope.data
    user_id, claim_id = _uuid(data, "user_id"), _uuid(data, "claim_id")
    rewards = data.get("rewards")
    if not isinstance(rewards, list):
        raise _malformed("rewards must be a list")
    document = (clients.firestore_client().collection("users").document(user_id)
                .collection("notifications").document(claim_id))
    try:
        document.create({"type": "reward_granted", "claim_id": claim_id,
                         "event_id": str(data.get("event_id", "")),
                         "title": str(data.get("event_title", "")), "rewards": rewards,
                         "created_at": _when(envelope), "read": False})
    except exceptions.AlreadyExists:
        log.info("notification %s already exists", claim_id)
