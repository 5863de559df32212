"""Characters: create, read, update, delete, list and search, with visibility rules.

Visibility: `public` characters are listed and searchable; `unlisted` ones are readable by id;
`private` ones exist only for their owner (others get 404, never a hint). Only the owner
changes or deletes a character. Creation emits `character.created` (reward progress).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from shared import cards, errors
from shared.events import Envelope
from shared.pagination import PageRequest, page
from shared.validation import uuid_field

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from shared.outbox import OutboxTransaction

CHARACTERS_TOPIC = "characters.events"
VISIBILITIES = ("public", "unlisted", "private")
SAFETY_LEVELS = ("strict", "standard", "relaxed")
# API field -> column, for the fields a client may set.
COLUMNS = {
    "name": "name", "description": "description", "personality": "personality",
    "scenario": "scenario", "greeting": "greeting", "alternate_greetings": "alternate_greetings",
    "example_dialogue": "example_dialogue", "system_prompt": "system_prompt", "tags": "tags",
    "visibility": "visibility", "avatar_upload_id": "avatar_upload_id",
    "safety_level": "safety_level",
}
_SELECT = ("SELECT id, owner_id, name, description, personality, scenario, greeting, "
           "alternate_greetings, example_dialogue, system_prompt, post_history_instructions, "
           "creator_notes, creator, character_version, tags, extensions, visibility, "
           "avatar_upload_id, safety_level, popularity, created_at, updated_at FROM characters")


def _sql(text: str) -> Any:
    import sqlalchemy

    return sqlalchemy.text(text)


def _view(row: Any) -> dict[str, Any]:
    (cid, owner, name, description, personality, scenario, greeting, alternates, example,
     system_prompt, post_history, notes, creator, version, tags, extensions, visibility, avatar,
     safety, popularity, created, updated) = row
    return {
        "id": str(cid), "owner_id": str(owner), "name": name, "description": description,
        "personality": personality, "scenario": scenario, "greeting": greeting,
        "alternate_greetings": list(alternates), "example_dialogue": example,
        "system_prompt": system_prompt, "post_history_instructions": post_history,
        "creator_notes": notes, "creator": creator, "character_version": version,
        "tags": list(tags), "extensions": extensions, "visibility": visibility,
        "avatar_upload_id": str(avatar) if avatar else None, "safety_level": safety,
        "popularity": popularity, "created_at": created.isoformat(),
        "updated_at": updated.isoformat(),
    }


def _normalize(fields: dict[str, Any]) -> dict[str, Any]:
    out = {COLUMNS[k]: v for k, v in fields.items() if k in COLUMNS}
    if "tags" in out:
        out["tags"] = list(cards.normalize_tags(out["tags"]))
    if "name" in out:
        out["name"] = out["name"].strip()
        if not out["name"]:
            raise errors.ValidationFailed("name must not be blank", errors=[
                {"field": "name", "message": "must not be blank"}])
    if out.get("avatar_upload_id") is not None:
        out["avatar_upload_id"] = uuid_field(out["avatar_upload_id"], "avatar_upload_id")
    return out


def create(tx: OutboxTransaction, owner: str, fields: dict[str, Any],
           card: cards.Card | None = None) -> dict[str, Any]:
    import uuid

    values = _normalize(fields)
    _check_avatar(tx.conn, owner, values)
    if card is not None:
        values |= {"post_history_instructions": card.post_history_instructions,
                   "creator_notes": card.creator_notes, "creator": card.creator,
                   "character_version": card.character_version}
    character_id = str(uuid.uuid4())
    columns = ["id", "owner_id", *values]
    params = values | {"id": character_id, "owner_id": owner}
    extensions = json.dumps(card.extensions if card is not None else {})
    placeholders = ", ".join(f":{c}" for c in columns)
    tx.conn.execute(_sql(
        f"INSERT INTO characters ({', '.join(columns)}, extensions) "
        f"VALUES ({placeholders}, CAST(:extensions AS jsonb))"),
        params | {"extensions": extensions})
    tx.emit(CHARACTERS_TOPIC, Envelope("character.created", {
        "character_id": character_id, "owner_id": owner, "visibility": values.get(
            "visibility", "private")}))
    return get(tx.conn, owner, character_id)


def _load(conn: Connection, character_id: str) -> Any:
    return conn.execute(_sql(f"{_SELECT} WHERE id = CAST(:id AS uuid) AND deleted_at IS NULL"),
                        {"id": character_id}).first()


def get(conn: Connection, viewer: str, character_id: str) -> dict[str, Any]:
    """A character the viewer may see (404 for private characters of others)."""
    row = _load(conn, character_id)
    if row is None or (row[16] == "private" and str(row[1]) != viewer):
        raise errors.NotFound("no such character", code="character_not_found")
    return _view(row)


def _owned(conn: Connection, owner: str, character_id: str) -> Any:
    row = _load(conn, character_id)
    if row is None or (row[16] == "private" and str(row[1]) != owner):
        raise errors.NotFound("no such character", code="character_not_found")
    if str(row[1]) != owner:
        raise errors.Forbidden("only the owner may change this character", code="not_owner")
    return row


def require_owner(conn: Connection, owner: str, character_id: str) -> None:
    """404 for characters the caller cannot see, 403 for others' characters it can."""
    _owned(conn, owner, character_id)


