"""Character Card V2 import/export, JSON and PNG, including cards in other tools' formats."""

from __future__ import annotations

import base64
import json

import pytest

from shared import cards
from shared.errors import ValidationFailed

# As other tools write them: a V2 card (SillyTavern style, with extensions and a lorebook),
# and a V1 TavernAI card with the fields at the top level.
V2 = {
    "spec": "chara_card_v2", "spec_version": "2.0",
    "data": {
        "name": "Seraphina", "description": "A guardian of the forest glade.",
        "personality": "kind, protective", "scenario": "You wake up in her glade.",
        "first_mes": "*Seraphina smiles.* You're awake!", "mes_example": "<START>\n{{char}}: Hi",
        "creator_notes": "", "system_prompt": "", "post_history_instructions": "",
        "alternate_greetings": ["Oh, hello there."], "tags": ["Fantasy", "Female"],
        "creator": "someone", "character_version": "1.2",
        "extensions": {"talkativeness": "0.5", "fav": False, "world": "glade"},
        "character_book": {"entries": []},
    },
}
V1 = {"name": "Aqua", "description": "A goddess.", "personality": "proud",
      "scenario": "", "first_mes": "Hello!", "mes_example": ""}


def test_v2_json_round_trip_keeps_every_field() -> None:
    card = cards.from_json(V2)
    assert card.name == "Seraphina" and card.tags == ("fantasy", "female")
    assert card.alternate_greetings == ("Oh, hello there.",)
    assert card.extensions["world"] == "glade"
    assert cards.from_json(cards.to_json(card)) == card
    assert cards.to_json(card)["spec"] == "chara_card_v2"


def test_v1_cards_load() -> None:
    card = cards.from_json(V1)
    assert (card.name, card.first_mes, card.personality) == ("Aqua", "Hello!", "proud")


def test_png_round_trip_and_foreign_png() -> None:
    card = cards.from_json(V2)
    png = cards.to_png(card)
    assert png.startswith(cards.PNG_SIGNATURE)
    assert cards.from_png(png) == card
    # A PNG written by another tool: its own image with a chara chunk holding a V1 card.
    foreign = cards.to_png(cards.from_json(V1))
    payload = base64.b64encode(json.dumps(V1).encode())
    chunks = cards._chunks(foreign)
    rebuilt = cards.PNG_SIGNATURE + b"".join(
        cards._chunk(k, b"chara\0" + payload if k == b"tEXt" else b) for k, b in chunks)
    assert cards.from_png(rebuilt).name == "Aqua"
    # Exporting onto an image that already carries a card replaces it, keeping one chunk.
    again = cards.to_png(card, image=rebuilt)
    assert sum(1 for k, b in cards._chunks(again) if k == b"tEXt") == 1
    assert cards.from_png(again).name == "Seraphina"


@pytest.mark.parametrize("bad", [
    [], {"spec": "something_else", "data": {}}, {"spec": "chara_card_v2", "data": []},
    {"spec": "chara_card_v2", "data": {"name": ""}}, {"spec": "chara_card_v2",
                                                       "data": {"name": "x", "tags": "a,b"}},
    {"spec": "chara_card_v2", "data": {"name": "x" * 101}},
    {"spec": "chara_card_v2", "data": {"name": "x", "first_mes": 5}},
    {"spec": "chara_card_v2", "data": {"name": "x\u0000"}},
])
def test_bad_json_cards_are_422(bad) -> None:
    with pytest.raises(ValidationFailed) as caught:
        cards.from_json(bad)
    assert caught.value.code == "invalid_card"


@pytest.mark.parametrize("png", [
    b"not a png", cards.PNG_SIGNATURE + b"\x00\x00", cards.placeholder_image(),
    cards.to_png(cards.from_json(V1))[:-20],
])
def test_bad_pngs_are_422(png: bytes) -> None:
    with pytest.raises(ValidationFailed):
        cards.from_png(png)
