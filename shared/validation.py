"""Small declarative JSON body validation. Schemas render to JSON Schema, so the OpenAPI
document and the code check the same rules (a test compares them)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.errors import BadRequest, ValidationFailed

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def parse_json(raw: bytes, what: str = "body", code: str = "invalid_json") -> Any:
    """Decode JSON or raise BadRequest. Deeply nested input raises RecursionError in the
    decoder; it is bad input like any other, never a server error. Strings must be text that
    every store accepts: JSON can smuggle NUL (`\u0000`, refused by PostgreSQL) and lone
    surrogates (`\ud800`, not encodable as UTF-8), so both are refused here, at the door."""
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest(f"{what} is not valid JSON", code=code) from None
    if not clean_json(value):
        raise BadRequest(f"{what} has a NUL character or invalid Unicode", code=code)
    return value


def clean_string(text: str) -> bool:
    """True for text without NUL that encodes as UTF-8."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def clean_json(value: Any) -> bool:
    """True when every string (keys included) in a decoded JSON value is clean text."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not clean_string(item):
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def canonical_uuid(value: object) -> str | None:
    """The canonical form of a UUID given as a string, or None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def uuid_field(value: object, field: str) -> str:
    """A UUID body field, or 422 naming the field."""
    canonical = canonical_uuid(value)
    if canonical is None:
        raise ValidationFailed("invalid id", errors=[{"field": field, "message": "must be a UUID"}])
    return canonical


@dataclass(frozen=True)
class Field:
    type: str
    required: bool = False
    min_length: int | None = None
    max_length: int | None = None
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[Any, ...] | None = None
    pattern: str | None = None
    items: Field | None = None
    description: str = ""
    nullable: bool = False  # JSON null is a value (e.g. "clear the avatar"), not an omission

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": [self.type, "null"] if self.nullable else self.type}
        for key, value in (
            ("minLength" if self.type == "string" else "minItems", self.min_length),
            ("maxLength" if self.type == "string" else "maxItems", self.max_length),
            ("minimum", self.minimum),
            ("maximum", self.maximum),
            ("pattern", self.pattern),
        ):
            if value is not None:
                schema[key] = value
        if self.enum is not None:
            schema["enum"] = list(self.enum)
        if self.items is not None:
            schema["items"] = self.items.json_schema()
        return schema


@dataclass(frozen=True)
class Schema:
    fields: Mapping[str, Field] = field(default_factory=dict)
    allow_extra: bool = False

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {name: f.json_schema() for name, f in self.fields.items()},
            "additionalProperties": self.allow_extra,
        }
        required = [name for name, f in self.fields.items() if f.required]
        if required:
            schema["required"] = required
        return schema

    def validate(self, body: Any) -> dict[str, Any]:
        """Return the validated object or raise ValidationFailed listing every problem."""
        if not isinstance(body, dict):
            raise ValidationFailed("request body must be a JSON object", errors=[
                {"field": "", "message": "expected an object"}
            ])
        errors: list[dict[str, str]] = []
        for name, spec in self.fields.items():
            if name not in body:
                if spec.required:
                    errors.append({"field": name, "message": "is required"})
                continue
            if body[name] is None:
                if not spec.nullable:
                    errors.append({"field": name, "message": "must not be null"})
                continue
            errors.extend(_check(name, spec, body[name]))
        if not self.allow_extra:
            errors.extend(
                {"field": str(name), "message": "is not allowed"}
                for name in body
                if name not in self.fields
            )
        if errors:
            raise ValidationFailed("request body is invalid", errors=errors)
        return {k: v for k, v in body.items() if k in self.fields or self.allow_extra}


def _check(path: str, spec: Field, value: Any) -> list[dict[str, str]]:
    expected = _JSON_TYPES[spec.type]
    # bool is an int in Python but not in JSON.
    if not isinstance(value, expected) or (isinstance(value, bool) and spec.type != "boolean"):
        return [{"field": path, "message": f"must be of type {spec.type}"}]
    problems: list[str] = []
    if isinstance(value, str | list):
        if spec.min_length is not None and len(value) < spec.min_length:
            problems.append(f"must have at least {spec.min_length} characters/items")
        if spec.max_length is not None and len(value) > spec.max_length:
            problems.append(f"must have at most {spec.max_length} characters/items")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if spec.minimum is not None and value < spec.minimum:
            problems.append(f"must be >= {spec.minimum:g}")
        if spec.maximum is not None and value > spec.maximum:
            problems.append(f"must be <= {spec.maximum:g}")
    if spec.enum is not None and value not in spec.enum:
        problems.append("must be one of " + ", ".join(map(str, spec.enum)))
    if spec.pattern is not None and isinstance(value, str) and not re.search(spec.pattern, value):
        problems.append("has an invalid format")
    result = [{"field": path, "message": m} for m in problems]
    if spec.items is not None and isinstance(value, list):
        for i, item in enumerate(value):
            result.extend(_check(f"{path}[{i}]", spec.items, item))
    return result
