"""Accounts and sessions: sign-up, login (with throttling), rotating refresh, logout, and the
account check behind every authenticated request."""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared import errors, passwords, tokens
from shared.auth import USABLE_STATUSES, Principal
from shared.events import Envelope
from shared.validation import canonical_uuid

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from shared.outbox import OutboxTransaction

log = logging.getLogger("shared.accounts")

LOGIN_TOPIC = "auth.logins"
SIGNUP_TOPIC = "auth.signups"
# Throttling per address (known or not, so it reveals nothing): after FREE_FAILURES, each further
# failure doubles a wait before the next attempt; at LOCK_FAILURES the address locks for a while.
FREE_FAILURES = 5
LOCK_FAILURES = 10
LOCK_S = 15 * 60
INVALID = "email or password is incorrect"


def _sql(text: str) -> Any:
    import sqlalchemy

    return sqlalchemy.text(text)


def normalize_email(email: str) -> str:
    return email.strip().lower()


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    expires_in: int
    refresh_token: str
    session_id: str
    user_id: str

    def body(self) -> dict[str, Any]:
        return {"access_token": self.access_token, "token_type": "Bearer",
                "expires_in": self.expires_in, "refresh_token": self.refresh_token,
                "session_id": self.session_id, "user_id": self.user_id}


def _start_session(conn: Connection, user_id: str, roles: list[str], user_agent: str,
                   ip: str) -> TokenPair:
    session_id = str(uuid.uuid4())
    conn.execute(_sql(
        "INSERT INTO sessions (id, user_id, expires_at, user_agent, ip) VALUES "
        "(:id, :user, now() + make_interval(secs => :ttl), :ua, :ip)"),
        {"id": session_id, "user": user_id, "ttl": tokens.REFRESH_TTL_S,
         "ua": user_agent[:256], "ip": ip})
    return _new_pair(conn, user_id, roles, session_id)


def _new_pair(conn: Connection, user_id: str, roles: list[str], session_id: str) -> TokenPair:
    refresh, digest = tokens.new_refresh_token()
    conn.execute(_sql(
        "INSERT INTO refresh_tokens (token_hash, session_id, expires_at) VALUES "
        "(:h, :s, now() + make_interval(secs => :ttl))"),
        {"h": digest, "s": session_id, "ttl": tokens.REFRESH_TTL_S})
    access, expires_in = tokens.issue_access_token(user_id, roles, session_id)
    return TokenPair(access, expires_in, refresh, session_id, user_id)


def signup(tx: OutboxTransaction, email: str, password: str, display_name: str,
           user_agent: str = "", ip: str = "", referral_code: str | None = None) -> TokenPair:
    """Create an account and its first session; emits `user.signed_up`."""
    email = normalize_email(email)
    passwords.check_policy(password, email, display_name)
    password_hash = passwords.hash_password(password)
    user_id = str(uuid.uuid4())
    created = tx.conn.execute(_sql(
        "INSERT INTO users (id, email, password_hash, display_name) "
        "VALUES (:id, :email, :hash, :name) ON CONFLICT (email) DO NOTHING RETURNING id"),
        {"id": user_id, "email": email, "hash": password_hash, "name": display_name}).first()
    if created is None:
        raise errors.Conflict("an account with this email exists", code="email_taken")
    tx.emit(SIGNUP_TOPIC, Envelope("user.signed_up", {
        "user_id": user_id, "referral_code": referral_code}))
    return _start_session(tx.conn, user_id, ["user"], user_agent, ip)


def _email_key(email: str) -> bytes:
    return hashlib.sha256(b"login:" + email.encode()).digest()


def _check_throttle(conn: Connection, key: bytes) -> None:
    row = conn.execute(_sql(
        "SELECT failures, ceil(extract(epoch FROM GREATEST("
        "  locked_until - now(),"
        "  last_failure + make_interval(secs => power(2, GREATEST(failures - :free, 0))) - now()"
        "))) FROM login_attempts WHERE email_hash = :k"),
        {"k": key, "free": FREE_FAILURES}).first()
    if row is None or row[0] < FREE_FAILURES or row[1] is None or row[1] <= 0:
        return
    wait = int(row[1])
    code = "account_locked" if row[0] >= LOCK_FAILURES else "login_throttled"
    raise errors.TooManyRequests("too many failed logins; try again later", code=code,
                                 headers={"Retry-After": str(wait)})


def _record_failure(conn: Connection, key: bytes) -> None:
    conn.execute(_sql(
        "INSERT INTO login_attempts (email_hash, failures, last_failure) VALUES (:k, 1, now()) "
        "ON CONFLICT (email_hash) DO UPDATE SET failures = login_attempts.failures + 1, "
        "last_failure = now(), locked_until = CASE WHEN login_attempts.failures + 1 >= :lock "
        "THEN now() + make_interval(secs => :lock_s) END"),
        {"k": key, "lock": LOCK_FAILURES, "lock_s": LOCK_S})


