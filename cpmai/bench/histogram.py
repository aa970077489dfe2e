"""A latency histogram in the manner of HdrHistogram: log-linear buckets with 3 significant
digits (≤ 0.1% quantisation) from 1 ns to an hour, fixed memory, mergeable, serialisable.

Why not the `hdrhistogram` package: its `record_value` costs 2.6 µs per call here, more than
the whole timing budget of an in-process call (2 µs). Samples are appended to a plain list (tens
of nanoseconds) and folded into the buckets with numpy a window at a time, so memory stays flat
however long the run.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SUB_BITS = 11  # 2048 linear buckets below 2048 ns, then 1024 per power of two: 1/1024 precision
_SUB = 1 << SUB_BITS
_HALF = _SUB >> 1
MAX_NS = 3600 * 10**9  # an hour; longer values are clamped (and counted as such in `max_ns`)
_BUCKETS = _SUB + (int(MAX_NS).bit_length() - SUB_BITS + 1) * _HALF


def bucket_of(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Bucket index of each value (integer nanoseconds)."""
    v = np.clip(values.astype(np.int64), 0, MAX_NS)
    _, exponent = np.frexp(v.astype(np.float64))  # exponent == bit_length for integers < 2**53
    shift = np.maximum(exponent.astype(np.int64) - SUB_BITS, 0)
    top = v >> shift  # in [1024, 2047] once shifted, or the value itself below 2048
    index: np.ndarray[Any, Any] = np.where(
        shift == 0, v, _SUB + (shift - 1) * _HALF + (top - _HALF)
    )
    return index


def value_of(index: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The middle of each bucket, in nanoseconds."""
    index = np.asarray(index, dtype=np.int64)
    linear = index < _SUB
    shift = np.where(linear, 0, (index - _SUB) // _HALF + 1)
    top = np.where(linear, index, (index - _SUB) % _HALF + _HALF)
    low = top << shift
    width = np.int64(1) << shift
    return np.where(linear, index.astype(np.float64), low + (width - 1) / 2)


class Histogram:
    """Counts per bucket (dense numpy array) plus exact count, sum, min and max."""

    def __init__(self) -> None:
        self.counts = np.zeros(_BUCKETS, dtype=np.int64)
        self.count = 0
        self.sum_ns = 0
        self.min_ns: int | None = None
        self.max_ns = 0

    def record_many(self, values_ns: list[int] | np.ndarray[Any, Any]) -> None:
        values = np.asarray(values_ns, dtype=np.int64)
        if values.size == 0:
            return
        self.counts += np.bincount(bucket_of(values), minlength=_BUCKETS)
        self.count += int(values.size)
        self.sum_ns += int(values.sum())
        low, high = int(values.min()), int(values.max())
        self.min_ns = low if self.min_ns is None else min(self.min_ns, low)
        self.max_ns = max(self.max_ns, high)

    def merge(self, other: Histogram) -> None:
        self.counts += other.counts
        self.count += other.count
        self.sum_ns += other.sum_ns
        if other.min_ns is not None:
            self.min_ns = other.min_ns if self.min_ns is None else min(self.min_ns, other.min_ns)
        self.max_ns = max(self.max_ns, other.max_ns)

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0-100) in nanoseconds (the exact max for q = 100)."""
        return _percentile(None, self.counts, self.count, self.max_ns, q)

    def summary_ms(self) -> dict[str, float | None]:
        """p50, p90, p95, p99, p99.9, max and mean in milliseconds."""
        out: dict[str, float | None] = {}
        for key, q in (("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99), ("p999", 99.9)):
            value = self.percentile(q)
            out[f"{key}_ms"] = None if value is None else round(value / 1e6, 6)
        out["max_ms"] = round(self.max_ns / 1e6, 6) if self.count else None
        out["mean_ms"] = round(self.sum_ns / self.count / 1e6, 6) if self.count else None
        return out

    def to_dict(self) -> dict[str, Any]:
        """Sparse form: the non-empty buckets only (JSON-friendly, a few KB)."""
        nonzero = np.nonzero(self.counts)[0]
        return {
            "sub_bits": SUB_BITS,
            "buckets": nonzero.tolist(),
            "counts": self.counts[nonzero].tolist(),
            "count": self.count,
            "sum_ns": self.sum_ns,
            "min_ns": self.min_ns,
            "max_ns": self.max_ns,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        histogram = cls()
        histogram.counts[np.asarray(data["buckets"], dtype=np.int64)] = np.asarray(
            data["counts"], dtype=np.int64
        )
        histogram.count = int(data["count"])
        histogram.sum_ns = int(data["sum_ns"])
        histogram.min_ns = data["min_ns"]
        histogram.max_ns = int(data["max_ns"])
        return histogram


def _percentile(
    buckets: np.ndarray[Any, Any] | None,
    counts: np.ndarray[Any, Any],
    total: int,
    max_ns: int,
    q: float,
) -> float | None:
    """The q-th percentile of a histogram given as counts per bucket (all buckets when
    `buckets` is None, else the listed ones, in increasing order)."""
    if total == 0:
        return None
    if q >= 100:
        return float(max_ns)
    q_milli = round(q * 1000)  # integer arithmetic: ceil(99.9% of 1000) must be 999
    rank = max(1, -(-q_milli * total // 100_000))
    position = int(np.searchsorted(np.cumsum(counts), rank))
    index = position if buckets is None else int(buckets[position])
    return float(min(value_of(np.array([index]))[0], max_ns))


class Sparse:
    """A histogram kept as its non-empty buckets only (a few KB): what each one-second window
    holds, so an hour of windows stays small. Mergeable like `Histogram`."""

    __slots__ = ("buckets", "count", "counts", "max_ns")

    def __init__(
        self, buckets: np.ndarray[Any, Any], counts: np.ndarray[Any, Any], max_ns: int
    ) -> None:
        self.buckets = buckets
        self.counts = counts
        self.count = int(counts.sum())
        self.max_ns = max_ns

    @classmethod
    def of(cls, values_ns: np.ndarray[Any, Any]) -> Sparse:
        if values_ns.size == 0:
            return cls(np.zeros(0, np.int32), np.zeros(0, np.int64), 0)
        buckets, counts = np.unique(bucket_of(values_ns), return_counts=True)
        return cls(buckets.astype(np.int32), counts.astype(np.int64), int(values_ns.max()))

    def merge(self, other: Sparse) -> Sparse:
        joined = np.concatenate([self.buckets, other.buckets])
        buckets, inverse = np.unique(joined, return_inverse=True)
        counts = np.bincount(inverse, weights=np.concatenate([self.counts, other.counts]))
        return Sparse(
            buckets.astype(np.int32), counts.astype(np.int64), max(self.max_ns, other.max_ns)
        )

    def percentile(self, q: float) -> float | None:
        return _percentile(self.buckets, self.counts, self.count, self.max_ns, q)

    def to_dict(self) -> dict[str, Any]:
        return {
            "buckets": self.buckets.tolist(),
            "counts": self.counts.tolist(),
            "max_ns": self.max_ns,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sparse:
        return cls(
            np.asarray(data["buckets"], dtype=np.int32),
            np.asarray(data["counts"], dtype=np.int64),
            int(data["max_ns"]),
        )
