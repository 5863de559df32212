"""The characters function on a real database: CRUD, visibility and ownership, search and
pagination, Character Card V2 import and export (JSON and PNG)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared import cards
from tests.integration.identity_fixtures import REPO, Identity
from tests.unit.test_cards import V1, V2


@pytest.fixture
def client(identity: Identity) -> Any:
    from functions_framework import create_app

    return create_app("characters", str(REPO / "functions/characters/main.py")).test_client()


def _create(client: Any, who: dict[str, str], **fields: Any) -> dict[str, Any]:
    resp = client.post("/characters", headers=who, json={"name": "Mina"} | fields)
    assert resp.status_code == 201, resp.json
    return dict(resp.json)


def test_create_read_update_delete(identity: Identity, client: Any) -> None:
    ann = identity.bearer(identity.signup())
    made = _create(client, ann, description="A barista.", greeting="Welcome!",
                   tags=["Cafe", "cafe", " slice of life "], visibility="public")
    assert made["tags"] == ["cafe", "slice of life"] and made["visibility"] == "public"
    got = client.get(f"/characters/{made['id']}", headers=ann)
    assert got.status_code == 200 and got.json["greeting"] == "Welcome!"
    changed = client.patch(f"/characters/{made['id']}", headers=ann,
                           json={"personality": "cheerful", "safety_level": "strict"})
    assert changed.status_code == 200
    assert (changed.json["personality"], changed.json["safety_level"]) == ("cheerful", "strict")
    assert client.delete(f"/characters/{made['id']}", headers=ann).status_code == 204
    assert client.get(f"/characters/{made['id']}", headers=ann).status_code == 404
    events = identity.sql("SELECT payload FROM outbox WHERE topic = 'characters.events'")
    assert len(events) == 1 and b'"character.created"' in bytes(events[0][0])


def test_visibility_and_ownership(identity: Identity, client: Any) -> None:
    ann, bob = identity.bearer(identity.signup()), identity.bearer(identity.signup())
    private = _create(client, ann, visibility="private")
    unlisted = _create(client, ann, visibility="unlisted")
    public = _create(client, ann, visibility="public")
    # Bob cannot see Ann's private character at all, and cannot change what he can see.
    assert client.get(f"/characters/{private['id']}", headers=bob).status_code == 404
    assert client.patch(f"/characters/{private['id']}", headers=bob,
                        json={"name": "x"}).status_code == 404
    assert client.get(f"/characters/{unlisted['id']}", headers=bob).status_code == 200
    for target in (unlisted, public):
        resp = client.patch(f"/characters/{target['id']}", headers=bob, json={"name": "Pwned"})
        assert resp.status_code == 403 and resp.json["code"] == "not_owner"
        assert client.delete(f"/characters/{target['id']}", headers=bob).status_code == 403
    assert client.get(f"/characters/{public['id']}", headers=ann).json["name"] == "Mina"
    listed = client.get("/characters", headers=bob).json["items"]
    assert [c["id"] for c in listed] == [public["id"]]
    mine = client.get("/characters", headers=ann, query_string={"mine": "true"}).json["items"]
    assert {c["id"] for c in mine} == {private["id"], unlisted["id"], public["id"]}
    assert client.get(f"/characters/{private['id']}/card", headers=bob).status_code == 404


def test_search_sort_and_pagination(identity: Identity, client: Any) -> None:
    ann = identity.bearer(identity.signup())
    made = [_create(client, ann, name=f"Hero {i}", tags=["fantasy"] if i % 2 else ["scifi"],
                    visibility="public") for i in range(5)]
    identity.sql("UPDATE characters SET popularity = 10 WHERE id = :id", id=made[2]["id"])
    seen, cursor = [], None
    while True:
        resp = client.get("/characters", headers=ann, query_string={
            "limit": 2, **({"cursor": cursor} if cursor else {})})
        seen += [c["id"] for c in resp.json["items"]]
        cursor = resp.json["nextCursor"]
        if not cursor:
            break
    assert seen == [c["id"] for c in reversed(made)]  # newest first, each once
    popular = client.get("/characters", headers=ann, query_string={"sort": "popular"}).json
    assert popular["items"][0]["id"] == made[2]["id"]
    by_tag = client.get("/characters", headers=ann, query_string={"tag": "FANTASY"}).json
    assert {c["id"] for c in by_tag["items"]} == {made[1]["id"], made[3]["id"]}
    by_name = client.get("/characters", headers=ann, query_string={"q": "hero 4"}).json
    assert [c["id"] for c in by_name["items"]] == [made[4]["id"]]
    assert client.get("/characters", headers=ann, query_string={"q": "100%_"}).json[
        "items"] == []
    assert client.get("/characters", headers=ann,
                      query_string={"sort": "weird"}).status_code == 400


def test_card_import_export_round_trip(identity: Identity, client: Any) -> None:
    ann = identity.bearer(identity.signup())
    imported = client.post("/characters/import", headers=ann, data=json.dumps(V2),
                           content_type="application/json")
    assert imported.status_code == 201, imported.json
    assert imported.json["name"] == "Seraphina" and imported.json["visibility"] == "private"
    assert imported.json["extensions"]["world"] == "glade"
    exported = client.get(f"/characters/{imported.json['id']}/card", headers=ann)
    assert exported.status_code == 200
    assert cards.from_json(exported.json) == cards.from_json(V2)

    png = client.get(f"/characters/{imported.json['id']}/card", headers=ann,
                     query_string={"format": "png"})
    assert png.status_code == 200 and png.mimetype == "image/png"
    again = client.post("/characters/import?visibility=public", headers=ann, data=png.data,
                        content_type="image/png")
    assert again.status_code == 201 and again.json["visibility"] == "public"
    assert cards.from_json(client.get(f"/characters/{again.json['id']}/card",
                                      headers=ann).json) == cards.from_json(V2)
    v1 = client.post("/characters/import", headers=ann, data=json.dumps(V1),
                     content_type="application/json")
    assert v1.status_code == 201 and v1.json["greeting"] == "Hello!"


@pytest.mark.parametrize(("data", "content_type", "status"), [
    (b"not a png", "image/png", 422),
    (json.dumps({"spec": "chara_card_v9", "data": {}}).encode(), "application/json", 422),
    (b"{broken", "application/json", 400),
    (b"name,description", "text/csv", 415),
])
def test_bad_cards_are_refused(identity: Identity, client: Any, data: bytes,
                               content_type: str, status: int) -> None:
    ann = identity.bearer(identity.signup())
    resp = client.post("/characters/import", headers=ann, data=data, content_type=content_type)
    assert resp.status_code == status
    assert identity.sql("SELECT count(*) FROM characters") == [(0,)]


def test_bad_input_is_4xx(identity: Identity, client: Any) -> None:
    ann = identity.bearer(identity.signup())
    for body in ({}, {"name": ""}, {"name": "   "}, {"name": "x", "visibility": "secret"},
                 {"name": "x", "tags": ["a" * 41]}, {"name": "x", "avatar_upload_id": "nope"}):
        resp = client.post("/characters", headers=ann, json=body)
        assert resp.status_code == 422, body
    assert client.get("/characters/not-a-uuid", headers=ann).status_code == 404
    assert client.get("/characters", headers=ann,
                      query_string={"cursor": "forged"}).status_code == 400
    assert client.post("/characters", json={"name": "x"}).status_code == 401


def test_fuzz_findings_are_4xx(identity: Identity, client: Any) -> None:
    ann = identity.bearer(identity.signup())
    for name in ("Séraphine", "世界", "Ω-x"):
        made = _create(client, ann, name=name, visibility="public")
        png = client.get(f"/characters/{made['id']}/card", headers=ann,
                         query_string={"format": "png"})
        assert png.status_code == 200 and "filename*=UTF-8''" in png.headers[
            "Content-Disposition"]
    recent = client.get("/characters", headers=ann, query_string={"limit": 1}).json
    mixed = client.get("/characters", headers=ann, query_string={
        "limit": 1, "sort": "popular", "cursor": recent["nextCursor"]})
    assert mixed.status_code == 400 and mixed.json["code"] == "invalid_cursor"
    for bad in ({"name": "N", "extensions": {"x": "a\u0000b"}},
                {"name": "N", "extensions": {"x": "\ud800"}},
                {"name": "N", "tags": ["\u0130" * 40]}):
        png = cards.to_png(cards.Card(name="placeholder"))
        payload = __import__("base64").b64encode(json.dumps(bad).encode())
        chunks = cards._chunks(png)
        forged = cards.PNG_SIGNATURE + b"".join(
            cards._chunk(k, b"chara\0" + payload if k == b"tEXt" else b) for k, b in chunks)
        resp = client.post("/characters/import", headers=ann, data=forged,
                           content_type="image/png")
        assert resp.status_code == 422, bad
    too_long = client.post("/characters", headers=ann, json={"name": "x", "tags": ["\u0130" * 40]})
    assert too_long.status_code == 422
