"""characters: create, read, update, delete, list and search characters; import and export
Character Card V2 (JSON, or PNG with the card in a `chara` tEXt chunk)."""

from __future__ import annotations

from typing import Any

import flask
import functions_framework

from shared import errors
from shared.auth import authenticate, parse_uuid
from shared.bootstrap import init
from shared.http import Call, Router
from shared.validation import Field, Schema, parse_json

settings = init()
CURSOR_SECRET = settings.require_cursor_secret()

_TEXT = {"description": 20_000, "personality": 5_000, "scenario": 5_000, "greeting": 10_000,
         "example_dialogue": 20_000, "system_prompt": 10_000}
_FIELDS = {
    **{name: Field("string", max_length=limit) for name, limit in _TEXT.items()},
    "alternate_greetings": Field("array", max_length=20,
                                 items=Field("string", max_length=10_000)),
    "tags": Field("array", max_length=30, items=Field("string", min_length=1, max_length=40)),
    "visibility": Field("string", enum=("public", "unlisted", "private")),
    "avatar_upload_id": Field("string", min_length=36, max_length=36, nullable=True),
    "safety_level": Field("string", enum=("strict", "standard", "relaxed")),
}
CREATE = Schema({"name": Field("string", required=True, min_length=1, max_length=100),
                 **_FIELDS})
PATCH = Schema({"name": Field("string", min_length=1, max_length=100), **_FIELDS})
MAX_IMPORT_BYTES = 2 * 1024 * 1024

app = Router("characters", authenticate=authenticate, rate_limited=True,
             max_body_bytes=MAX_IMPORT_BYTES)


@app.route("POST", "/characters", role="user", body=CREATE, summary="Create a character")
def create(call: Call) -> tuple[dict[str, Any], int]:
    from shared import characters, outbox

    with outbox.transaction() as tx:
        return characters.create(tx, call.principal.subject, dict(call.body or {})), 201


@app.route("GET", "/characters", role="user", summary="List and search characters")
def search(call: Call) -> dict[str, Any]:
    from shared import characters, db
    from shared.pagination import page_request

    args = call.args
    sort = args.get("sort", "recent")
    if sort not in ("recent", "popular"):
        raise errors.BadRequest("sort must be recent or popular", code="invalid_sort")
    mine = args.get("mine", "false").lower() in ("1", "true", "yes")
    request = page_request(args, CURSOR_SECRET, f"characters.{'mine' if mine else 'all'}.{sort}")
    with db.transaction() as conn:
        return characters.search(conn, call.principal.subject, request, CURSOR_SECRET,
                                 query=args.get("q") or None, tag=args.get("tag") or None,
                                 sort=sort, mine=mine)


@app.route("GET", "/characters/{character_id}", role="user", summary="Read a character")
def read(call: Call) -> dict[str, Any]:
    from shared import characters, db

    with db.transaction() as conn:
        return characters.get(conn, call.principal.subject, _id(call))


@app.route("PATCH", "/characters/{character_id}", role="user", body=PATCH,
           summary="Change my character")
def patch(call: Call) -> dict[str, Any]:
    from shared import characters, db

    with db.transaction() as conn:
        return characters.update(conn, call.principal.subject, _id(call), dict(call.body or {}))


@app.route("DELETE", "/characters/{character_id}", role="user", summary="Delete my character")
def delete(call: Call) -> None:
    from shared import characters, db

    with db.transaction() as conn:
        characters.delete(conn, call.principal.subject, _id(call))


@app.route("POST", "/characters/import", role="user",
           summary="Import a Character Card V2 (JSON or PNG)")
def import_card(call: Call) -> tuple[dict[str, Any], int]:
    from shared import cards, characters, outbox

    raw = call.request.get_data(cache=True)
    if len(raw) > MAX_IMPORT_BYTES:
        raise errors.PayloadTooLarge(f"cards are at most {MAX_IMPORT_BYTES} bytes")
    if call.request.mimetype == "image/png":
        card = cards.from_png(raw)
    elif call.request.mimetype == "application/json":
        card = cards.from_json(parse_json(raw))
    else:
        raise errors.UnsupportedMediaType("send the card as application/json or image/png")
    visibility = call.args.get("visibility", "private")
    if visibility not in ("public", "unlisted", "private"):
        raise errors.BadRequest("visibility must be public, unlisted or private",
                                code="invalid_visibility")
    fields = characters.fields_of(card) | {"visibility": visibility}
    with outbox.transaction() as tx:
        return characters.create(tx, call.principal.subject, fields, card), 201


@app.route("GET", "/characters/{character_id}/card", role="user",
           summary="Export a character as a Character Card V2 (format=json or png)")
def export_card(call: Call) -> Any:
    from shared import cards, characters, db

    fmt = call.args.get("format", "json")
    if fmt not in ("json", "png"):
        raise errors.BadRequest("format must be json or png", code="invalid_format")
    with db.transaction() as conn:
        character = characters.get(conn, call.principal.subject, _id(call))
    card = characters.card_of(character)
    if fmt == "json":
        return cards.to_json(card)
    return flask.Response(cards.to_png(card), mimetype="image/png",
                          headers={"Content-Disposition": _attachment(card.name, "png")})


def _attachment(name: str, extension: str) -> str:
    """Content-Disposition for any name: an ASCII fallback plus the UTF-8 name (RFC 6266)."""
    from urllib.parse import quote

    ascii_name = "".join(c for c in name if c.isascii() and (c.isalnum() or c in "-_ "))[:60]
    fallback = (ascii_name.strip() or "character") + f".{extension}"
    return (f'attachment; filename="{fallback}"; '
            f"filename*=UTF-8''{quote(name[:60] + '.' + extension, safe='')}")


def _id(call: Call) -> str:
    return parse_uuid(call.params["character_id"], "character")


@functions_framework.http
def characters(request: flask.Request) -> flask.Response:
    return app(request)
