"""Profiles and user administration. Every change that other parts react to is published
through the outbox (`users.events`): `user.status_changed`, `user.roles_changed`,
`user.deleted`, carrying a per-user `version` so consumers can ignore stale, reordered events."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared import errors
from shared.auth import ROLES
from shared.events import Envelope
from shared.pagination import PageRequest, page
from shared.validation import uuid_field

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from shared.outbox import OutboxTransaction

USERS_TOPIC = "users.events"
STATUSES = ("active", "inactive", "suspended")
_PROFILE = ("SELECT id, email, display_name, avatar_upload_id, locale, time_zone, roles, status, "
            "created_at, updated_at FROM users")


def _sql(text: str) -> Any:
    import sqlalchemy

    return sqlalchemy.text(text)


def _profile(row: Any) -> dict[str, Any]:
    return {
        "id": str(row[0]), "email": row[1], "display_name": row[2],
        "avatar_upload_id": str(row[3]) if row[3] else None, "locale": row[4],
        "time_zone": row[5], "roles": sorted(row[6]), "status": row[7],
        "created_at": row[8].isoformat(), "updated_at": row[9].isoformat(),
    }


def get_profile(conn: Connection, user_id: str) -> dict[str, Any]:
    row = conn.execute(_sql(f"{_PROFILE} WHERE id = :id AND status <> 'deleted'"),
                       {"id": user_id}).first()
    if row is None:
        raise errors.NotFound("no such user", code="user_not_found")
    return _profile(row)


def update_profile(conn: Connection, user_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Apply validated profile fields (display_name, avatar_upload_id, locale, time_zone)."""
    if "time_zone" in changes:
        _check_time_zone(changes["time_zone"])
    if "avatar_upload_id" in changes and changes["avatar_upload_id"] is not None:
        changes["avatar_upload_id"] = uuid_field(changes["avatar_upload_id"], "avatar_upload_id")
        from shared.uploads import require_accepted

        require_accepted(conn, user_id, changes["avatar_upload_id"], "avatar")
    allowed = ("display_name", "avatar_upload_id", "locale", "time_zone")
    fields = {k: v for k, v in changes.items() if k in allowed}
    if fields:
        assignments = ", ".join(f"{name} = :{name}" for name in fields)
        conn.execute(_sql(f"UPDATE users SET {assignments}, updated_at = now() "
                          "WHERE id = :id AND status <> 'deleted'"), fields | {"id": user_id})
    return get_profile(conn, user_id)


