"""The pure part of alert rules: conditions, the state machine, parameters and events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared import errors
from shared.alerts import (
    EVENT_TYPE,
    Phase,
    Rule,
    Traffic,
    advance,
    event,
    measure,
    normalize_params,
)
from shared.sketch import LatencySketch

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def rule(kind: str, **params: float) -> Rule:
    return Rule("00000000-0000-4000-8000-000000000001", None, f"{kind} rule", kind, None,
                normalize_params(kind, params))


def run(holds: list[bool], for_minutes: int) -> list[list[tuple[str, str]]]:
    phase, out = Phase(), []
    for n, condition in enumerate(holds):
        phase, transitions = advance(phase, condition, T0 + n * MINUTE, for_minutes)
        out.append(transitions)
    return out


def test_pending_then_firing_after_for_minutes_then_resolved_then_ok() -> None:
    assert run([True, True, True, False, False], 2) == [
        [("ok", "pending")], [("pending", "firing")], [], [("firing", "resolved")],
        [("resolved", "ok")]]


def test_for_one_minute_goes_through_pending_in_the_same_minute() -> None:
    assert run([True, False], 1) == [[("ok", "pending"), ("pending", "firing")],
                                     [("firing", "resolved")]]


def test_a_condition_clearing_before_for_minutes_never_fires() -> None:
    assert run([True, True, False, False], 3) == [[("ok", "pending")], [], [("pending", "ok")],
                                                  []]


def test_resolved_goes_back_to_pending_when_the_condition_returns() -> None:
    assert run([True, False, True, True], 2) == [
        [("ok", "pending")], [("pending", "ok")], [("ok", "pending")], [("pending", "firing")]]
    assert run([True, True, False, True], 2)[3] == [("resolved", "pending")]


def test_a_firing_rule_transitions_once_however_long_it_fires() -> None:
    transitions = [t for step in run([True] * 30, 5) for t in step]
    assert transitions == [("ok", "pending"), ("pending", "firing")]


def test_the_episode_start_is_kept_while_active() -> None:
    phase, _ = advance(Phase(), True, T0, 5)
    phase, _ = advance(phase, True, T0 + MINUTE, 5)
    assert phase == Phase("pending", T0)
    phase, _ = advance(phase, False, T0 + 2 * MINUTE, 5)
    assert phase == Phase("ok", None)


def test_service_down_needs_expected_traffic_then_holds_while_silent() -> None:
    down = rule("service_down", expected_minutes=3)
    assert measure(down, "ok", Traffic(0, 0, [5, 5, 5])).holds
    assert not measure(down, "ok", Traffic(0, 0, [0, 5, 5])).holds  # no steady traffic
    assert not measure(down, "ok", Traffic(0, 0, [5, 5])).holds  # not enough history
    assert not measure(down, "ok", Traffic(1, 0, [5, 5, 5])).holds
    assert measure(down, "firing", Traffic(0, 0, [5, 0, 0])).holds  # still down
    assert not measure(down, "firing", Traffic(2, 0, [0, 0, 0])).holds  # back up


def test_error_rate_over_the_threshold_with_enough_requests() -> None:
    errors_rule = rule("error_rate")
    assert measure(errors_rule, "ok", Traffic(100, 6)).holds
    assert measure(errors_rule, "ok", Traffic(100, 6)).value == pytest.approx(0.06)
    assert not measure(errors_rule, "ok", Traffic(100, 5)).holds  # not above 5%
    assert not measure(errors_rule, "ok", Traffic(5, 5)).holds  # fewer than min_requests
    result = measure(errors_rule, "ok", Traffic(0, 0))
    assert (result.holds, result.value, result.threshold) == (False, None, 0.05)


def test_latency_uses_the_merged_sketch_quantile_in_milliseconds() -> None:
    slow = rule("latency")
    fast, heavy = LatencySketch(), LatencySketch()
    fast.extend([100e6] * 90)  # 100 ms
    heavy.extend([3e9] * 10)  # 3 s: 10% of the merged minute, so its p95 is 3 s
    merged = LatencySketch.merged([fast, heavy])
    result = measure(slow, "ok", Traffic(100, 0, (), merged))
    assert result.holds and result.value == pytest.approx(3000, rel=0.01)
    assert result.threshold == 2000
    assert not measure(slow, "ok", Traffic(90, 0, (), fast)).holds
    assert measure(slow, "ok", Traffic(0, 0, (), None)).value is None


def test_traffic_spike_against_the_trailing_baseline() -> None:
    spike = rule("traffic_spike", baseline_minutes=10)
    steady = [20] * 10
    result = measure(spike, "ok", Traffic(61, 0, steady))
    assert result.holds and result.threshold == pytest.approx(60)
    assert not measure(spike, "ok", Traffic(60, 0, steady)).holds
    assert not measure(spike, "ok", Traffic(61, 0, [0] * 6 + [20] * 4)).holds  # no baseline
    assert not measure(spike, "ok", Traffic(9, 0, [1] * 10)).holds  # below min_requests


def test_params_take_defaults_and_refuse_bad_values() -> None:
    assert normalize_params("error_rate", {}) == {"threshold": 0.05, "for_minutes": 2,
                                                  "min_requests": 10}
    assert normalize_params("latency", {"threshold": 500})["threshold"] == 500.0
    for bad in ({"threshold": 2}, {"for_minutes": 1.5}, {"for_minutes": True},
                {"threshold": "x"}, {"nope": 1}, {"for_minutes": 0}):
        with pytest.raises(errors.ValidationFailed):
            normalize_params("error_rate", bad)


def test_events_carry_exactly_the_contract_and_stable_ids() -> None:
    errors_rule = rule("error_rate")
    result = measure(errors_rule, "pending", Traffic(100, 20))
    one = event(errors_rule, "", "shop", T0, ("pending", "firing"), result, T0 - MINUTE)
    again = event(errors_rule, "", "shop", T0, ("pending", "firing"), result, T0 - MINUTE)
    assert one.type == EVENT_TYPE and one.id == again.id
    assert set(one.data) == {"rule_id", "rule_name", "kind", "tenant", "service", "from", "to",
                             "minute", "value", "threshold", "started_at", "summary"}
    assert one.data["from"] == "pending" and one.data["to"] == "firing"
    assert one.data["minute"] == "2026-11-20T12:00:00Z"
    assert one.data["started_at"] == "2026-11-20T11:59:00Z"
    assert one.data["value"] == pytest.approx(0.2) and one.data["threshold"] == 0.05
    assert "20.0%" in one.data["summary"]
    other = event(errors_rule, "", "shop", T0 + MINUTE, ("firing", "resolved"), result, T0)
    assert other.id != one.id
