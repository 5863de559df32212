"""Pure parts of the telemetry read APIs: durations, tags (JSON and logfmt), ids, time ranges,
Jaeger key-values and the span tree."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared import errors
from shared.telemetry_jaeger import key_value
from shared.telemetry_params import (
    MAX_RANGE,
    parse_duration,
    parse_hex_id,
    parse_jaeger_trace_id,
    parse_logfmt,
    parse_lookback,
    parse_tags,
    window,
    window_from_position,
)
from shared.telemetry_query import tree_order


@pytest.mark.parametrize(("text", "ns"), [
    ("0", 0), ("1ns", 1), ("50us", 50_000), ("50\u00b5s", 50_000), ("100ms", 100_000_000),
    ("1.2s", 1_200_000_000), (".5s", 500_000_000), ("1h30m", 5_400_000_000_000),
    ("2m3.5s", 123_500_000_000), (" 10ms ", 10_000_000),
])
def test_durations_in_go_syntax(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text", ["", "10", "ms", "1.2", "-5ms", "+5ms", "5 ms", "5sec", "1d",
                                  "abc", "1e3ms", "9999999999999h"])
def test_bad_durations_are_400(text: str) -> None:
    with pytest.raises(errors.BadRequest) as caught:
        parse_duration(text, "minDuration")
    assert caught.value.code == "invalid_duration"
    assert caught.value.extra["parameter"] == "minDuration"


def test_lookback() -> None:
    assert parse_lookback("1h") == timedelta(hours=1)
    assert parse_lookback("2d") == timedelta(days=2)
    assert parse_lookback("90m") == timedelta(minutes=90)
    assert parse_lookback("1h30m") == timedelta(minutes=90)
    assert parse_lookback("custom") is None and parse_lookback("") is None
    with pytest.raises(errors.BadRequest):
        parse_lookback("forever")


def test_logfmt() -> None:
    assert parse_logfmt('error=true http.route="/users/{id}" db.statement="select \\"x\\""'
                        ) == {"error": "true", "http.route": "/users/{id}",
                              "db.statement": 'select "x"'}
    assert parse_logfmt("flag  k=v ") == {"flag": "true", "k": "v"}
    assert parse_logfmt("k=") == {"k": ""}
    assert parse_logfmt("") == {}
    for bad in ('k="unterminated', "=v", '"k"=v'):
        with pytest.raises(errors.BadRequest) as caught:
            parse_logfmt(bad)
        assert caught.value.code == "invalid_tags"


def test_tags_json_logfmt_and_pairs() -> None:
    assert parse_tags(['{"http.status_code": "200", "error": true, "n": 3}']) == {
        "http.status_code": "200", "error": "true", "n": "3"}
    assert parse_tags(["error=true"], ["http.route:/a:b"]) == {"error": "true",
                                                               "http.route": "/a:b"}
    assert parse_tags(["", "  "]) == {}
    for values, pairs in ((["{bad"], []), (['["a"]'], []), (['{"k": [1]}'], []),
                          (['{"k": null}'], []), ([], ["novalue"]), ([], [":v"]),
                          (['{"k\\u0000": "v"}'], []),
                          ([" ".join(f"k{i}=v" for i in range(17))], [])):
        with pytest.raises(errors.BadRequest) as caught:
            parse_tags(values, pairs)
        assert caught.value.code in ("invalid_tags", "invalid_parameter")


def test_hex_ids() -> None:
    assert parse_hex_id("0AF7651916CD43DD8448EB211C80319C", 16, "trace_id").hex() == (
        "0af7651916cd43dd8448eb211c80319c")
    assert parse_hex_id("b7ad6b7169203331", 8, "span_id") == bytes.fromhex("b7ad6b7169203331")
    for bad, size in (("abc", 16), ("zz" * 16, 16), ("00" * 8, 16), ("00" * 16, 8),
                      ("q" * 32, 16), ("C0" * 15 + " x", 16)):
        with pytest.raises(errors.BadRequest) as caught:
            parse_hex_id(bad, size, "trace_id")
        assert caught.value.code == "invalid_id"
    assert parse_jaeger_trace_id("b7ad6b7169203331").hex() == "0" * 16 + "b7ad6b7169203331"
    with pytest.raises(errors.BadRequest):
        parse_jaeger_trace_id("abcd")


def test_windows_are_bounded() -> None:
    now = datetime(2026, 11, 21, 12, tzinfo=UTC)
    assert window(None, None, timedelta(minutes=15), now=now).start == now - timedelta(
        minutes=15)
    with pytest.raises(errors.BadRequest) as caught:
        window(now, now - timedelta(seconds=1), timedelta(hours=1))
    assert caught.value.code == "invalid_range"
    with pytest.raises(errors.BadRequest):
        window(now - MAX_RANGE - timedelta(seconds=1), now, timedelta(hours=1))
    clamped = window(now - timedelta(days=30), now, timedelta(hours=1), clamp=True)
    assert clamped.end - clamped.start == MAX_RANGE
    kept = window(now - timedelta(hours=2), now, timedelta(hours=1))
    assert window_from_position(kept.position()) == kept
    with pytest.raises(errors.BadRequest):
        window_from_position({"from": "x"})


def test_jaeger_key_values() -> None:
    assert key_value("s", "v") == {"key": "s", "type": "string", "value": "v"}
    assert key_value("b", False) == {"key": "b", "type": "bool", "value": False}
    assert key_value("i", 7) == {"key": "i", "type": "int64", "value": 7}
    assert key_value("huge", 2**60)["value"] == str(2**60)
    assert key_value("f", 1.5) == {"key": "f", "type": "float64", "value": 1.5}
    assert key_value("a", [1, "x"]) == {"key": "a", "type": "string", "value": '[1,"x"]'}
    assert key_value("m", {"k": 1})["value"] == '{"k":1}'


def _span(span_id: str, parent: str | None) -> dict[str, str | None]:
    return {"spanId": span_id, "parentSpanId": parent}


def test_tree_order_depth_first_with_orphans_and_cycles() -> None:
    spans = [_span("r", None), _span("a", "r"), _span("b", "r"), _span("a1", "a"),
             _span("orphan", "missing"), _span("x", "y"), _span("y", "x")]
    ordered = [(s["spanId"], s["depth"]) for s in tree_order(spans)]  # type: ignore[arg-type]
    assert ordered[:5] == [("r", 0), ("a", 1), ("a1", 2), ("b", 1), ("orphan", 0)]
    assert sorted(ordered[5:]) == [("x", 0), ("y", 0)]  # a cycle is shown, not looped on


def test_times_out_of_range_are_400_not_500() -> None:
    from shared.telemetry_jaeger import parse_query
    from shared.telemetry_params import parse_rfc3339

    for text in ("9999-12-31T23:59:59-12:00", "2026-01-01T00:00:00", "soon"):
        with pytest.raises(errors.BadRequest):
            parse_rfc3339(text, "from")
    with pytest.raises(errors.BadRequest):
        window(None, datetime(1, 1, 1, tzinfo=UTC), timedelta(hours=1))
    query = parse_query({"service": "s", "end": "0", "lookback": "9999w"}, {})
    assert query.window.start < query.window.end  # cut to 7 days, no overflow
    with pytest.raises(errors.BadRequest):
        parse_query({"service": "s", "end": "99999999999999999999"}, {})
