"""A canary's verdict: what each version served in a window, from the workers' counters, and
whether the new one breached against the live one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cpmai.serving.metrics import LATENCY_BUCKETS
from cpmai.serving.runstate import Counters


@dataclass
class Window:
    """What one version served between two snapshots of the workers' counters."""

    requests: int
    errors: int
    p99_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 6),
            "p99_ms": None if self.p99_ms is None else round(self.p99_ms, 3),
        }


def window(
    before: dict[int, dict[str, Counters]], after: dict[int, dict[str, Counters]], version: str
) -> Window:
    """Requests, errors and p99 of `version` between two snapshots, summed over workers."""
    requests = errors = 0
    buckets = [0] * (len(LATENCY_BUCKETS) + 1)
    for pid, now in after.items():
        current = now.get(version)
        if current is None:
            continue
        earlier = before.get(pid, {}).get(version) or Counters(0, 0, [0] * len(buckets))
        requests += current.requests - earlier.requests
        errors += current.errors - earlier.errors
        buckets = [
            b + c - e for b, c, e in zip(buckets, current.buckets, earlier.buckets, strict=True)
        ]
    return Window(requests, errors, quantile(buckets, 0.99))


def quantile(counts: list[int], q: float) -> float | None:
    """The q-quantile in milliseconds of a server's latency histogram (per-bucket counts)."""
    from cpmai.stats import histogram_quantile

    value = histogram_quantile(counts, LATENCY_BUCKETS, q)
    return None if value is None else value * 1000


def judge(live: Window, new: Window, settings: Any, slo_p99_ms: float | None) -> str:
    """The canary verdict for one window: "ok", "no verdict: ..." or "breach: ..."."""
    if new.requests < settings.min_requests or live.requests < settings.min_requests:
        return (
            f"no verdict: {live.requests} live / {new.requests} canary requests "
            f"(fewer than min_requests {settings.min_requests})"
        )
    if new.error_rate > live.error_rate + settings.max_error_rate_increase:
        return (
            f"breach: error rate {new.error_rate:.2%} vs {live.error_rate:.2%} "
            f"(allowed +{settings.max_error_rate_increase:.2%})"
        )
    if new.p99_ms is not None and live.p99_ms is not None:
        floor = slo_p99_ms if slo_p99_ms is not None else live.p99_ms + 1.0
        if new.p99_ms > live.p99_ms * settings.max_p99_ratio and new.p99_ms > floor:
            return (
                f"breach: p99 {new.p99_ms:.2f} ms vs {live.p99_ms:.2f} ms "
                f"(allowed ×{settings.max_p99_ratio:g} and over {floor:.2f} ms)"
            )
    return "ok"


def describe(w: Window) -> str:
    p99 = "-" if w.p99_ms is None else f"{w.p99_ms:.2f} ms"
    return f"{w.requests} req, {w.error_rate:.2%} errors, p99 {p99}"