def login(tx: OutboxTransaction, email: str, password: str, user_agent: str = "",
          ip: str = "") -> TokenPair:
    """Verify credentials and open a session; emits `user.logged_in`. Unknown email and wrong
    password give the same answer after the same work (a hash verification either way)."""
    from shared import db

    email = normalize_email(email)
    key = _email_key(email)
    _check_throttle(tx.conn, key)
    row = tx.conn.execute(_sql(
        "SELECT id, password_hash, status, roles, time_zone FROM users WHERE email = :email"),
        {"email": email}).first()
    stored = row[1] if row is not None and row[1] else passwords.dummy_hash()
    if not passwords.verify_password(stored, password) or row is None or not row[1]:
        # Recorded on its own (one autocommit statement): the caller's transaction rolls back
        # with the 401. Not a second connection of the caller's pool: a burst of bad
        # passwords holding every one of them would then wait forever (shared/db.py).
        with db.autocommit() as conn:
            _record_failure(conn, key)
        raise errors.Unauthorized(INVALID, code="invalid_credentials")
    user_id, _, status, roles, time_zone = row
    if status not in USABLE_STATUSES:
        raise errors.Forbidden("this account is not active", code=f"account_{status}")
    tx.conn.execute(_sql("DELETE FROM login_attempts WHERE email_hash = :k"), {"k": key})
    if passwords.needs_rehash(stored):
        tx.conn.execute(_sql("UPDATE users SET password_hash = :h WHERE id = :id"),
                        {"h": passwords.hash_password(password), "id": user_id})
    pair = _start_session(tx.conn, str(user_id), list(roles), user_agent, ip)
    tx.emit(LOGIN_TOPIC, Envelope("user.logged_in", {
        "user_id": str(user_id), "session_id": pair.session_id, "time_zone": time_zone}))
    return pair


def refresh(conn: Connection, refresh_token: str) -> TokenPair:
    """Rotate: the presented token is spent and a new pair issued. Presenting a spent token
    again means it leaked: the whole session is revoked."""
    digest = tokens.refresh_token_hash(refresh_token)
    spent = conn.execute(_sql(
        "UPDATE refresh_tokens SET used_at = now() WHERE token_hash = :h AND used_at IS NULL "
        "AND expires_at > now() RETURNING session_id"), {"h": digest}).first()
    if spent is None:
        reused = conn.execute(_sql(
            "SELECT session_id FROM refresh_tokens WHERE token_hash = :h AND used_at IS NOT NULL"),
            {"h": digest}).first()
        if reused is not None:
            from shared import db

            # On its own (one autocommit statement, as in `login`): the caller's transaction
            # rolls back with the 401, the revocation stays.
            with db.autocommit() as own:
                revoke_session(own, str(reused[0]), "refresh_token_reuse")
            log.warning("refresh token reuse: session %s revoked", reused[0])
            raise errors.Unauthorized("refresh token was already used; session revoked",
                                      code="refresh_token_reused")
        raise errors.Unauthorized("refresh token is invalid or expired",
                                  code="invalid_refresh_token")
    session = conn.execute(_sql(
        "SELECT s.user_id, u.roles, u.status FROM sessions s JOIN users u ON u.id = s.user_id "
        "WHERE s.id = :s AND s.revoked_at IS NULL AND s.expires_at > now()"),
        {"s": spent[0]}).first()
    if session is None or session[2] not in USABLE_STATUSES:
        raise errors.Unauthorized("session is no longer valid", code="session_revoked")
    conn.execute(_sql("UPDATE sessions SET last_used_at = now() WHERE id = :s"), {"s": spent[0]})
    return _new_pair(conn, str(session[0]), list(session[1]), str(spent[0]))


def revoke_session(conn: Connection, session_id: str, reason: str) -> None:
    conn.execute(_sql(
        "UPDATE sessions SET revoked_at = now(), revoked_reason = :r "
        "WHERE id = :s AND revoked_at IS NULL"), {"s": session_id, "r": reason})


def revoke_user_sessions(conn: Connection, user_id: str, reason: str) -> int:
    return int(conn.execute(_sql(
        "UPDATE sessions SET revoked_at = now(), revoked_reason = :r "
        "WHERE user_id = :u AND revoked_at IS NULL"), {"u": user_id, "r": reason}).rowcount)


def session_principal(conn: Connection, claims: Principal) -> Principal:
    """The account behind one of our tokens, checked now: live session, usable account."""
    row = conn.execute(_sql(
        "SELECT u.roles, u.status FROM sessions s JOIN users u ON u.id = s.user_id "
        "WHERE s.id = CAST(:sid AS uuid) AND s.user_id = CAST(:sub AS uuid) "
        "AND s.revoked_at IS NULL AND s.expires_at > now()"),
        {"sid": _uuid_or_nil(claims.session_id), "sub": _uuid_or_nil(claims.subject)}).first()
    if row is None:
        raise errors.Unauthorized("session is revoked or unknown", code="session_revoked")
    return _checked(claims, row[0], row[1], claims.subject)


def external_principal(conn: Connection, issuer: str, claims: Principal) -> Principal:
    """The local user of an external IdP subject, created on first sight."""
    name = claims.claims.get("name") or claims.claims.get("username") or "user"
    conn.execute(_sql(
        "INSERT INTO users (id, display_name, external_issuer, external_subject) "
        "VALUES (:id, :name, :iss, :sub) ON CONFLICT (external_issuer, external_subject) "
        "DO NOTHING"),
        {"id": str(uuid.uuid4()), "name": str(name)[:64], "iss": issuer, "sub": claims.subject})
    row = conn.execute(_sql(
        "SELECT id, roles, status FROM users WHERE external_issuer = :iss "
        "AND external_subject = :sub"), {"iss": issuer, "sub": claims.subject}).one()
    return _checked(claims, row[1], row[2], str(row[0]))


def _checked(claims: Principal, roles: list[str], status: str, user_id: str) -> Principal:
    if status not in USABLE_STATUSES:
        raise errors.Unauthorized("account is not active", code=f"account_{status}")
    return Principal(subject=user_id, roles=frozenset(roles), session_id=claims.session_id,
                     token_id=claims.token_id, status=status, claims=claims.claims)


def _uuid_or_nil(value: str | None) -> str:
    return canonical_uuid(value) or "00000000-0000-0000-0000-000000000000"
