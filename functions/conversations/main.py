"""conversations: start a conversation with a character, list mine, rename, delete, read its
messages newest first, and search my messages."""

from __future__ import annotations

from typing import Any

import flask
import functions_framework

from shared.auth import authenticate, parse_uuid
from shared.bootstrap import init
from shared.http import Call, Router
from shared.validation import Field, Schema

settings = init()
CURSOR_SECRET = settings.require_cursor_secret()

START = Schema({"character_id": Field("string", required=True, min_length=36, max_length=36),
                "title": Field("string", min_length=1, max_length=120)})
RENAME = Schema({"title": Field("string", required=True, min_length=1, max_length=120)})

app = Router("conversations", authenticate=authenticate, rate_limited=True)


@app.route("POST", "/conversations", role="user", body=START,
           summary="Start a conversation with a character")
def start(call: Call) -> tuple[dict[str, Any], int]:
    from shared import conversations, db

    body = call.body or {}
    with db.transaction() as conn:
        return conversations.start(conn, call.principal.subject,
                                   parse_uuid(body["character_id"], "character"),
                                   body.get("title")), 201


@app.route("GET", "/conversations", role="user", summary="My conversations")
def list_mine(call: Call) -> dict[str, Any]:
    from shared import conversations, db
    from shared.pagination import page_request

    request = page_request(call.args, CURSOR_SECRET, "conversations.list")
    with db.transaction() as conn:
        return conversations.list_mine(conn, call.principal.subject, request, CURSOR_SECRET)


# Registered before /conversations/{conversation_id}: the router takes the first match.
@app.route("GET", "/conversations/search", role="user", summary="Search my messages")
def search(call: Call) -> dict[str, Any]:
    from shared import conversations, db
    from shared.pagination import page_request

    request = page_request(call.args, CURSOR_SECRET, "messages.search")
    with db.transaction() as conn:
        return conversations.search_messages(conn, call.principal.subject,
                                             call.args.get("q", ""), request, CURSOR_SECRET)


@app.route("GET", "/conversations/{conversation_id}", role="user", summary="A conversation")
def read(call: Call) -> dict[str, Any]:
    from shared import conversations, db

    with db.transaction() as conn:
        return conversations.get(conn, call.principal.subject, _id(call))


@app.route("PATCH", "/conversations/{conversation_id}", role="user", body=RENAME,
           summary="Rename a conversation")
def rename(call: Call) -> dict[str, Any]:
    from shared import conversations, db

    with db.transaction() as conn:
        return conversations.rename(conn, call.principal.subject, _id(call),
                                    (call.body or {})["title"])


@app.route("DELETE", "/conversations/{conversation_id}", role="user",
           summary="Delete a conversation")
def delete(call: Call) -> None:
    from shared import conversations, db

    with db.transaction() as conn:
        conversations.delete(conn, call.principal.subject, _id(call))


@app.route("GET", "/conversations/{conversation_id}/messages", role="user",
           summary="Messages, newest first")
def messages(call: Call) -> dict[str, Any]:
    from shared import conversations, db
    from shared.pagination import page_request

    conversation_id = _id(call)
    request = page_request(call.args, CURSOR_SECRET, f"messages.{conversation_id}")
    with db.transaction() as conn:
        return conversations.messages(conn, call.principal.subject, conversation_id, request,
                                      CURSOR_SECRET)


@app.route("GET", "/conversations/{conversation_id}/messages/{message_id}/alternatives",
           role="user", summary="A message and its alternatives (regenerations, edits)")
def alternatives(call: Call) -> dict[str, Any]:
    from shared import conversations, db

    with db.transaction() as conn:
        return conversations.alternatives(conn, call.principal.subject, _id(call),
                                          _message_id(call))


@app.route("POST", "/conversations/{conversation_id}/messages/{message_id}/select",
           role="user", summary="Continue from this alternative (swipe)")
def select(call: Call) -> dict[str, Any]:
    from shared import conversations, db

    with db.transaction() as conn:
        return conversations.select(conn, call.principal.subject, _id(call),
                                    _message_id(call))


def _message_id(call: Call) -> str:
    return parse_uuid(call.params["message_id"], "message")


def _id(call: Call) -> str:
    return parse_uuid(call.params["conversation_id"], "conversation")


@functions_framework.http
def conversations(request: flask.Request) -> flask.Response:
    return app(request)
