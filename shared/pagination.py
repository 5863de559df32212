"""Opaque, tamper-evident cursors for keyset pagination.

A cursor is base64url(JSON position) + "." + a truncated HMAC, so clients cannot forge positions
and a garbled cursor is a clear 400, not a database error.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from shared.errors import BadRequest

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def _sign(secret: str, payload: bytes) -> str:
    digest = hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:12]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def encode_cursor(position: dict[str, Any], secret: str) -> str:
    payload = base64.urlsafe_b64encode(
        json.dumps(position, separators=(",", ":"), sort_keys=True).encode()
    ).rstrip(b"=")
    return f"{payload.decode()}.{_sign(secret, payload)}"


def decode_cursor(cursor: str, secret: str) -> dict[str, Any]:
    invalid = BadRequest("cursor is invalid or expired", code="invalid_cursor")
    payload, _, signature = cursor.partition(".")
    # Compared as bytes: compare_digest refuses non-ASCII strings (a client may send any).
    if not payload or not payload.isascii() or not hmac.compare_digest(
            _sign(secret, payload.encode()).encode(), signature.encode("utf-8", "replace")):
        raise invalid
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        position = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise invalid from exc
    if not isinstance(position, dict):
        raise invalid
    return position


@dataclass(frozen=True)
class PageRequest:
    limit: int
    position: dict[str, Any] | None
    scope: str = ""  # what listing the cursor belongs to


SCOPE_KEY = "@"


def page_request(args: dict[str, str], secret: str, scope: str = "") -> PageRequest:
    """Parse `limit` and `cursor` query parameters. A cursor works only for the listing
    (`scope`) that issued it: another endpoint's or another sort's cursor is 400."""
    raw_limit = args.get("limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        try:
            limit = int(raw_limit)
        except ValueError:
            raise BadRequest("limit must be an integer", code="invalid_limit") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}", code="invalid_limit")
    cursor = args.get("cursor")
    position = decode_cursor(cursor, secret) if cursor else None
    if position is not None and position.pop(SCOPE_KEY, None) != scope:
        raise BadRequest("this cursor belongs to another listing", code="invalid_cursor")
    return PageRequest(limit, position, scope)


def page(items: list[Any], request: PageRequest, secret: str, key: Any) -> dict[str, Any]:
    """Shape a page: callers fetch `limit + 1` rows; `key(item)` gives the next position."""
    has_more = len(items) > request.limit
    items = items[: request.limit]
    next_cursor = (encode_cursor(key(items[-1]) | {SCOPE_KEY: request.scope}, secret)
                   if has_more and items else None)
    return {"items": items, "nextCursor": next_cursor}
