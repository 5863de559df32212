"""Query parameters of the telemetry read APIs, parsed strictly: every bad value is a 400 with
the reason and a machine-readable `code`, before any SQL runs.

Pure functions (no database): durations in Go's syntax (`1.2s`, `100ms`, `50us`, as the Jaeger
API takes them), tags as a JSON object (the Jaeger UI) or logfmt (`error=true http.route="/x"`),
hex ids of a fixed length, time ranges that are always bounded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from shared import errors
from shared.validation import clean_string

MAX_RANGE = timedelta(days=7)  # the retention: older partitions do not exist
MAX_TEXT = 512  # service, operation, tag keys and values
MAX_TAGS = 16
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_UNITS_NS = {"ns": 1, "us": 1_000, "\u00b5s": 1_000, "\u03bcs": 1_000, "ms": 1_000_000,
             "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_LOOKBACK = re.compile(r"^(\d{1,4})([smhdw])$")
_LOOKBACK_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_DURATION_NS = 2**63 - 1


def bad(parameter: str, reason: str, code: str = "invalid_parameter") -> errors.BadRequest:
    return errors.BadRequest(f"{parameter}: {reason}", code=code, parameter=parameter)


def parse_duration(text: str, parameter: str = "duration") -> int:
    """A Go duration string (`1.5s`, `100ms`, `1h30m`, `50us`; bare `0`) as nanoseconds."""
    value = text.strip()
    if value == "0":
        return 0
    if not value or value.startswith(("-", "+")):
        raise bad(parameter, "expected a non-negative duration such as 100ms, 1.5s or 50us",
                  "invalid_duration")
    position, total = 0, Decimal(0)
    while position < len(value):
        match = _GO_DURATION.match(value, position)
        if match is None:
            raise bad(parameter, "expected a duration such as 100ms, 1.5s or 50us "
                      "(units ns, us, ms, s, m, h)", "invalid_duration")
        total += Decimal(match.group(1)) * _UNITS_NS[match.group(2)]
        position = match.end()
    if total > MAX_DURATION_NS:
        raise bad(parameter, "duration is too large", "invalid_duration")
    return int(total.to_integral_value())


def parse_lookback(text: str) -> timedelta | None:
    """The Jaeger UI's `lookback` (`1h`, `2d`, `custom`): None when it names no length."""
    value = text.strip()
    if not value or value == "custom":
        return None
    match = _LOOKBACK.match(value)
    if match:
        return timedelta(seconds=int(match.group(1)) * _LOOKBACK_UNITS[match.group(2)])
    return timedelta(microseconds=parse_duration(value, "lookback") // 1000)


def parse_logfmt(text: str, parameter: str = "tags") -> dict[str, str]:
    """`key=value key2="quoted value" flag` (a bare key means `true`), as Grafana writes tags."""
    tags: dict[str, str] = {}
    position, length = 0, len(text)
    while position < length:
        while position < length and text[position].isspace():
            position += 1
        if position >= length:
            break
        start = position
        while position < length and text[position] != "=" and not text[position].isspace():
            position += 1
        key = text[start:position]
        if not key or key.startswith('"'):
            raise bad(parameter, "expected key=value pairs (logfmt) or a JSON object",
                      "invalid_tags")
        if position >= length or text[position] != "=":
            tags[key] = "true"
            continue
        position += 1
        if position < length and text[position] == '"':
            position += 1
            chars: list[str] = []
            while position < length and text[position] != '"':
                if text[position] == "\\" and position + 1 < length:
                    position += 1
                chars.append(text[position])
                position += 1
            if position >= length:
                raise bad(parameter, f"unterminated quoted value for {key}", "invalid_tags")
            position += 1
            tags[key] = "".join(chars)
        else:
            start = position
            while position < length and not text[position].isspace():
                position += 1
            tags[key] = text[start:position]
    return tags


def parse_tags(values: Sequence[str], pairs: Sequence[str] = ()) -> dict[str, str]:
    """Jaeger's `tags` (a JSON object of strings; logfmt accepted too) and `tag=key:value`."""
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition(":")
        if not sep or not key:
            raise bad("tag", f"expected key:value, got {pair!r}", "invalid_tags")
        tags[key] = value
    for raw in values:
        text = raw.strip()
        if not text:
            continue
        if text.startswith(("{", "[")):
            try:
                decoded = json.loads(text)
            except (ValueError, RecursionError):
                raise bad("tags", "not a valid JSON object", "invalid_tags") from None
            if not isinstance(decoded, dict):
                raise bad("tags", "expected a JSON object of key: value", "invalid_tags")
            for key, value in decoded.items():
                if isinstance(value, bool):
                    tags[key] = "true" if value else "false"
                elif isinstance(value, str | int | float):
                    tags[key] = str(value)
                else:
                    raise bad("tags", f"the value of {key} must be a string, number or bool",
                              "invalid_tags")
        else:
            tags.update(parse_logfmt(text))
    if len(tags) > MAX_TAGS:
        raise bad("tags", f"at most {MAX_TAGS} tags", "invalid_tags")
    for key, value in tags.items():
        text_ok(key, "tags")
        text_ok(value, "tags")
    return tags


def text_ok(value: str, parameter: str) -> str:
    """A text filter PostgreSQL can take: no NUL, valid UTF-8, not absurdly long."""
    if not clean_string(value) or len(value) > MAX_TEXT:
        raise bad(parameter, f"must be text of at most {MAX_TEXT} characters")
    return value


def parse_hex_id(value: str, size: int, parameter: str) -> bytes:
    """A lowercase or uppercase hex id of exactly `size` bytes."""
    text = value.strip().lower()
    if len(text) != size * 2 or not re.fullmatch(r"[0-9a-f]+", text):
        raise bad(parameter, f"must be {size * 2} hex characters", "invalid_id")
    return bytes.fromhex(text)


def parse_jaeger_trace_id(value: str) -> bytes:
    """Jaeger's trace id: 32 hex characters, or 16 for a 64-bit id (the high half zero)."""
    text = value.strip().lower()
    if len(text) == 16:
        text = "0" * 16 + text
    return parse_hex_id(text, 16, "traceID")


def parse_int(value: str | None, parameter: str, default: int, low: int, high: int,
              code: str = "invalid_parameter") -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise bad(parameter, "must be an integer", code) from None
    if not low <= number <= high:
        raise bad(parameter, f"must be between {low} and {high}", code)
    return number


def parse_rfc3339(value: str, parameter: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        if moment.tzinfo is None:
            raise ValueError("no offset")
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise bad(parameter, "must be an RFC 3339 date-time with an offset",
                  "invalid_time") from None


def from_micros(value: str, parameter: str) -> datetime:
    """Jaeger's `start`/`end`: microseconds since the Unix epoch."""
    try:
        micros = int(value)
    except ValueError:
        raise bad(parameter, "must be an integer (microseconds since the epoch)",
                  "invalid_time") from None
    if not 0 <= micros <= 253_402_300_799_000_000:  # up to year 9999
        raise bad(parameter, "is out of range", "invalid_time")
    return EPOCH + timedelta(microseconds=micros)


def micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Window:
    """A half-open time range [start, end), never longer than MAX_RANGE."""

    start: datetime
    end: datetime

    def position(self) -> dict[str, int]:
        return {"from": micros(self.start), "to": micros(self.end)}


def window(start: datetime | None, end: datetime | None, default: timedelta,
           *, clamp: bool = False, now: datetime | None = None) -> Window:
    """The range to query: defaults to the last `default`; start after end is 400; a range
    longer than MAX_RANGE is 400, or cut to its newest MAX_RANGE with `clamp` (the Jaeger API,
    whose clients send whatever range a dashboard shows)."""
    end = end or now or datetime.now(UTC)
    try:
        start = start or end - default
    except OverflowError:
        raise bad("to", "is out of range", "invalid_time") from None
    if start > end:
        raise bad("from", "the start of the range is after its end", "invalid_range")
    if end - start > MAX_RANGE:
        if not clamp:
            raise bad("from", f"the range is longer than {MAX_RANGE.days} days",
                      "invalid_range")
        start = end - MAX_RANGE
    return Window(start, end)


def window_from_position(position: dict[str, object]) -> Window:
    """The range a cursor was issued for: later pages keep the first page's range."""
    try:
        start, end = int(str(position["from"])), int(str(position["to"]))
    except (KeyError, ValueError):
        raise errors.BadRequest("cursor is invalid or expired", code="invalid_cursor") from None
    return Window(EPOCH + timedelta(microseconds=start), EPOCH + timedelta(microseconds=end))
