"""The conversations function on a real database: start with the greeting, ownership, listing,
stable newest-first message pages, search, rename/delete, restrictions and cleanup."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shared import lifecycle, retention
from shared.events import Envelope
from tests.integration.identity_fixtures import REPO, Identity


@pytest.fixture
def apps(identity: Identity) -> tuple[Any, Any]:
    from functions_framework import create_app

    return (create_app("characters", str(REPO / "functions/characters/main.py")).test_client(),
            create_app("conversations",
                       str(REPO / "functions/conversations/main.py")).test_client())


def _character(characters: Any, who: dict[str, str], **fields: Any) -> str:
    resp = characters.post("/characters", headers=who, json={
        "name": "Mina", "greeting": "Welcome to the cafe!", "visibility": "public"} | fields)
    assert resp.status_code == 201
    return str(resp.json["id"])


def _add_messages(identity: Identity, conversation: str, texts: list[str]) -> None:
    for text in texts:
        identity.sql("INSERT INTO messages (id, conversation_id, role, content) "
                     "VALUES (:id, :c, 'user', :t)", id=str(uuid.uuid4()), c=conversation, t=text)


def test_start_list_read_rename_delete(identity: Identity, apps: tuple[Any, Any]) -> None:
    characters, conversations = apps
    ann = identity.bearer(identity.signup())
    character = _character(characters, ann)
    started = conversations.post("/conversations", headers=ann,
                                 json={"character_id": character})
    assert started.status_code == 201 and started.json["title"] == "Mina"
    conversation = started.json["id"]
    first = conversations.get(f"/conversations/{conversation}/messages", headers=ann).json
    assert [(m["role"], m["content"]) for m in first["items"]] == [
        ("assistant", "Welcome to the cafe!")]
    assert characters.get(f"/characters/{character}", headers=ann).json["popularity"] == 1
    renamed = conversations.patch(f"/conversations/{conversation}", headers=ann,
                                  json={"title": "Morning chat"})
    assert renamed.status_code == 200 and renamed.json["title"] == "Morning chat"
    listed = conversations.get("/conversations", headers=ann).json["items"]
    assert [c["id"] for c in listed] == [conversation]
    assert conversations.delete(f"/conversations/{conversation}", headers=ann).status_code == 204
    assert conversations.get(f"/conversations/{conversation}", headers=ann).status_code == 404


def test_other_users_conversations_do_not_exist(identity: Identity,
                                                apps: tuple[Any, Any]) -> None:
    characters, conversations = apps
    ann, bob = identity.bearer(identity.signup()), identity.bearer(identity.signup())
    conversation = conversations.post("/conversations", headers=ann, json={
        "character_id": _character(characters, ann)}).json["id"]
    for method, path, body in (("get", f"/conversations/{conversation}", None),
                               ("get", f"/conversations/{conversation}/messages", None),
                               ("patch", f"/conversations/{conversation}", {"title": "x"}),
                               ("delete", f"/conversations/{conversation}", None)):
        resp = getattr(conversations, method)(path, headers=bob, json=body)
        assert resp.status_code == 404, (method, path)
    assert conversations.get("/conversations", headers=bob).json["items"] == []
    private = _character(characters, ann, visibility="private")
    assert conversations.post("/conversations", headers=bob,
                              json={"character_id": private}).status_code == 404


def test_message_pages_are_stable_under_inserts_and_search(identity: Identity,
                                                           apps: tuple[Any, Any]) -> None:
    characters, conversations = apps
    ann = identity.bearer(identity.signup())
    conversation = conversations.post("/conversations", headers=ann, json={
        "character_id": _character(characters, ann, greeting="")}).json["id"]
    _add_messages(identity, conversation, [f"message {i}" for i in range(5)])
    page1 = conversations.get(f"/conversations/{conversation}/messages", headers=ann,
                              query_string={"limit": 2}).json
    assert [m["content"] for m in page1["items"]] == ["message 4", "message 3"]
    _add_messages(identity, conversation, ["arrived while paging"])
    page2 = conversations.get(f"/conversations/{conversation}/messages", headers=ann,
                              query_string={"limit": 2, "cursor": page1["nextCursor"]}).json
    assert [m["content"] for m in page2["items"]] == ["message 2", "message 1"]
    _add_messages(identity, conversation, ["the espresso was perfect", "Espresso again?"])
    found = conversations.get("/conversations/search", headers=ann,
                              query_string={"q": "espresso"}).json["items"]
    assert [m["content"] for m in found] == ["Espresso again?", "the espresso was perfect"]
    bob = identity.bearer(identity.signup())
    assert conversations.get("/conversations/search", headers=bob,
                             query_string={"q": "espresso"}).json["items"] == []
    assert conversations.get("/conversations/search", headers=ann,
                             query_string={"q": " "}).status_code == 400


def test_inactive_accounts_cannot_start_or_rename(identity: Identity,
                                                  apps: tuple[Any, Any]) -> None:
    characters, conversations = apps
    account = identity.signup()
    ann = identity.bearer(account)
    character = _character(characters, ann)
    conversation = conversations.post("/conversations", headers=ann,
                                      json={"character_id": character}).json["id"]
    lifecycle.apply(Envelope("user.status_changed", {"user_id": account["user_id"],
                                                     "status": "inactive", "version": 1}))
    refused = conversations.post("/conversations", headers=ann, json={"character_id": character})
    assert refused.status_code == 403 and refused.json["code"] == "conversations_read_only"
    assert conversations.patch(f"/conversations/{conversation}", headers=ann,
                               json={"title": "x"}).status_code == 403
    # Reading stays possible.
    assert conversations.get(f"/conversations/{conversation}/messages",
                             headers=ann).status_code == 200


def test_deleted_users_conversations_are_erased_by_maintenance(identity: Identity,
                                                               apps: tuple[Any, Any]) -> None:
    characters, conversations = apps
    account = identity.signup()
    ann = identity.bearer(account)
    conversations.post("/conversations", headers=ann,
                       json={"character_id": _character(characters, ann)})
    lifecycle.apply(Envelope("user.deleted", {"user_id": account["user_id"], "version": 1}))
    assert retention.run_conversation_cleanup() == 1
    assert identity.sql("SELECT count(*) FROM conversations WHERE user_id = :u",
                        u=account["user_id"]) == [(0,)]
    assert identity.sql("SELECT count(*) FROM messages") == [(0,)]
    assert retention.run_conversation_cleanup() == 0  # done once


def test_bad_input(identity: Identity, apps: tuple[Any, Any]) -> None:
    _, conversations = apps
    ann = identity.bearer(identity.signup())
    assert conversations.post("/conversations", headers=ann, json={}).status_code == 422
    assert conversations.post("/conversations", headers=ann,
                              json={"character_id": "x" * 36}).status_code == 404
    assert conversations.post("/conversations", headers=ann, json={
        "character_id": str(uuid.uuid4())}).status_code == 404
    assert conversations.get("/conversations/nope/messages", headers=ann).status_code == 404


def test_cursors_belong_to_their_listing(identity: Identity, apps: tuple[Any, Any]) -> None:
    characters, conversations = apps
    ann = identity.bearer(identity.signup())
    character = _character(characters, ann, greeting="")
    first = conversations.post("/conversations", headers=ann,
                               json={"character_id": character, "title": "  "}).json
    assert first["title"] == "Mina"  # a blank title falls back to the character's name
    second = conversations.post("/conversations", headers=ann,
                                json={"character_id": character}).json
    _add_messages(identity, first["id"], ["one", "two", "three"])
    page1 = conversations.get(f"/conversations/{first['id']}/messages", headers=ann,
                              query_string={"limit": 1}).json
    for path in ("/conversations", f"/conversations/{second['id']}/messages"):
        resp = conversations.get(path, headers=ann, query_string={"cursor": page1["nextCursor"]})
        assert resp.status_code == 400 and resp.json["code"] == "invalid_cursor", path
    for cursor in ("a.\u00e9", "\u00e9.abc", "\u00e9"):
        resp = conversations.get("/conversations", headers=ann, query_string={"cursor": cursor})
        assert resp.status_code == 400 and resp.json["code"] == "invalid_cursor"