def _check_avatar(conn: Connection, owner: str, values: dict[str, Any]) -> None:
    if values.get("avatar_upload_id") is not None:
        from shared.uploads import require_accepted

        require_accepted(conn, owner, values["avatar_upload_id"], "character_avatar")


def update(conn: Connection, owner: str, character_id: str, fields: dict[str, Any]
           ) -> dict[str, Any]:
    _owned(conn, owner, character_id)
    values = _normalize(fields)
    _check_avatar(conn, owner, values)
    if values:
        assignments = ", ".join(f"{c} = :{c}" for c in values)
        conn.execute(_sql(f"UPDATE characters SET {assignments}, updated_at = now() "
                          "WHERE id = CAST(:id AS uuid)"), values | {"id": character_id})
    return get(conn, owner, character_id)


def delete(conn: Connection, owner: str, character_id: str) -> None:
    """Soft delete: conversations that reference the character keep their history."""
    _owned(conn, owner, character_id)
    conn.execute(_sql("UPDATE characters SET deleted_at = now(), updated_at = now() "
                      "WHERE id = CAST(:id AS uuid)"), {"id": character_id})


def search(conn: Connection, viewer: str, request: PageRequest, secret: str, *,
           query: str | None, tag: str | None, sort: str, mine: bool) -> dict[str, Any]:
    """Public characters (or the viewer's own, with `mine`), newest or most popular first."""
    clauses = ["deleted_at IS NULL",
               "owner_id = CAST(:viewer AS uuid)" if mine else "visibility = 'public'"]
    params: dict[str, Any] = {"viewer": viewer, "limit": request.limit + 1}
    if query:
        escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        clauses.append("name ILIKE :q")
        params["q"] = f"%{escaped}%"
    if tag:
        clauses.append(":tag = ANY(tags)")
        params["tag"] = tag.strip().lower()
    order_column = "popularity" if sort == "popular" else "created_at"
    if request.position:
        if sort == "popular":
            clauses.append("(popularity, id) < (CAST(:k AS bigint), CAST(:id AS uuid))")
        else:
            clauses.append("(created_at, id) < (CAST(:k AS timestamptz), CAST(:id AS uuid))")
        params |= {"k": request.position.get("k"), "id": request.position.get("id")}
    rows = conn.execute(_sql(f"{_SELECT} WHERE {' AND '.join(clauses)} "
                             f"ORDER BY {order_column} DESC, id DESC LIMIT :limit"), params).all()
    key_field = "popularity" if sort == "popular" else "created_at"
    return page([_view(r) for r in rows], request, secret,
                key=lambda c: {"k": c[key_field], "id": c["id"]})


def card_of(character: dict[str, Any]) -> cards.Card:
    return cards.Card(
        name=character["name"], description=character["description"],
        personality=character["personality"], scenario=character["scenario"],
        first_mes=character["greeting"], mes_example=character["example_dialogue"],
        system_prompt=character["system_prompt"],
        post_history_instructions=character["post_history_instructions"],
        creator_notes=character["creator_notes"], creator=character["creator"],
        character_version=character["character_version"],
        alternate_greetings=tuple(character["alternate_greetings"]),
        tags=tuple(character["tags"]), extensions=character["extensions"])


def fields_of(card: cards.Card) -> dict[str, Any]:
    return {"name": card.name, "description": card.description,
            "personality": card.personality, "scenario": card.scenario,
            "greeting": card.first_mes, "alternate_greetings": list(card.alternate_greetings),
            "example_dialogue": card.mes_example, "system_prompt": card.system_prompt,
            "tags": list(card.tags)}
