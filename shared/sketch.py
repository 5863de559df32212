"""A DDSketch-style mergeable quantile sketch for latencies (durations in nanoseconds).

Values are counted in logarithmic buckets: bucket `i` holds the values in (gamma^(i-1), gamma^i]
with gamma = (1 + a) / (1 - a), and is represented by 2 * gamma^i / (gamma + 1), which is within
relative error `a` of every value in it. So `quantile(q)` is within `a` (1% by default) of the
exact q-quantile (the value of rank floor(q * (n - 1)) in sorted order) of everything added, and
two sketches merge by adding their bucket counts: the merge of the sketches of two sets is the
sketch of their union, exactly. Percentiles over any range therefore come from merging
per-minute sketches, never from averaging per-minute percentiles (which is wrong: it can
understate an hour's p95 by half).

Only non-negative values: zero (a span with no measurable duration) has its own counter. No
bucket collapsing is needed: nanosecond durations from 1 ns to a day span ~1,600 buckets.

Serialized form (`to_bytes`, stored as bytea): a version byte, the relative accuracy (float64),
count, zero count (varints), sum, min, max (float64), the number of buckets, then the buckets in
index order, each as (index delta, count) varints, the first delta zigzag-encoded from 0. A
minute of one endpoint's latencies is typically a few hundred bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable

DEFAULT_RELATIVE_ACCURACY = 0.01
_VERSION = 1
_HEADER = struct.Struct("<Bd")
_STATS = struct.Struct("<ddd")


class SketchError(ValueError):
    """A value or a serialized sketch this sketch cannot accept."""


class LatencySketch:
    """Counts of non-negative values in log-indexed buckets, with exact count/sum/min/max."""

    __slots__ = ("bins", "count", "gamma", "log_gamma", "max", "min", "relative_accuracy",
                 "sum", "zero_count")

    def __init__(self, relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY) -> None:
        if not 0 < relative_accuracy < 1:
            raise SketchError("relative accuracy must be between 0 and 1")
        self.relative_accuracy = relative_accuracy
        self.gamma = (1 + relative_accuracy) / (1 - relative_accuracy)
        self.log_gamma = math.log(self.gamma)
        self.bins: dict[int, int] = {}
        self.zero_count = 0
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    # --- building ------------------------------------------------------------------------

    def index(self, value: float) -> int:
        """The bucket of a positive value: ceil(log_gamma(value))."""
        return math.ceil(math.log(value) / self.log_gamma)

    def add(self, value: float, count: int = 1) -> None:
        if count <= 0:
            if count == 0:
                return
            raise SketchError("count must not be negative")
        if not math.isfinite(value) or value < 0:
            raise SketchError(f"only finite non-negative values: {value!r}")
        if value == 0:
            self.zero_count += count
        else:
            key = self.index(value)
            self.bins[key] = self.bins.get(key, 0) + count
        self.count += count
        self.sum += value * count
        self.min = min(self.min, value)
        self.max = max(self.max, value)

    def extend(self, values: Iterable[float]) -> LatencySketch:
        for value in values:
            self.add(value)
        return self

    def add_bucket(self, index: int, count: int, *, total: float, low: float,
                   high: float) -> None:
        """Add `count` positive values already bucketed elsewhere (the rollup buckets them in
        SQL): `index` is their bucket, `total` their sum, `low` and `high` their smallest and
        largest. Zeros go through `add_zeros`."""
        if count <= 0:
            raise SketchError("a bucket's count must be positive")
        self.bins[index] = self.bins.get(index, 0) + count
        self._account(count, total, low, high)

    def add_zeros(self, count: int) -> None:
        if count <= 0:
            raise SketchError("a bucket's count must be positive")
        self.zero_count += count
        self._account(count, 0.0, 0.0, 0.0)

    def _account(self, count: int, total: float, low: float, high: float) -> None:
        self.count += count
        self.sum += total
        self.min = min(self.min, low)
        self.max = max(self.max, high)

    def merge(self, other: LatencySketch) -> LatencySketch:
        """Add `other` into this sketch (same relative accuracy); returns self."""
        if other.relative_accuracy != self.relative_accuracy:
            raise SketchError("cannot merge sketches of different relative accuracy")
        for key, count in other.bins.items():
            self.bins[key] = self.bins.get(key, 0) + count
        self.zero_count += other.zero_count
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        return self

    def copy(self) -> LatencySketch:
        return LatencySketch(self.relative_accuracy).merge(self)

    @classmethod
    def merged(cls, sketches: Iterable[LatencySketch],
               relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY) -> LatencySketch:
        result = cls(relative_accuracy)
        for sketch in sketches:
            result.merge(sketch)
        return result

    # --- reading -------------------------------------------------------------------------

    def value_of(self, index: int) -> float:
        """The representative of bucket `index`: within the relative accuracy of its values."""
        return 2 * self.gamma ** index / (self.gamma + 1)

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0 <= q <= 1) within the relative accuracy of the exact value of rank
        floor(q * (n - 1)); None when the sketch is empty."""
        if not 0 <= q <= 1:
            raise SketchError("q must be between 0 and 1")
        if self.count == 0:
            return None
        rank = q * (self.count - 1)
        seen = self.zero_count
        if seen > rank:
            return 0.0
        for key in sorted(self.bins):
            seen += self.bins[key]
            if seen > rank:
                # Clamping to the exact extremes only moves the answer towards the truth.
                return min(max(self.value_of(key), self.min), self.max)
        return self.max

    def quantiles(self, qs: Iterable[float]) -> list[float | None]:
        return [self.quantile(q) for q in qs]

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatencySketch):
            return NotImplemented
        return (self.relative_accuracy == other.relative_accuracy
                and self.zero_count == other.zero_count and self.count == other.count
                and self.bins == other.bins and math.isclose(self.sum, other.sum)
                and self.min == other.min and self.max == other.max)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"LatencySketch(count={self.count}, buckets={len(self.bins)}, "
                f"min={self.min}, max={self.max})")

    # --- serialization -------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        out = bytearray(_HEADER.pack(_VERSION, self.relative_accuracy))
        _put_varint(out, self.count)
        _put_varint(out, self.zero_count)
        low, high = (self.min, self.max) if self.count else (0.0, 0.0)
        out += _STATS.pack(self.sum, low, high)
        _put_varint(out, len(self.bins))
        previous = 0
        for position, key in enumerate(sorted(self.bins)):
            delta = key - previous
            _put_varint(out, _zigzag(delta) if position == 0 else delta)
            _put_varint(out, self.bins[key])
            previous = key
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> LatencySketch:
        try:
            view = memoryview(data)
            version, accuracy = _HEADER.unpack_from(view, 0)
            if version != _VERSION:
                raise SketchError(f"unknown sketch version {version}")
            sketch = cls(accuracy)
            offset = _HEADER.size
            sketch.count, offset = _get_varint(view, offset)
            sketch.zero_count, offset = _get_varint(view, offset)
            total, low, high = _STATS.unpack_from(view, offset)
            offset += _STATS.size
            buckets, offset = _get_varint(view, offset)
            key = 0
            for position in range(buckets):
                delta, offset = _get_varint(view, offset)
                key += _unzigzag(delta) if position == 0 else delta
                sketch.bins[key], offset = _get_varint(view, offset)
        except (struct.error, IndexError) as exc:
            raise SketchError("truncated sketch") from exc
        if offset != len(data):
            raise SketchError("trailing bytes after the sketch")
        if sketch.count != sketch.zero_count + sum(sketch.bins.values()):
            raise SketchError("inconsistent sketch counts")
        sketch.sum = total
        if sketch.count:
            sketch.min, sketch.max = low, high
        return sketch


def _zigzag(value: int) -> int:
    return value * 2 if value >= 0 else -value * 2 - 1


def _unzigzag(value: int) -> int:
    return value // 2 if value % 2 == 0 else -(value + 1) // 2


def _put_varint(out: bytearray, value: int) -> None:
    if value < 0:
        raise SketchError("varints are unsigned")
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _get_varint(view: memoryview, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = view[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, offset
        shift += 7
        if shift > 63:
            raise SketchError("varint too long")
