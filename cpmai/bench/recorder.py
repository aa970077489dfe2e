"""What a benchmark measured: a latency histogram, per-second windows, counts of outcomes.

`Recorder` is what the load generator and the in-process benchmark write into: samples go to a
plain list (tens of nanoseconds) and are folded into histograms with numpy once per window, so
the cost per call stays tiny and memory stays flat however long the run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cpmai.bench.histogram import Histogram, Sparse

WINDOW_NS = 1_000_000_000


@dataclass
class LoadResult:
    latency: Histogram
    """Closed loop: from send; open loop: from the intended send time (corrected)."""
    uncorrected: Histogram | None
    """Open loop only: from the actual send."""
    lag: Histogram | None
    """Open loop only: how late requests that found a free connection were sent."""
    windows: dict[int, dict[str, Any]]
    """Per window (1 s) index: count, errors, latency histogram."""
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    measured_s: float = 0.0
    not_sent: int = 0
    """Open loop: arrivals still queued for a free connection when the level stopped."""

    @property
    def requests(self) -> int:
        return self.ok + sum(self.errors.values())

    def merge(self, other: LoadResult) -> None:
        self.latency.merge(other.latency)
        for mine, theirs in ((self.uncorrected, other.uncorrected), (self.lag, other.lag)):
            if mine is not None and theirs is not None:
                mine.merge(theirs)
        for index, window in other.windows.items():
            target = self.windows.get(index)
            if target is None:
                self.windows[index] = dict(window)
                continue
            target["count"] += window["count"]
            target["errors"] += window["errors"]
            target["latency"] = target["latency"].merge(window["latency"])
        self.ok += other.ok
        self.not_sent += other.not_sent
        self.errors.update(other.errors)
        self.measured_s = max(self.measured_s, other.measured_s)

    def to_wire(self) -> dict[str, Any]:
        """For passing between processes."""
        return {
            "latency": self.latency.to_dict(),
            "uncorrected": self.uncorrected.to_dict() if self.uncorrected else None,
            "lag": self.lag.to_dict() if self.lag else None,
            "windows": {
                i: {**w, "latency": w["latency"].to_dict()} for i, w in self.windows.items()
            },
            "ok": self.ok,
            "not_sent": self.not_sent,
            "errors": dict(self.errors),
            "measured_s": self.measured_s,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> LoadResult:
        def hist(d: dict[str, Any] | None) -> Histogram | None:
            return None if d is None else Histogram.from_dict(d)

        return cls(
            latency=Histogram.from_dict(data["latency"]),
            uncorrected=hist(data["uncorrected"]),
            lag=hist(data["lag"]),
            windows={
                int(i): {**w, "latency": Sparse.from_dict(w["latency"])}
                for i, w in data["windows"].items()
            },
            ok=int(data["ok"]),
            not_sent=int(data["not_sent"]),
            errors=Counter(data["errors"]),
            measured_s=float(data["measured_s"]),
        )


class Recorder:
    """Collects one worker's samples from `measure_from` (ns, perf_counter) on."""

    def __init__(self, measure_from: int, *, open_loop: bool = False) -> None:
        self.measure_from = measure_from
        self.samples: list[int] = []
        self.raw: list[int] = []
        self.lags: list[int] = []
        self.window = -1
        self.window_count = 0
        self.window_errors = 0
        self.result = LoadResult(
            latency=Histogram(),
            uncorrected=Histogram() if open_loop else None,
            lag=Histogram() if open_loop else None,
            windows={},
        )

    def tick(self, now: int) -> None:
        index = (now - self.measure_from) // WINDOW_NS
        if index != self.window:
            self.fold()
            self.window = index

    def outcome(self, ok: bool, kind: str) -> None:
        if ok:
            self.result.ok += 1
        else:
            self.result.errors[kind] += 1
            self.window_errors += 1
        self.window_count += 1

    def fold(self) -> None:
        """Move the samples of the window that ended into the histograms."""
        values = np.asarray(self.samples, dtype=np.int64)
        self.result.latency.record_many(values)
        if self.window >= 0 and (values.size or self.window_count):
            self.result.windows[int(self.window)] = {
                "count": self.window_count,
                "errors": self.window_errors,
                "latency": Sparse.of(values),
            }
        if self.result.uncorrected is not None:
            self.result.uncorrected.record_many(self.raw)
        if self.result.lag is not None:
            self.result.lag.record_many(self.lags)
        self.samples, self.raw, self.lags = [], [], []
        self.window_count = self.window_errors = 0
