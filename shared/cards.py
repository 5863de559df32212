"""Character Card V2 (`spec: chara_card_v2`) import and export, as JSON and as PNG with the card
in a `chara` tEXt chunk (base64 JSON), so cards from the wider character-chat ecosystem load
unchanged. V1 cards (the flat TavernAI fields) and the `data` block of V3 cards are read too;
export is always V2. Malformed cards raise ValidationFailed (422)."""

from __future__ import annotations

import base64
import binascii
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from shared.errors import ValidationFailed
from shared.validation import clean_json, clean_string

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_CARD_BYTES = 2 * 1024 * 1024
LIMITS = {"name": 100, "description": 20_000, "personality": 5_000, "scenario": 5_000,
          "first_mes": 10_000, "mes_example": 20_000, "system_prompt": 10_000,
          "post_history_instructions": 5_000, "creator_notes": 10_000, "creator": 200,
          "character_version": 50}
MAX_TAGS, MAX_TAG_LENGTH, MAX_GREETINGS = 30, 40, 20


@dataclass(frozen=True)
class Card:
    """The fields of a card that the product stores (the rest is kept in `extensions`)."""

    name: str
    description: str = ""
    personality: str = ""
    scenario: str = ""
    first_mes: str = ""
    mes_example: str = ""
    system_prompt: str = ""
    post_history_instructions: str = ""
    creator_notes: str = ""
    creator: str = ""
    character_version: str = ""
    alternate_greetings: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    extensions: dict[str, Any] = field(default_factory=dict)


def _invalid(message: str) -> ValidationFailed:
    return ValidationFailed(f"not a valid character card: {message}", code="invalid_card")


def _text(data: dict[str, Any], key: str, required: bool = False) -> str:
    value = data.get(key, "")
    if value is None:
        value = ""
    if not isinstance(value, str) or not clean_string(value):
        raise _invalid(f"{key} must be text")
    if required and not value.strip():
        raise _invalid(f"{key} is required")
    if len(value) > LIMITS[key]:
        raise _invalid(f"{key} is longer than {LIMITS[key]} characters")
    return value


def _texts(data: dict[str, Any], key: str, limit: int, item_limit: int) -> tuple[str, ...]:
    value = data.get(key) or []
    if not isinstance(value, list) or len(value) > limit or not all(
            isinstance(v, str) and clean_string(v) and len(v) <= item_limit for v in value):
        raise _invalid(f"{key} must be a list of at most {limit} short texts")
    return tuple(value)


def from_json(card: Any) -> Card:
    """A card from its JSON object: V2 (`spec: chara_card_v2`), V3's data block, or V1 flat."""
    if not isinstance(card, dict):
        raise _invalid("a card is a JSON object")
    if not clean_json(card):  # a PNG's chunk skips the HTTP body's check
        raise _invalid("it has a NUL character or invalid Unicode")
    spec = card.get("spec")
    if spec in ("chara_card_v2", "chara_card_v3"):
        data = card.get("data")
        if not isinstance(data, dict):
            raise _invalid("data must be an object")
    elif spec is None and "name" in card:
        data = card  # V1: the fields at the top level
    else:
        raise _invalid(f"unsupported spec {spec!r}")
    extensions = data.get("extensions") or {}
    if not isinstance(extensions, dict) or len(json.dumps(extensions)) > 100_000:
        raise _invalid("extensions must be an object of reasonable size")
    return Card(
        name=_text(data, "name", required=True).strip(),
        description=_text(data, "description"),
        personality=_text(data, "personality"),
        scenario=_text(data, "scenario"),
        first_mes=_text(data, "first_mes"),
        mes_example=_text(data, "mes_example"),
        system_prompt=_text(data, "system_prompt"),
        post_history_instructions=_text(data, "post_history_instructions"),
        creator_notes=_text(data, "creator_notes"),
        creator=_text(data, "creator"),
        character_version=_text(data, "character_version"),
        alternate_greetings=_texts(data, "alternate_greetings", MAX_GREETINGS,
                                   LIMITS["first_mes"]),
        tags=_tags(_texts(data, "tags", MAX_TAGS, MAX_TAG_LENGTH)),
        extensions=extensions,
    )


