"""Reward rules as pure logic: event days in a time zone with a reset hour, login streaks,
condition evaluation into refusal reasons, and definition validation."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from shared import errors, rewards
from shared.events import Envelope

SEOUL = ZoneInfo("Asia/Seoul")
NEW_YORK = ZoneInfo("America/New_York")


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(("moment", "tz", "reset", "day"), [
    # Midnight reset: the local calendar day.
    ("2026-03-01T14:59:59", SEOUL, 0, date(2026, 3, 1)),   # 23:59:59 in Seoul
    ("2026-03-01T15:00:00", SEOUL, 0, date(2026, 3, 2)),   # 00:00 in Seoul
    # A 04:00 reset: 03:59 local still belongs to the day before.
    ("2026-03-01T18:59:00", SEOUL, 4, date(2026, 3, 1)),   # 03:59 on 3-2 in Seoul
    ("2026-03-01T19:00:00", SEOUL, 4, date(2026, 3, 2)),   # 04:00 on 3-2 in Seoul
    # The same instant is a different day in another zone.
    ("2026-03-02T03:00:00", NEW_YORK, 0, date(2026, 3, 1)),  # 22:00 on 3-1 in New York
    ("2026-03-02T03:00:00", SEOUL, 0, date(2026, 3, 2)),     # 12:00 on 3-2 in Seoul
    # Daylight saving (New York springs forward 2026-03-08): the reset follows wall time.
    ("2026-03-08T06:59:00", NEW_YORK, 3, date(2026, 3, 7)),  # 01:59 EST
    ("2026-03-08T07:00:00", NEW_YORK, 3, date(2026, 3, 8)),  # 03:00 EDT
])
def test_event_day_uses_the_zone_and_reset_hour(moment: str, tz: ZoneInfo, reset: int,
                                                day: date) -> None:
    assert rewards.event_day(_utc(moment), tz, reset) == day


def _days(*offsets: int) -> set[date]:
    return {date(2026, 3, 10) - timedelta(days=o) for o in offsets}


TODAY = date(2026, 3, 10)


@pytest.mark.parametrize(("days", "streak"), [
    (set(), 0),
    (_days(0), 1),
    (_days(0, 1, 2), 3),
    (_days(1, 2, 3), 3),        # today not logged in yet: the streak is still alive
    (_days(2, 3, 4), 0),        # yesterday missed: reset
    (_days(0, 2, 3, 4), 1),     # a gap resets: only today counts
    (_days(0, 1, 3, 4, 5), 2),
])
def test_streak_counts_consecutive_days_and_resets_on_a_missed_day(days: set[date],
                                                                   streak: int) -> None:
    assert rewards.current_streak(days, TODAY) == streak


def test_streak_ignores_duplicates_and_order() -> None:
    logins = [_utc("2026-03-08T01:00:00") + timedelta(days=d, hours=h)
              for d in range(3) for h in (0, 5, 9)]
    expected = None
    for _ in range(20):
        shuffled = logins * 2
        random.shuffle(shuffled)
        days = [rewards.event_day(m, SEOUL, 0) for m in shuffled]
        got = rewards.current_streak(days, date(2026, 3, 10))
        expected = got if expected is None else expected
        assert got == expected == 3


def test_streak_across_the_reset_hour() -> None:
    # Logins at 02:00 local on three nights: with a 04:00 reset they belong to the evening
    # before, so a player who plays past midnight keeps one login per day.
    late_nights = [datetime(2026, 3, d, 2, 0, tzinfo=SEOUL) for d in (8, 9, 10)]
    days = {rewards.event_day(m, SEOUL, 4) for m in late_nights}
    assert days == {date(2026, 3, 7), date(2026, 3, 8), date(2026, 3, 9)}
    today = rewards.event_day(datetime(2026, 3, 10, 12, 0, tzinfo=SEOUL), SEOUL, 4)
    assert rewards.current_streak(days, today) == 3
    # Midnight resets give the same logins different days: 8, 9, 10.
    assert rewards.current_streak({rewards.event_day(m, SEOUL, 0) for m in late_nights},
                                  date(2026, 3, 10)) == 3


def test_unmet_conditions_are_machine_readable() -> None:
    conditions = rewards.parse_conditions([
        {"type": "login_streak", "min": 3}, {"type": "chat_messages", "min": 10},
        {"type": "counter", "name": "quests", "min": 2}, {"type": "characters_created",
                                                          "min": 1}])
    progress = rewards.Progress({"chat_message": 4, "counter:quests": 2,
                                 "character_created": 1}, frozenset(_days(0, 1)), TODAY)
    assert rewards.unmet(conditions, progress) == [
        {"condition": "login_streak", "current": 2, "required": 3},
        {"condition": "chat_messages", "current": 4, "required": 10},
    ]
    view = rewards.progress_view(conditions, progress)
    assert [v["met"] for v in view] == [False, False, True, True]
    assert view[2] == {"type": "counter", "min": 2, "name": "quests", "current": 2,
                       "required": 2, "met": True}


def test_window_reasons() -> None:
    start, end = _utc("2026-03-01T00:00:00"), _utc("2026-03-31T00:00:00")
    assert rewards.window_reasons("active", start, end, _utc("2026-03-15T00:00:00")) == []
    late = rewards.window_reasons("ended", start, end, end)
    assert [r["condition"] for r in late] == ["event_status", "event_window"]


@pytest.mark.parametrize("bad", [
    [{"type": "teleport", "min": 1}],
    [{"type": "chat_messages", "min": 0}],
    [{"type": "chat_messages", "min": True}],
    [{"type": "counter", "min": 1}],
    [{"type": "chat_messages", "min": 1, "name": "x"}],
    [{"type": "chat_messages", "min": 1}, {"type": "chat_messages", "min": 2}],
    ["chat"],
])
def test_invalid_conditions_are_422(bad: list[object]) -> None:
    with pytest.raises(errors.ValidationFailed):
        rewards.parse_conditions(bad)


@pytest.mark.parametrize("bad", [
    [],
    [{"type": "points", "quantity": 0}],
    [{"type": "item", "quantity": 1}],
    [{"type": "points", "name": "gold", "quantity": 1}],
    [{"type": "coupon", "name": "c", "quantity": 1, "budget": -1}],
    [{"type": "points", "quantity": 1, "extra": 1}],
])
def test_invalid_rewards_are_422(bad: list[object]) -> None:
    with pytest.raises(errors.ValidationFailed):
        rewards.parse_rewards(bad)


def test_claim_sequence_picks_rewards_by_per_user_limit() -> None:
    specs = list(enumerate(rewards.parse_rewards([
        {"type": "points", "quantity": 100, "per_user_limit": 3},
        {"type": "item", "name": "badge", "quantity": 1}])))
    first = rewards.rewards_for_claim([(str(i), r) for i, r in specs], 1)
    third = rewards.rewards_for_claim([(str(i), r) for i, r in specs], 3)
    assert [r.asset for _, r in first] == ["points", "item:badge"]
    assert [r.asset for _, r in third] == ["points"]


def test_facts_of_events_are_keyed_by_their_source() -> None:
    from shared import activity

    user = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
    login = Envelope("user.logged_in", {"user_id": user, "session_id": "s"})
    assert activity.fact_of(login) == activity.Fact(
        user, "login", login.id, datetime.fromisoformat(login.occurred_at))
    chat = Envelope("chat.turn_completed", {"user_id": user, "message_id": user})
    assert activity.fact_of(chat).key == user  # type: ignore[union-attr]
    # An edit is a message the user sent; a regenerated reply is not.
    edited = Envelope("chat.turn_completed", {"user_id": user, "message_id": user,
                                              "kind": "edit"})
    assert activity.fact_of(edited) is not None
    assert activity.fact_of(Envelope("chat.turn_completed", {
        "user_id": user, "message_id": user, "kind": "regenerate"})) is None
    assert activity.fact_of(Envelope("user.roles_changed", {"user_id": user})) is None
    for bad in (Envelope("user.logged_in", {"user_id": "nobody"}),
                Envelope("activity.counted", {"user_id": user, "name": "q", "amount": 0}),
                Envelope("user.logged_in", {"user_id": user}, id="bad\x00id"),
                Envelope("user.logged_in", {"user_id": user}, occurred_at="yesterday")):
        with pytest.raises(errors.ValidationFailed):
            activity.fact_of(bad)
