"""What a user's status means for the rest of the product, and the consumer that applies it.

`user_lifecycle` receives `user.status_changed` and `user.deleted` and keeps one
`account_restrictions` row per user; chat and rewards call `restrictions()` /
`require_can_chat()` / `require_can_claim()` before acting. Events carry a per-user `version`:
an older event than the one applied changes nothing, so duplicates and reordering are harmless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared import dedupe, errors
from shared.events import Envelope
from shared.validation import canonical_uuid

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

log = logging.getLogger("shared.lifecycle")
CONSUMER = "user_lifecycle"


@dataclass(frozen=True)
class Restrictions:
    status: str = "active"
    conversations_read_only: bool = False
    chat_blocked: bool = False
    claims_blocked: bool = False


# status -> (conversations read-only, chat blocked, reward claims blocked)
_RULES = {
    "active": Restrictions("active"),
    "inactive": Restrictions("inactive", conversations_read_only=True),
    "suspended": Restrictions("suspended", True, True, True),
    "deleted": Restrictions("deleted", True, True, True),
}


def _sql(text: str) -> Any:
    import sqlalchemy

    return sqlalchemy.text(text)


def restrictions(conn: Connection, user_id: str) -> Restrictions:
    """The restrictions in force for `user_id` (none when nothing was ever applied)."""
    row = conn.execute(_sql(
        "SELECT status, conversations_read_only, chat_blocked, claims_blocked "
        "FROM account_restrictions WHERE user_id = :u"), {"u": user_id}).first()
    return Restrictions(*row) if row is not None else Restrictions()


def require_can_chat(conn: Connection, user_id: str) -> None:
    check_can_chat(restrictions(conn, user_id))


def check_can_chat(r: Restrictions) -> None:
    """For callers that read the restrictions row along with other data."""
    if r.chat_blocked:
        raise errors.Forbidden("this account may not chat", code=f"account_{r.status}")
    if r.conversations_read_only:
        raise errors.Forbidden("conversations are read-only for this account",
                               code="conversations_read_only")


def require_can_claim(conn: Connection, user_id: str) -> None:
    r = restrictions(conn, user_id)
    if r.claims_blocked:
        raise errors.Forbidden("this account may not claim rewards", code=f"account_{r.status}")


def apply(envelope: Envelope) -> bool:
    """Apply one lifecycle event; False when it was a duplicate or stale. Raises to retry."""
    if envelope.type == "user.deleted":
        status = "deleted"
    elif envelope.type == "user.status_changed":
        status = str(envelope.data.get("status"))
    else:
        return False  # other user events (roles) need no lifecycle effect
    rule = _RULES.get(status)
    user_id, version = canonical_uuid(envelope.data.get("user_id")), envelope.data.get("version")
    if (rule is None or user_id is None or not isinstance(version, int)
            or isinstance(version, bool) or not 0 < version < 2**63):
        # Permanent: answered 422, so it goes to the dead-letter topic, not round and round.
        raise errors.ValidationFailed("lifecycle event is malformed", code="invalid_event")
    with dedupe.once(CONSUMER, envelope.id) as conn:
        if conn is None:
            return False
        if conn.execute(_sql("SELECT 1 FROM users WHERE id = :u"), {"u": user_id}).first() is None:
            log.warning("%s for unknown user %s ignored", envelope.type, user_id)
            return False
        applied = conn.execute(_sql(
            "INSERT INTO account_restrictions AS r (user_id, status, status_version, "
            "conversations_read_only, chat_blocked, claims_blocked) "
            "VALUES (:u, :status, :v, :ro, :chat, :claims) "
            "ON CONFLICT (user_id) DO UPDATE SET status = excluded.status, "
            "status_version = excluded.status_version, "
            "conversations_read_only = excluded.conversations_read_only, "
            "chat_blocked = excluded.chat_blocked, claims_blocked = excluded.claims_blocked, "
            "updated_at = now() WHERE r.status_version < excluded.status_version RETURNING 1"),
            {"u": user_id, "status": status, "v": version, "ro": rule.conversations_read_only,
             "chat": rule.chat_blocked, "claims": rule.claims_blocked}).first()
        if applied is None:
            log.info("stale %s v%s for %s ignored", envelope.type, version, user_id)
            return False
        _effects(conn, user_id, status)
        return True


def _effects(conn: Connection, user_id: str, status: str) -> None:
    from shared.accounts import revoke_user_sessions

    if status in ("suspended", "deleted"):
        revoked = revoke_user_sessions(conn, user_id, f"account_{status}")
        log.info("revoked %d sessions of %s (%s)", revoked, user_id, status)
    if status == "deleted":
        conn.execute(_sql(
            "INSERT INTO cleanup_jobs (user_id, kind) VALUES (:u, 'conversations'), "
            "(:u, 'uploads') ON CONFLICT DO NOTHING"), {"u": user_id})
