"""Statistics every part of cpmai shares: percentiles, histogram quantiles, model metrics and
SLO checks.

A leaf: imports nothing of cpmai's but `errors`, and numpy only inside the functions that need
it. Latency histograms with their own bucket scheme live in `cpmai.bench.histogram`.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

LOWER_IS_BETTER = {"log_loss", "mae", "rmse", "mape"}
"""Metrics where a smaller value is the better model."""


_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
}
_COMPARISON = re.compile(r"^\s*(>=|<=|==|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


def parse_comparison(text: str) -> tuple[str, float]:
    """`">= 0.9"` → `(">=", 0.9)`; ValueError for anything else."""
    match = _COMPARISON.match(text)
    if not match:
        raise ValueError('expected a comparison such as ">= 0.9"')
    return match.group(1), float(match.group(2))


def compare(value: float, comparison: str) -> bool:
    """Whether `value` satisfies `comparison` (e.g. `">= 0.9"`)."""
    op, threshold = parse_comparison(comparison)
    return _OPS[op](value, threshold)


def nearest_rank(ordered: Any, percentile: float) -> float | None:
    """The nearest-rank percentile of sorted values (as `cpmai bench` reports it), rounded to
    the microsecond when the values are milliseconds; None for no values."""
    count = len(ordered)
    if not count:
        return None
    index = max(math.ceil(percentile / 100 * count) - 1, 0)
    return round(float(ordered[index]), 3)


def histogram_quantile(counts: Sequence[int], bounds: Sequence[float], q: float) -> float | None:
    """The q-quantile of a histogram given as per-bucket counts (not cumulative) with upper
    `bounds` (one fewer than the counts: the last bucket is +Inf), interpolated linearly inside
    its bucket as Prometheus' `histogram_quantile` does. None for an empty histogram; the last
    finite bound when the rank falls in the +Inf bucket."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    running = 0
    edges = [0.0, *bounds]
    for i, count in enumerate(counts):
        if running + count >= rank and count > 0:
            if i >= len(bounds):
                return float(bounds[-1])
            low, high = edges[i], edges[i + 1]
            return float(low + (high - low) * (rank - running) / count)
        running += count
    return float(bounds[-1])


def score(
    metric: str, truth: Any, predicted: Any, probabilities: Any, classes: list[Any] | None
) -> float:
    """One metric of the task, computed as scikit-learn does (the tests check they agree to
    1e-9). Written with numpy because importing sklearn.metrics costs seconds, on every deploy
    (docs/performance.md)."""
    import numpy as np

    if metric in ("mae", "rmse", "r2", "mape"):
        y, p = np.asarray(truth, dtype=float), np.asarray(predicted, dtype=float)
        error = y - p
        if metric == "mae":
            return float(np.mean(np.abs(error)))
        if metric == "rmse":
            return float(np.sqrt(np.mean(error**2)))
        if metric == "r2":
            total = float(np.sum((y - y.mean()) ** 2))
            residual = float(np.sum(error**2))
            if total == 0:
                return 1.0 if residual == 0 else 0.0
            return 1.0 - residual / total
        return float(np.mean(np.abs(error) / np.maximum(np.abs(y), np.finfo(np.float64).eps)))
    truth = np.asarray(truth)
    predicted = np.asarray(predicted)
    labels = list(classes) if classes else sorted(set(truth.tolist()) | set(predicted.tolist()))
    binary = len(labels) <= 2
    if metric == "accuracy":
        return float(np.mean(truth == predicted))
    if metric in ("precision", "recall", "f1"):
        positives = [labels[-1]] if binary else labels
        values = [_prf(metric, truth == c, predicted == c) for c in positives]
        return float(np.mean(values))
    if probabilities is None:
        from cpmai.errors import UsageError

        raise UsageError(f"metric {metric} needs class probabilities; this model gives none")
    probabilities = np.asarray(probabilities, dtype=float)
    if metric == "roc_auc":
        if binary:
            return _auc(truth == labels[-1], probabilities[:, -1])
        return float(np.mean([_auc(truth == c, probabilities[:, i]) for i, c in enumerate(labels)]))
    index = {c: i for i, c in enumerate(labels)}
    rows = np.array([index[t] for t in truth.tolist()])
    clipped = np.clip(probabilities, np.finfo(float).eps, 1 - np.finfo(float).eps)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    return float(-np.mean(np.log(clipped[np.arange(len(rows)), rows])))


def _prf(metric: str, actual: Any, said: Any) -> float:
    import numpy as np

    true_pos = float(np.sum(actual & said))
    precision = true_pos / float(np.sum(said)) if np.any(said) else 0.0
    recall = true_pos / float(np.sum(actual)) if np.any(actual) else 0.0
    if metric == "precision":
        return precision
    if metric == "recall":
        return recall
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def _auc(positive: Any, scores: Any) -> float:
    """Area under the ROC curve from ranks (Mann–Whitney U), ties given their average rank."""
    import numpy as np

    order = np.argsort(scores, kind="mergesort")
    _, first, inverse, counts = np.unique(
        scores[order], return_index=True, return_inverse=True, return_counts=True
    )
    ranks = np.empty(len(scores), dtype=float)
    ranks[order] = (first + (counts + 1) / 2)[inverse]
    n_pos = int(np.sum(positive))
    n_neg = len(scores) - n_pos
    if n_pos == 0 or n_neg == 0:
        from cpmai.errors import UsageError

        raise UsageError("roc_auc needs both classes in the holdout data")
    return float((np.sum(ranks[positive]) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


SLO_UPPER_BOUNDS = ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "p999_ms", "max_ms", "error_rate")
"""SLO metrics that must stay at or below their threshold."""
SLO_LOWER_BOUNDS = ("throughput_min",)
"""SLO metrics that must stay at or above their threshold."""


@dataclass(frozen=True)
class SloVerdict:
    """One SLO metric against its threshold."""

    metric: str
    threshold: float
    op: str
    """`<=` (an upper bound) or `>=` (a lower bound)."""
    measured: float | None
    passed: bool
    """False when nothing was measured: no figure never passes."""


def slo_measures(
    latency_ms: Mapping[str, float | None], error_rate: float, throughput_rps: float
) -> dict[str, float | None]:
    """What each SLO metric is measured by: latency percentiles (ms), the error rate, and the
    throughput that `throughput_min` bounds."""
    values = {k: None if v is None else float(v) for k, v in latency_ms.items()}
    return {**values, "error_rate": float(error_rate), "throughput_min": float(throughput_rps)}


def check_slo(measured: Mapping[str, float | None], slo: Mapping[str, float]) -> list[SloVerdict]:
    """One verdict per SLO metric, in the SLO's order."""
    out = []
    for metric, threshold in slo.items():
        value = measured.get(metric)
        lower = metric in SLO_LOWER_BOUNDS
        passed = value is not None and (value >= threshold if lower else value <= threshold)
        out.append(SloVerdict(metric, threshold, ">=" if lower else "<=", value, passed))
    return out