def normalize_tags(tags: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Lower-cased, trimmed, de-duplicated, sorted; still within the length limit (some
    letters grow when lower-cased: 'İ' becomes two characters)."""
    out = sorted({t.strip().lower() for t in tags if t.strip()})
    if any(len(t) > MAX_TAG_LENGTH for t in out):
        raise ValidationFailed(f"tags must be at most {MAX_TAG_LENGTH} characters",
                               errors=[{"field": "tags", "message": "a tag is too long"}])
    return tuple(out)


def _tags(tags: tuple[str, ...]) -> tuple[str, ...]:
    try:
        return normalize_tags(tags)
    except ValidationFailed:
        raise _invalid(f"tags must be at most {MAX_TAG_LENGTH} characters") from None


def to_json(card: Card) -> dict[str, Any]:
    """The V2 card."""
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": {
        "name": card.name, "description": card.description, "personality": card.personality,
        "scenario": card.scenario, "first_mes": card.first_mes, "mes_example": card.mes_example,
        "creator_notes": card.creator_notes, "system_prompt": card.system_prompt,
        "post_history_instructions": card.post_history_instructions,
        "alternate_greetings": list(card.alternate_greetings), "tags": list(card.tags),
        "creator": card.creator, "character_version": card.character_version,
        "extensions": card.extensions,
    }}


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    if not png.startswith(PNG_SIGNATURE):
        raise _invalid("not a PNG file")
    chunks, offset = [], len(PNG_SIGNATURE)
    while offset + 8 <= len(png):
        (length,) = struct.unpack(">I", png[offset:offset + 4])
        kind = png[offset + 4:offset + 8]
        body = png[offset + 8:offset + 8 + length]
        crc = png[offset + 8 + length:offset + 12 + length]
        if len(body) != length or len(crc) != 4 or \
                struct.unpack(">I", crc)[0] != zlib.crc32(kind + body):
            raise _invalid("the PNG is truncated or corrupt")
        chunks.append((kind, body))
        offset += 12 + length
        if kind == b"IEND":
            return chunks
    raise _invalid("the PNG has no end")


def from_png(png: bytes) -> Card:
    """The card in a PNG's `chara` (V2) or `ccv3` (V3) tEXt chunk."""
    if len(png) > MAX_CARD_BYTES:
        raise _invalid(f"larger than {MAX_CARD_BYTES} bytes")
    texts = {}
    for kind, body in _chunks(png):
        if kind == b"tEXt" and b"\0" in body:
            keyword, _, text = body.partition(b"\0")
            texts[keyword] = text
    raw = texts.get(b"chara") or texts.get(b"ccv3")
    if raw is None:
        raise _invalid("the PNG has no chara tEXt chunk")
    try:
        card = json.loads(base64.b64decode(raw, validate=True))
    except (binascii.Error, ValueError, RecursionError):
        raise _invalid("the chara chunk is not base64 JSON") from None
    return from_json(card)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def placeholder_image(size: int = 64, rgb: tuple[int, int, int] = (120, 96, 200)) -> bytes:
    """A plain square PNG, for cards exported without an avatar."""
    row = b"\x00" + bytes(rgb) * size
    return (PNG_SIGNATURE
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(row * size))
            + _chunk(b"IEND", b""))


def to_png(card: Card, image: bytes | None = None) -> bytes:
    """`image` (a PNG; a placeholder when None) with the V2 card in a `chara` tEXt chunk,
    replacing any card chunk the image already had."""
    chunks = _chunks(image or placeholder_image())
    payload = base64.b64encode(json.dumps(to_json(card), ensure_ascii=False).encode())
    out = [PNG_SIGNATURE]
    for kind, body in chunks:
        if kind == b"tEXt" and body.split(b"\0", 1)[0] in (b"chara", b"ccv3"):
            continue
        if kind == b"IEND":
            out.append(_chunk(b"tEXt", b"chara\0" + payload))
        out.append(_chunk(kind, body))
    return b"".join(out)
