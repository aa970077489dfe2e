"""Summaries of a span of the prediction log and resource samples: traffic, errors, latency,
resources, SLO checks, synthetic and lost requests, as the typed parts of the monitor document
(`cpmai.monitor.result`). Shared by `cpmai monitor` and `cpmai cost` (which uses
`resource_summary`, `without_spans` and `synthetic_summary`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from cpmai.clock import iso
from cpmai.monitor.result import Latency, Lost, Resources, SloCheck, Synthetic
from cpmai.predlog.reader import Traffic
from cpmai.stats import nearest_rank

PERCENTILES = (50, 95, 99)


def lost_summary(lost: list[tuple[float, float, int, str]]) -> Lost | None:
    """Requests the servers answered but could not log in the period, from the log's records
    of them (first, last, requests, reasons); None: there were none."""
    if not lost:
        return None
    return Lost(
        requests=sum(item[2] for item in lost),
        since=iso(min(item[0] for item in lost)),
        until=iso(max(item[1] for item in lost)),
        reasons=sorted({reason for item in lost for reason in item[3].split("; ")}),
    )


def synthetic_summary(by_source: dict[str, int], included: bool) -> Synthetic:
    """The synthetic requests of a period (load tests), by source, most first, and whether they
    were counted in."""
    return Synthetic(
        requests=sum(by_source.values()),
        by_source=dict(sorted(by_source.items(), key=lambda kv: -kv[1])),
        included=included,
    )


def lost_of(traffic: Traffic) -> Lost | None:
    """`lost_summary` of the traffic."""
    return lost_summary(traffic.lost)


def synthetic_of(traffic: Traffic) -> Synthetic:
    """`synthetic_summary` of the traffic."""
    return synthetic_summary(traffic.synthetic, traffic.synthetic_included)


def per_version(traffic: Traffic) -> dict[str, int]:
    """Requests logged per version."""
    if not traffic.requests:
        return {}
    counts = np.bincount(traffic.version, minlength=len(traffic.versions)).tolist()
    return {v: int(c) for v, c in zip(traffic.versions, counts, strict=False)}


def traffic_fields(traffic: Traffic, low: float, high: float, *, last: bool) -> dict[str, Any]:
    """Requests, rows, errors and latency in [low, high) (the last window includes `high`): the
    fields of a `TrafficSummary` but its resources."""
    mask = (traffic.time >= low) & ((traffic.time <= high) if last else (traffic.time < high))
    weight = traffic.weight[mask]
    status = traffic.status[mask]
    requests = float(weight.sum())
    ok = status < 400
    errors: dict[str, int] = {}
    if (~ok).any():
        codes, counts = np.unique(status[~ok], return_counts=True)
        errors = {str(int(c)): int(n) for c, n in zip(codes, counts, strict=True)}
    failed = float(weight[~ok].sum())
    latencies = np.sort(traffic.latency_ms[mask][ok])
    percentiles = {f"p{p}_ms": nearest_rank(latencies, p) for p in PERCENTILES}
    seconds = max(high - low, 1e-9)
    return {
        "start": iso(low),
        "end": iso(high),
        "requests": round(requests),
        "rows": round(float((traffic.rows[mask] * weight).sum())),
        "requests_per_s": round(requests / seconds, 3),
        "errors": errors,
        "error_rate": round(failed / requests, 6) if requests else None,
        "latency_ms": Latency(
            **percentiles,
            max_ms=round(float(latencies[-1]), 3) if len(latencies) else None,
        ),
    }


def without_spans(
    samples: list[dict[str, Any]], spans: list[tuple[float, float]], interval: float
) -> list[dict[str, Any]]:
    """The resource samples that measured none of `spans`: a sample taken at t covers the
    `interval` before it."""
    if not spans:
        return samples
    return [s for s in samples if not any(a < s["t"] < b + interval for a, b in spans)]


def resource_summary(
    samples: list[dict[str, Any]], low: float, high: float, interval: float
) -> Resources | None:
    """CPU % and RSS of the serving processes in [low, high] (None: no sample there): samples
    taken at the same moment (one per process) are summed, then averaged and maximised."""
    chosen = [s for s in samples if low <= s["t"] <= high]
    if not chosen:
        return None
    moments: dict[int, list[dict[str, Any]]] = {}
    for sample in chosen:
        moments.setdefault(int(sample["t"] // interval), []).append(sample)
    cpu = np.array([sum(float(s["cpu_percent"]) for s in group) for group in moments.values()])
    rss = np.array([sum(float(s["rss_bytes"]) for s in group) for group in moments.values()])
    return Resources(
        samples=len(chosen),
        processes=len({s.get("pid") for s in chosen}),
        cpu_percent_mean=round(float(cpu.mean()), 2),
        cpu_percent_peak=round(float(cpu.max()), 2),
        rss_mb_mean=round(float(rss.mean()) / 2**20, 1),
        rss_mb_peak=round(float(rss.max()) / 2**20, 1),
    )


def slo_checks(error_rate: float | None, latency: Latency, slo: dict[str, float]) -> list[SloCheck]:
    """Each SLO bound against the span's error rate or latency percentile."""
    checks = []
    for metric, bound in slo.items():
        value = error_rate if metric == "error_rate" else getattr(latency, metric, None)
        checks.append(
            SloCheck(
                metric=metric,
                bound=bound,
                measured=value,
                passed=None if value is None else value <= bound,
            )
        )
    return checks
