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
            "created_at": row[5].isoformat(), "seq": row[6], "active": row[7],
            "alternatives": row[8]}


def start(conn: Connection, user_id: str, character_id: str, title: str | None
          ) -> dict[str, Any]:
    """A new conversation; the character's greeting is its first message."""
    lifecycle.require_can_chat(conn, user_id)
    character = conn.execute(_sql(
        "SELECT name, greeting, visibility, owner_id, alternate_greetings FROM characters "
        "WHERE id = CAST(:id AS uuid) AND deleted_at IS NULL"), {"id": character_id}).first()
    if character is None or (character[2] == "private" and str(character[3]) != user_id):
        raise errors.NotFound("no such character", code="character_not_found")
    conversation_id = str(uuid.uuid4())
    conn.execute(_sql(
        "INSERT INTO conversations (id, user_id, character_id, title) "
        "VALUES (:id, :user, :character, :title)"),
        {"id": conversation_id, "user": user_id, "character": character_id,
         "title": ((title or "").strip() or character[0])[:TITLE_MAX]})
    # The greeting opens the conversation; alternate greetings are its inactive siblings, so
    # a client can swipe to one (select it) before the first turn.
    greetings = [g for g in [character[1], *(character[4] or [])] if g]
    for position, greeting in enumerate(greetings):
        conn.execute(_sql(
            "INSERT INTO messages (id, conversation_id, role, content, active) "
            "VALUES (:id, :conversation, 'assistant', :content, :active)"),
            {"id": str(uuid.uuid4()), "conversation": conversation_id, "content": greeting,
             "active": position == 0})
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


# `alternatives` counts the message's siblings and itself: regenerated replies, edited user
# messages, alternate greetings. A client shows "2 of 3" and swipes by selecting another.
_MESSAGE = (
    "SELECT m.id, m.conversation_id, m.parent_id, m.role, m.content, m.created_at, m.seq, "
    "m.active, CASE WHEN m.parent_id IS NULL THEN (SELECT count(*) FROM messages s "
    "WHERE s.conversation_id = m.conversation_id AND s.parent_id IS NULL) "
    "ELSE (SELECT count(*) FROM messages s WHERE s.parent_id = m.parent_id) END "
    "FROM messages m")


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


def _sibling_filter(parent_id: Any) -> str:
    return "parent_id IS NULL" if parent_id is None else "parent_id = CAST(:parent AS uuid)"


def alternatives(conn: Connection, user_id: str, conversation_id: str, message_id: str
                 ) -> dict[str, Any]:
    """A message and its siblings, oldest first, the active one marked. Reading them changes
    nothing; selecting one is `select`."""
    _owned(conn, user_id, conversation_id)
    target = _find_message(conn, conversation_id, message_id)
    rows = conn.execute(_sql(
        f"{_MESSAGE} WHERE m.conversation_id = CAST(:c AS uuid) AND "
        f"m.{_sibling_filter(target[0])} ORDER BY m.seq"),
        {"c": conversation_id, "parent": target[0]}).all()
    items = [_message(r) for r in rows]
    active = next((i for i, m in enumerate(items) if m["active"]), None)
    return {"items": items, "active_index": active}


def _find_message(conn: Connection, conversation_id: str, message_id: str) -> Any:
    row = conn.execute(_sql(
        "SELECT parent_id, seq, active FROM messages WHERE id = CAST(:m AS uuid) "
        "AND conversation_id = CAST(:c AS uuid)"), {"m": message_id, "c": conversation_id}).first()
    if row is None:
        raise errors.NotFound("no such message", code="message_not_found")
    return row


def select(conn: Connection, user_id: str, conversation_id: str, message_id: str
           ) -> dict[str, Any]:
    """Make an alternative the active one: the branch it replaces leaves the active path and
    the chosen message's own latest continuation joins it. The conversation continues from
    there on the next turn."""
    _owned(conn, user_id, conversation_id)
    if lifecycle.restrictions(conn, user_id).conversations_read_only:
        raise errors.Forbidden("conversations are read-only for this account",
                               code="conversations_read_only")
    conn.execute(_sql("SELECT 1 FROM conversations WHERE id = CAST(:c AS uuid) FOR UPDATE"),
                 {"c": conversation_id})  # serialized with turns on this conversation
    parent, _, active = _find_message(conn, conversation_id, message_id)
    if not active:
        current = conn.execute(_sql(
            f"SELECT seq FROM messages WHERE conversation_id = CAST(:c AS uuid) AND active "
            f"AND {_sibling_filter(parent)}"), {"c": conversation_id, "parent": parent}).first()
        if current is None:
            raise errors.Conflict("the message is not an alternative on the active path",
                                  code="not_on_active_path")
        # The active path is one chain ordered by seq: from the replaced sibling on, every
        # active message descends from it.
        conn.execute(_sql(
            "UPDATE messages SET active = false WHERE conversation_id = CAST(:c AS uuid) "
            "AND active AND seq >= :s"), {"c": conversation_id, "s": current[0]})
        conn.execute(_sql(
            "WITH RECURSIVE chain (id) AS (SELECT CAST(:m AS uuid) UNION ALL "
            "SELECT (SELECT k.id FROM messages k WHERE k.parent_id = chain.id "
            "ORDER BY k.seq DESC LIMIT 1) FROM chain WHERE chain.id IS NOT NULL) "
            "UPDATE messages SET active = true WHERE id IN (SELECT id FROM chain)"),
            {"m": message_id})
        # The path changed: a new version, so a turn read before this swipe is refused (409).
        # A summary that tells of the replaced branch no longer fits: rebuild it next turn.
        conn.execute(_sql(
            "UPDATE conversations SET version = version + 1, updated_at = now(), "
            "summary = CASE WHEN summary_upto_seq >= :s THEN '' ELSE summary END, "
            "summary_upto_seq = CASE WHEN summary_upto_seq >= :s THEN 0 "
            "ELSE summary_upto_seq END WHERE id = CAST(:c AS uuid)"),
            {"c": conversation_id, "s": current[0]})
    return alternatives(conn, user_id, conversation_id, message_id)


def remove_user_conversations(conn: Connection, user_id: str) -> int:
    """Erase a deleted user's conversations and messages (their cleanup job)."""
    return int(conn.execute(_sql("DELETE FROM conversations WHERE user_id = CAST(:u AS uuid)"),
                            {"u": user_id}).rowcount)