def _check_time_zone(name: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise errors.ValidationFailed("unknown time zone", code="validation_failed", errors=[
            {"field": "time_zone", "message": "must be an IANA time zone like Asia/Seoul"}
        ]) from None


def delete_account(tx: OutboxTransaction, user_id: str) -> None:
    """Erase personal data now (the row stays for references); the user_lifecycle consumer
    revokes sessions and schedules the user's conversations and uploads for removal."""
    row = tx.conn.execute(_sql(
        "UPDATE users SET email = NULL, password_hash = NULL, display_name = 'Deleted user', "
        "avatar_upload_id = NULL, external_issuer = NULL, external_subject = NULL, "
        "status = 'deleted', status_version = status_version + 1, deleted_at = now(), "
        "updated_at = now() WHERE id = :id AND status <> 'deleted' RETURNING status_version"),
        {"id": user_id}).first()
    if row is None:
        raise errors.NotFound("no such user", code="user_not_found")
    from shared.accounts import revoke_user_sessions

    revoke_user_sessions(tx.conn, user_id, "account_deleted")
    tx.emit(USERS_TOPIC, Envelope("user.deleted", {"user_id": user_id, "version": row[0]}))


def list_users(conn: Connection, request: PageRequest, secret: str, search: str | None
               ) -> dict[str, Any]:
    """Admin listing, newest first, keyset-paginated on (created_at, id)."""
    clauses = ["status <> 'deleted'"]
    params: dict[str, Any] = {"limit": request.limit + 1}
    if search:
        clauses.append("(email ILIKE :q OR display_name ILIKE :q)")
        escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        params["q"] = f"%{escaped}%"
    if request.position:
        clauses.append("(created_at, id) < (CAST(:ts AS timestamptz), CAST(:id AS uuid))")
        params |= {"ts": request.position.get("ts"), "id": request.position.get("id")}
    rows = conn.execute(_sql(f"{_PROFILE} WHERE {' AND '.join(clauses)} "
                             "ORDER BY created_at DESC, id DESC LIMIT :limit"), params).all()
    return page([_profile(r) for r in rows], request, secret,
                key=lambda p: {"ts": p["created_at"], "id": p["id"]})


def set_status(tx: OutboxTransaction, actor: str, user_id: str, status: str) -> dict[str, Any]:
    if status not in STATUSES:
        raise errors.ValidationFailed(f"status must be one of {', '.join(STATUSES)}")
    if actor == user_id:
        raise errors.Conflict("administrators cannot change their own status", code="self_change")
    row = tx.conn.execute(_sql(
        "UPDATE users u SET status = :status, status_version = u.status_version + 1, "
        "updated_at = now() FROM (SELECT id, status FROM users WHERE id = :id FOR UPDATE) old "
        "WHERE u.id = old.id AND u.status <> 'deleted' AND u.status <> :status "
        "RETURNING old.status, u.status_version"), {"id": user_id, "status": status}).first()
    if row is None:
        current = get_profile(tx.conn, user_id)  # 404 for unknown or deleted users
        return current  # unchanged: already in that status, nothing to publish
    tx.emit(USERS_TOPIC, Envelope("user.status_changed", {
        "user_id": user_id, "status": status, "previous": row[0], "version": row[1],
        "changed_by": actor}))
    return get_profile(tx.conn, user_id)


def set_roles(tx: OutboxTransaction, actor: str, user_id: str, roles: list[str]
              ) -> dict[str, Any]:
    wanted = sorted(set(roles) | {"user"})  # every account is a user
    unknown = set(wanted) - set(ROLES)
    if unknown:
        raise errors.ValidationFailed("unknown roles", errors=[
            {"field": "roles", "message": f"unknown role {r}"} for r in sorted(unknown)])
    if actor == user_id and "admin" not in wanted:
        raise errors.Conflict("administrators cannot drop their own admin role",
                              code="self_change")
    row = tx.conn.execute(_sql(
        "UPDATE users SET roles = CAST(:roles AS text[]), updated_at = now() "
        "WHERE id = :id AND status <> 'deleted' AND roles <> CAST(:roles AS text[]) "
        "RETURNING status_version"), {"id": user_id, "roles": wanted}).first()
    if row is not None:
        tx.emit(USERS_TOPIC, Envelope("user.roles_changed", {
            "user_id": user_id, "roles": wanted, "changed_by": actor}))
    return get_profile(tx.conn, user_id)


def grant_role(conn: Connection, email: str, role: str) -> bool:
    """Operator bootstrap (the first admin): `python -m shared.users grant EMAIL ROLE`."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role}")
    return bool(conn.execute(_sql(
        "UPDATE users SET roles = array_append(roles, :role), updated_at = now() "
        "WHERE email = lower(:email) AND NOT (:role = ANY(roles)) RETURNING id"),
        {"email": email, "role": role}).first())


if __name__ == "__main__":
    import sys

    from shared import db
    from shared.bootstrap import init

    init()
    if len(sys.argv) != 4 or sys.argv[1] != "grant":
        sys.exit("usage: python -m shared.users grant EMAIL ROLE")
    with db.transaction() as conn:
        changed = grant_role(conn, sys.argv[2], sys.argv[3])
    sys.stdout.write(("granted" if changed else "unchanged (no such user, or already held)") + "\n")
