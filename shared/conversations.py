"""Conversations with characters: start (the character's greeting becomes the first message),
list mine, rename, delete, read messages newest first, and search my messages.

A conversation belongs to one user; anyone else gets 404. Writes check the account's
restrictions (`shared.lifecycle`): inactive accounts' conversations are read-only. Deleting
stays allowed: a restricted user may still remove their own data.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from shared import errors, lifecycle
from shared.pagination import PageRequest, page

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

TITLE_MAX = 120
_CONVERSATION = ("SELECT c.id, c.character_id, ch.name, c.title, c.created_at, c.updated_at, "
                 "c.last_message_at FROM conversations c JOIN characters ch "
                 "ON ch.id = c.character_id")


def _sql(text: str) -> Any:
    import sqlalchemy

    return sqlalchemy.text(text)


def _conversation(row: Any) -> dict[str, Any]:
    return {"id": str(row[0]), "character_id": str(row[1]), "character_name": row[2],
            "title": row[3], "created_at": row[4].isoformat(), "updated_at": row[5].isoformat(),
            "last_message_at": row[6].isoformat()}


def _message(row: Any) -> dict[str, Any]:
    return {"id": str(row[0]), "conversation_id": str(row[1]),
            "parent_id": str(row[2]) if row[2] else None, "role": row[3], "content": row[4],
            "created_at": row[5].isoformat(), "seq": row[6]}


def start(conn: Connection, user_id: str, character_id: str, title: str | None
          ) -> dict[str, Any]:
    """A new conversation; the character's greeting is its first message."""
    lifecycle.require_can_chat(conn, user_id)
    character = conn.execute(_sql(
        "SELECT name, greeting, visibility, owner_id FROM characters "
        "WHERE id = CAST(:id AS uuid) AND deleted_at IS NULL"), {"id": character_id}).first()
    if character is None or (character[2] == "private" and str(character[3]) != user_id):
        raise errors.NotFound("no such character", code="character_not_found")
    conversation_id = str(uuid.uuid4())
    conn.execute(_sql(
        "INSERT INTO conversations (id, user_id, character_id, title) "
        "VALUES (:id, :user, :character, :title)"),
        {"id": conversation_id, "user": user_id, "character": character_id,
         "title": ((title or "").strip() or character[0])[:TITLE_MAX]})
    if character[1]:
        conn.execute(_sql(
            "INSERT INTO messages (id, conversation_id, role, content) "
            "VALUES (:id, :conversation, 'assistant', :content)"),
            {"id": str(uuid.uuid4()), "conversation": conversation_id, "content": character[1]})
    conn.execute(_sql("UPDATE characters SET popularity = popularity + 1 "
                      "WHERE id = CAST(:id AS uuid)"), {"id": character_id})
    return get(conn, user_id, conversation_id)


def _owned(conn: Connection, user_id: str, conversation_id: str) -> Any:
    row = conn.execute(_sql(
        f"{_CONVERSATION} WHERE c.id = CAST(:id AS uuid) AND c.user_id = CAST(:user AS uuid) "
        "AND c.deleted_at IS NULL"), {"id": conversation_id, "user": user_id}).first()
    if row is None:
        raise errors.NotFound("no such conversation", code="conversation_not_found")
    return row


def get(conn: Connection, user_id: str, conversation_id: str) -> dict[str, Any]:
    return _conversation(_owned(conn, user_id, conversation_id))


def rename(conn: Connection, user_id: str, conversation_id: str, title: str) -> dict[str, Any]:
    _owned(conn, user_id, conversation_id)
    if lifecycle.restrictions(conn, user_id).conversations_read_only:
        raise errors.Forbidden("conversations are read-only for this account",
                               code="conversations_read_only")
    if not title.strip():
        raise errors.ValidationFailed("title must not be blank", errors=[
            {"field": "title", "message": "must not be blank"}])
    conn.execute(_sql("UPDATE conversations SET title = :title, updated_at = now() "
                      "WHERE id = CAST(:id AS uuid)"),
                 {"title": title.strip()[:TITLE_MAX], "id": conversation_id})
    return get(conn, user_id, conversation_id)


