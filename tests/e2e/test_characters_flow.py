"""Characters and conversations on the local stack, over HTTP through the gateway."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests

from shared import cards
from tests.unit.test_cards import V2

pytestmark = pytest.mark.e2e


def _url(stack: dict[str, Any], function: str, path: str) -> str:
    return f"{stack['gateway_url']}/{function}{path}"


def test_card_import_then_conversation(stack: dict[str, Any]) -> None:
    signup = requests.post(_url(stack, "auth", "/signup"), timeout=10, json={
        "email": f"chars-{uuid.uuid4().hex[:8]}@example.com",
        "password": "a long and unusual passphrase", "display_name": "Cards"})
    assert signup.status_code == 201
    auth = {"Authorization": f"Bearer {signup.json()['access_token']}"}

    png = cards.to_png(cards.from_json(V2))
    imported = requests.post(_url(stack, "characters", "/characters/import?visibility=public"),
                             data=png, headers=auth | {"Content-Type": "image/png"}, timeout=10)
    assert imported.status_code == 201, imported.text
    character = imported.json()
    exported = requests.get(_url(stack, "characters", f"/characters/{character['id']}/card"),
                            params={"format": "png"}, headers=auth, timeout=10)
    assert exported.status_code == 200 and cards.from_png(exported.content).name == "Seraphina"

    started = requests.post(_url(stack, "conversations", "/conversations"), headers=auth,
                            json={"character_id": character["id"]}, timeout=10)
    assert started.status_code == 201
    messages = requests.get(
        _url(stack, "conversations", f"/conversations/{started.json()['id']}/messages"),
        headers=auth, timeout=10)
    assert messages.status_code == 200
    assert [m["content"] for m in messages.json()["items"]] == [V2["data"]["first_mes"]]
    listed = requests.get(_url(stack, "characters", "/characters"), params={"sort": "popular"},
                          headers=auth, timeout=10).json()["items"]
    assert any(c["id"] == character["id"] and c["popularity"] == 1 for c in listed)


def test_chat_turns_over_the_gateway_json_and_sse(stack: dict[str, Any]) -> None:
    signup = requests.post(_url(stack, "auth", "/signup"), timeout=10, json={
        "email": f"chat-{uuid.uuid4().hex[:8]}@example.com",
        "password": "a long and unusual passphrase", "display_name": "Chatter"})
    auth = {"Authorization": f"Bearer {signup.json()['access_token']}"}
    character = requests.post(_url(stack, "characters", "/characters"), headers=auth, json={
        "name": "Mina", "greeting": "Welcome!"}, timeout=10).json()
    conversation = requests.post(_url(stack, "conversations", "/conversations"), headers=auth,
                                 json={"character_id": character["id"]}, timeout=10).json()
    turns = _url(stack, "chat_turn", f"/conversations/{conversation['id']}/turns")
    answered = requests.post(turns, headers=auth, json={"message": "Hello there"}, timeout=30)
    assert answered.status_code == 201, answered.text
    assert answered.json()["reply"]["content"].endswith("echo: Hello there")

    with requests.post(turns, headers=auth | {"Accept": "text/event-stream"},
                       json={"message": "Stream it please"}, timeout=30, stream=True) as resp:
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines(decode_unicode=True) if line]
    kinds = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    assert kinds[-1] == "done" and "delta" in kinds
    quota = requests.get(_url(stack, "chat_turn", "/me/quota"), headers=auth, timeout=10).json()
    assert quota["used"] > 0


def test_json_cards_round_trip_including_a_v1_card_from_another_tool(
        stack: dict[str, Any]) -> None:
    from tests.unit.test_cards import V1

    signup = requests.post(_url(stack, "auth", "/signup"), timeout=10, json={
        "email": f"cards-{uuid.uuid4().hex[:8]}@example.com",
        "password": "a long and unusual passphrase", "display_name": "Cards"})
    auth = {"Authorization": f"Bearer {signup.json()['access_token']}"}
    for card, name in ((V2, "Seraphina"), (V1, "Aqua")):
        imported = requests.post(_url(stack, "characters", "/characters/import"), json=card,
                                 headers=auth, timeout=10)
        assert imported.status_code == 201, imported.text
        exported = requests.get(
            _url(stack, "characters", f"/characters/{imported.json()['id']}/card"),
            params={"format": "json"}, headers=auth, timeout=10).json()
        assert exported["spec"] == "chara_card_v2" and exported["data"]["name"] == name
        source = card.get("data", card)
        for field in ("description", "personality", "first_mes"):
            assert exported["data"][field] == source[field]
    # The last one was a V1 card: it comes back as V2, with V2's fields present.
    assert {"alternate_greetings", "tags", "extensions"} <= set(exported["data"])
    bad = requests.post(_url(stack, "characters", "/characters/import"), timeout=10,
                        json={"spec": "chara_card_v2", "data": {"name": ""}}, headers=auth)
    assert bad.status_code == 422
    assert bad.headers["Content-Type"].startswith("application/problem+json")
