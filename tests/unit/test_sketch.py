"""The latency sketch: quantiles within 1% relative error, exact merges, compact round trips, and
why percentiles over a range must come from merged sketches, never from averaged percentiles."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from shared.sketch import LatencySketch, SketchError

ACCURACY = 0.01
QUANTILES = (0.0, 0.01, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)


def exact(values: list[float], q: float) -> float:
    """The exact q-quantile the sketch's guarantee refers to: rank floor(q * (n - 1))."""
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


def assert_within(estimate: float | None, truth: float) -> None:
    assert estimate is not None
    assert abs(estimate - truth) <= ACCURACY * truth * (1 + 1e-9), (estimate, truth)


def lognormal(rng: random.Random, n: int) -> list[float]:
    return [max(1, round(rng.lognormvariate(16, 1.2))) for _ in range(n)]  # ~9 ms median


def uniform(rng: random.Random, n: int) -> list[float]:
    return [rng.randint(1_000, 2_000_000_000) for _ in range(n)]


def bimodal(rng: random.Random, n: int) -> list[float]:
    return [max(1, round(rng.gauss(2e6, 2e5) if rng.random() < 0.8 else rng.gauss(8e8, 1e8)))
            for _ in range(n)]


DISTRIBUTIONS: dict[str, Callable[[random.Random, int], list[float]]] = {
    "lognormal": lognormal, "uniform": uniform, "bimodal": bimodal}


@pytest.mark.parametrize("name", DISTRIBUTIONS)
@pytest.mark.parametrize("seed", range(3))
def test_quantiles_are_within_the_relative_accuracy(name: str, seed: int) -> None:
    rng = random.Random(f"{name}-{seed}")
    values = DISTRIBUTIONS[name](rng, rng.randint(1, 20_000))
    sketch = LatencySketch(ACCURACY).extend(values)
    assert sketch.count == len(values)
    assert sketch.sum == pytest.approx(sum(values))
    assert (sketch.min, sketch.max) == (min(values), max(values))
    for q in QUANTILES:
        assert_within(sketch.quantile(q), exact(values, q))


@pytest.mark.parametrize("seed", range(5))
def test_merged_sketches_of_a_split_are_the_sketch_of_the_union(seed: int) -> None:
    """Random latencies split across 'minutes': the merge equals the union's sketch and its
    percentiles stay within 1% of the exact percentiles of the union."""
    rng = random.Random(seed)
    minutes = [DISTRIBUTIONS[rng.choice(list(DISTRIBUTIONS))](rng, rng.randint(0, 3_000))
               for _ in range(rng.randint(2, 30))]
    union = [v for minute in minutes for v in minute]
    merged = LatencySketch.merged(LatencySketch().extend(m) for m in minutes)
    assert merged == LatencySketch().extend(union)
    if union:
        for q in QUANTILES:
            assert_within(merged.quantile(q), exact(union, q))


def test_merge_is_commutative_and_associative() -> None:
    rng = random.Random(7)
    a, b, c = (LatencySketch().extend(lognormal(rng, 500)) for _ in range(3))
    assert a.copy().merge(b).merge(c) == c.copy().merge(a.copy().merge(b))
    assert a.copy().merge(b) == b.copy().merge(a)


def test_zero_durations_are_counted_apart() -> None:
    sketch = LatencySketch().extend([0, 0, 0, 5_000, 7_000])
    assert sketch.zero_count == 3
    assert sketch.quantile(0.5) == 0.0
    assert_within(sketch.quantile(1.0), 7_000)
    assert sketch.min == 0


def test_round_trip_is_exact_and_compact() -> None:
    rng = random.Random(3)
    sketch = LatencySketch().extend([*bimodal(rng, 50_000), 0, 0])
    data = sketch.to_bytes()
    assert LatencySketch.from_bytes(data) == sketch
    assert LatencySketch.from_bytes(data).quantile(0.95) == sketch.quantile(0.95)
    assert len(data) < 1_200  # 50,000 values in a few hundred buckets
    empty = LatencySketch()
    assert LatencySketch.from_bytes(empty.to_bytes()) == empty
    assert empty.quantile(0.5) is None and empty.mean is None
    single = LatencySketch().extend([123_456])
    assert len(single.to_bytes()) < 50


def test_bucket_level_building_matches_adding_values() -> None:
    """The rollup buckets in SQL and rebuilds the sketch from (index, count, sum, min, max)."""
    values = [1, 2, 3, 1_000, 1_001, 1_002, 10**9]
    direct = LatencySketch().extend(values)
    built = LatencySketch()
    groups: dict[int, list[float]] = {}
    for value in values:
        groups.setdefault(built.index(value), []).append(value)
    for index, members in groups.items():
        built.add_bucket(index, len(members), total=sum(members), low=min(members),
                         high=max(members))
    assert built == direct


@pytest.mark.parametrize("data", [b"", b"\x02" + bytes(8), LatencySketch().to_bytes() + b"x",
                                  LatencySketch().extend([5]).to_bytes()[:-1]])
def test_corrupt_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(SketchError):
        LatencySketch.from_bytes(data)


def test_invalid_input_is_refused() -> None:
    with pytest.raises(SketchError):
        LatencySketch().add(-1)
    with pytest.raises(SketchError):
        LatencySketch().add(math.nan)
    with pytest.raises(SketchError):
        LatencySketch().quantile(1.5)
    with pytest.raises(SketchError):
        LatencySketch(0.01).merge(LatencySketch(0.02))


def test_averaging_per_minute_p95s_understates_the_hours_p95_but_merging_does_not() -> None:
    """An hour of steady fast traffic with a five-minute incident during which half the
    requests are slow: 7.7% of the hour's requests are slow, so the hour's p95 is slow, but 55
    of the 60 per-minute p95s are fast and their average is far below it. The merged sketch is
    within 1% of it."""
    rng = random.Random(11)
    minutes = []
    for minute in range(60):
        fast = [rng.uniform(10e6, 20e6) for _ in range(1_000)]
        slow = [rng.uniform(1.5e9, 2e9) for _ in range(1_000)] if 20 <= minute < 25 else []
        minutes.append(fast + slow)
    hour = [v for m in minutes for v in m]
    truth = exact(hour, 0.95)
    sketches = [LatencySketch().extend(m) for m in minutes]
    averaged = sum(s.quantile(0.95) or 0.0 for s in sketches) / len(sketches)
    assert averaged < truth / 2  # the wrong way: understates by more than half
    assert_within(LatencySketch.merged(sketches).quantile(0.95), truth)