def delete(conn: Connection, user_id: str, conversation_id: str) -> None:
    _owned(conn, user_id, conversation_id)
    conn.execute(_sql("UPDATE conversations SET deleted_at = now() WHERE id = CAST(:id AS uuid)"),
                 {"id": conversation_id})


def list_mine(conn: Connection, user_id: str, request: PageRequest, secret: str
              ) -> dict[str, Any]:
    """My conversations, most recently active first."""
    clauses = ["c.user_id = CAST(:user AS uuid)", "c.deleted_at IS NULL"]
    params: dict[str, Any] = {"user": user_id, "limit": request.limit + 1}
    if request.position:
        clauses.append("(c.last_message_at, c.id) < "
                       "(CAST(:ts AS timestamptz), CAST(:id AS uuid))")
        params |= {"ts": request.position.get("ts"), "id": request.position.get("id")}
    rows = conn.execute(_sql(f"{_CONVERSATION} WHERE {' AND '.join(clauses)} "
                             "ORDER BY c.last_message_at DESC, c.id DESC LIMIT :limit"),
                        params).all()
    return page([_conversation(r) for r in rows], request, secret,
                key=lambda c: {"ts": c["last_message_at"], "id": c["id"]})


_MESSAGE = ("SELECT m.id, m.conversation_id, m.parent_id, m.role, m.content, m.created_at, "
            "m.seq FROM messages m")


def messages(conn: Connection, user_id: str, conversation_id: str, request: PageRequest,
             secret: str) -> dict[str, Any]:
    """The active messages, newest first. Pages are keyed on `seq`, so messages arriving while
    a client pages backwards never shift or repeat what it sees."""
    _owned(conn, user_id, conversation_id)
    clauses = ["m.conversation_id = CAST(:conversation AS uuid)", "m.active"]
    params: dict[str, Any] = {"conversation": conversation_id, "limit": request.limit + 1}
    if request.position:
        clauses.append("m.seq < CAST(:before AS bigint)")
        params["before"] = request.position.get("before")
    rows = conn.execute(_sql(f"{_MESSAGE} WHERE {' AND '.join(clauses)} "
                             "ORDER BY m.seq DESC LIMIT :limit"), params).all()
    return page([_message(r) for r in rows], request, secret,
                key=lambda m: {"before": m["seq"]})


def search_messages(conn: Connection, user_id: str, text: str, request: PageRequest,
                    secret: str) -> dict[str, Any]:
    """My messages matching `text` (all words, any order), newest first."""
    if not text.strip():
        raise errors.BadRequest("q must not be empty", code="invalid_query")
    clauses = ["c.user_id = CAST(:user AS uuid)", "c.deleted_at IS NULL", "m.active",
               "m.search @@ plainto_tsquery('simple', :q)"]
    params: dict[str, Any] = {"user": user_id, "q": text[:200], "limit": request.limit + 1}
    if request.position:
        clauses.append("m.seq < CAST(:before AS bigint)")
        params["before"] = request.position.get("before")
    rows = conn.execute(_sql(f"{_MESSAGE} JOIN conversations c ON c.id = m.conversation_id "
                             f"WHERE {' AND '.join(clauses)} ORDER BY m.seq DESC LIMIT :limit"),
                        params).all()
    return page([_message(r) for r in rows], request, secret,
                key=lambda m: {"before": m["seq"]})


def remove_user_conversations(conn: Connection, user_id: str) -> int:
    """Erase a deleted user's conversations and messages (their cleanup job)."""
    return int(conn.execute(_sql("DELETE FROM conversations WHERE user_id = CAST(:u AS uuid)"),
                            {"u": user_id}).rowcount)
