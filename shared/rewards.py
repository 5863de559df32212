"""Reward rules as pure logic: event definitions, calendar days in an event's time zone, login
streaks, and the evaluation of conditions into machine-readable refusal reasons.

No I/O here: the SQL lives in `reward_events` and `claims`, which call these functions, and
the unit tests exercise them directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shared import errors

# Condition type -> the activity fact kind it counts (login streaks count days, not facts).
FACT_KINDS = {
    "login_streak": "login",
    "chat_messages": "chat_message",
    "characters_created": "character_created",
    "friends_invited": "friend_invited",
}
CONDITION_TYPES = (*FACT_KINDS, "counter")
REWARD_KINDS = ("points", "item", "coupon")
MAX_THRESHOLD = 1_000_000
MAX_QUANTITY = 1_000_000
MAX_BUDGET = 10**12


@dataclass(frozen=True)
class Condition:
    type: str
    min: int
    name: str = ""  # the counter's name, for `counter`

    @property
    def kind(self) -> str:
        """The activity fact kind this condition reads."""
        return f"counter:{self.name}" if self.type == "counter" else FACT_KINDS[self.type]

    def view(self) -> dict[str, Any]:
        return {"type": self.type, "min": self.min} | ({"name": self.name} if self.name else {})


@dataclass(frozen=True)
class Reward:
    kind: str
    name: str
    quantity: int
    per_user_limit: int = 1
    budget: int | None = None

    @property
    def asset(self) -> str:
        return "points" if self.kind == "points" else f"{self.kind}:{self.name}"


def _invalid(field: str, message: str) -> errors.ValidationFailed:
    return errors.ValidationFailed("event is invalid", errors=[{"field": field,
                                                                "message": message}])


def _int(value: Any, field: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _invalid(field, f"must be an integer from {low} to {high}")
    return value


def _name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value.strip()) <= 64:
        raise _invalid(field, "must be a name of 1 to 64 characters")
    return value.strip()


def _only(item: Mapping[str, Any], allowed: set[str], field: str) -> None:
    extra = sorted(set(item) - allowed)
    if extra:
        raise _invalid(f"{field}.{extra[0]}", "is not allowed")


def parse_conditions(raw: Iterable[Any]) -> tuple[Condition, ...]:
    """Conditions from a request (422 naming the field on anything wrong)."""
    out: list[Condition] = []
    for i, item in enumerate(raw):
        field = f"conditions[{i}]"
        if not isinstance(item, dict):
            raise _invalid(field, "must be an object")
        kind = item.get("type")
        if kind not in CONDITION_TYPES:
            raise _invalid(f"{field}.type", "must be one of " + ", ".join(CONDITION_TYPES))
        _only(item, {"type", "min", "name"} if kind == "counter" else {"type", "min"}, field)
        threshold = _int(item.get("min"), f"{field}.min", 1, MAX_THRESHOLD)
        name = _name(item.get("name"), f"{field}.name") if kind == "counter" else ""
        out.append(Condition(str(kind), threshold, name))
    if len({(c.type, c.name) for c in out}) != len(out):
        raise _invalid("conditions", "each condition type (and counter name) at most once")
    return tuple(out)


def parse_rewards(raw: Iterable[Any]) -> tuple[Reward, ...]:
    out: list[Reward] = []
    for i, item in enumerate(raw):
        field = f"rewards[{i}]"
        if not isinstance(item, dict):
            raise _invalid(field, "must be an object")
        kind = item.get("type")
        if kind not in REWARD_KINDS:
            raise _invalid(f"{field}.type", "must be one of " + ", ".join(REWARD_KINDS))
        _only(item, {"type", "name", "quantity", "per_user_limit", "budget"}, field)
        name = "" if kind == "points" else _name(item.get("name"), f"{field}.name")
        if kind == "points" and item.get("name") not in (None, ""):
            raise _invalid(f"{field}.name", "points have no name")
        quantity = _int(item.get("quantity"), f"{field}.quantity", 1, MAX_QUANTITY)
        limit = _int(item.get("per_user_limit", 1), f"{field}.per_user_limit", 1, 1000)
        budget = item.get("budget")
        if budget is not None:
            budget = _int(budget, f"{field}.budget", 0, MAX_BUDGET)
        out.append(Reward(str(kind), name, quantity, limit, budget))
    if not out:
        raise _invalid("rewards", "an event grants at least one reward")
    return tuple(out)


def parse_time(value: Any, field: str) -> datetime:
    """An RFC 3339 timestamp with an offset."""
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise _invalid(field, "must be an RFC 3339 date-time with an offset") from None
    if parsed.tzinfo is None:
        raise _invalid(field, "must carry a UTC offset")
    return parsed


def zone(name: Any) -> ZoneInfo:
    try:
        if not isinstance(name, str) or not name or "\x00" in name:
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise _invalid("time_zone", "must be an IANA time zone such as Asia/Seoul") from None


def event_day(moment: datetime, tz: ZoneInfo, reset_hour: int) -> date:
    """The event's calendar day of `moment`: local wall-clock time in the event's zone, with
    the day starting at `reset_hour` instead of midnight (04:00 resets keep a late-night
    session on the day it began)."""
    local = moment.astimezone(tz).replace(tzinfo=None)
    return (local - timedelta(hours=reset_hour)).date()


def current_streak(days: Iterable[date], today: date) -> int:
    """Consecutive days with a login ending today, or yesterday when today has none yet (the
    streak is still alive until today ends). A missed day resets it to 0. Derived from the set
    of days only, so duplicate and reordered logins cannot change it."""
    seen = set(days)
    cursor = today if today in seen else today - timedelta(days=1)
    streak = 0
    while cursor in seen:
        streak += 1
        cursor -= timedelta(days=1)
    return streak


@dataclass(frozen=True)
class Progress:
    """A user's activity within an event's window."""

    totals: Mapping[str, int]  # fact kind -> sum of amounts in the window
    login_days: frozenset[date]
    today: date

    def current(self, condition: Condition) -> int:
        if condition.type == "login_streak":
            return current_streak(self.login_days, self.today)
        return int(self.totals.get(condition.kind, 0))


def progress_view(conditions: Iterable[Condition], progress: Progress) -> list[dict[str, Any]]:
    return [c.view() | {"current": (cur := progress.current(c)), "required": c.min,
                        "met": cur >= c.min} for c in conditions]


def unmet(conditions: Iterable[Condition], progress: Progress) -> list[dict[str, Any]]:
    """Refusal reasons for the conditions not met: {condition, current, required}."""
    reasons = []
    for condition in conditions:
        current = progress.current(condition)
        if current < condition.min:
            reason: dict[str, Any] = {"condition": condition.type, "current": current,
                                      "required": condition.min}
            if condition.name:
                reason["name"] = condition.name
            reasons.append(reason)
    return reasons


def window_reasons(status: str, starts_at: datetime, ends_at: datetime, now: datetime
                   ) -> list[dict[str, Any]]:
    """Why an event cannot be claimed right now (status and window), if it cannot."""
    reasons: list[dict[str, Any]] = []
    if status != "active":
        reasons.append({"condition": "event_status", "current": status, "required": "active"})
    if not starts_at <= now < ends_at:
        reasons.append({"condition": "event_window", "current": now.isoformat(),
                        "required": {"starts_at": starts_at.isoformat(),
                                     "ends_at": ends_at.isoformat()}})
    return reasons


def rewards_for_claim(rewards: Iterable[tuple[str, Reward]], seq: int
                      ) -> list[tuple[str, Reward]]:
    """The rewards the user's `seq`-th claim of an event grants: those whose per-user limit
    allows that many."""
    return [(rid, r) for rid, r in rewards if r.per_user_limit >= seq]
