"""One environment's share of the cost document: its allocation, what its servers used (the
usage view), what it served, what a benchmark says it can carry, what 1,000 predictions cost,
and how its current version compares with the previous one."""

from __future__ import annotations

import math
from typing import Any

from cpmai.costs import measure, model
from cpmai.costs.document import (
    Allocation,
    Autoscaled,
    CostAlert,
    EnvironmentCost,
    Increase,
    PerThousand,
    Previous,
    ReplicaResources,
    Traffic,
    Usage,
    VersionSide,
)
from cpmai.costs.facts import Facts
from cpmai.costs.model import HOURS_PER_MONTH, figure
from cpmai.home import Home
from cpmai.manifest import Environment
from cpmai.monitor.result import Resources

MIN_PROJECTION_S = 3600.0
"""Live seconds of traffic a month's predictions (and value) are projected from, at least."""


def charged(alloc: Allocation, summary: Resources, prices: Any) -> Usage:
    """The usage view of an allocation, from `resource_summary`'s means (CPU %, MiB)."""
    return model.charged(
        alloc.cpu_cores,
        alloc.memory_gib,
        summary.cpu_percent_mean / 100,
        summary.rss_mb_mean / 1024,
        prices.cpu_hour,
        prices.memory_gb_hour,
    )


def samples_of(
    facts: Facts, env: str, low: float | None, high: float | None, version: str | None = None
) -> list[dict[str, Any]]:
    """The environment's resource samples in [low, high), of one version or all, without those
    taken while `cpmai bench` loaded the server (unless synthetic traffic is counted in)."""
    from cpmai.monitor.summaries import without_spans
    from cpmai.predlog.reader import read_resources

    interval = facts.manifest.monitoring.sample_interval_s
    windows = [] if facts.include_synthetic else facts.benches(env)
    samples = [
        s
        for s in read_resources(Home(facts.home).env(facts.name, env).logs, low, high)
        if (version is None or s.get("version") == version)
        and not any(a <= s["t"] < b for a, b in windows)
    ]
    if not facts.include_synthetic and Home(facts.home).env(facts.name, env).logs.is_dir():
        samples = without_spans(samples, facts.log(env).synthetic_spans, interval)
    return samples


def usage(
    facts: Facts,
    env: str,
    low: float | None,
    high: float | None,
    version: str | None = None,
    samples: list[dict[str, Any]] | None = None,
) -> Resources | None:
    """`resource_summary` of `samples_of` the environment (or of `samples`, read already)."""
    from cpmai.monitor.summaries import resource_summary

    interval = facts.manifest.monitoring.sample_interval_s
    bounds = (-math.inf if low is None else low, math.inf if high is None else high)
    if samples is None:
        samples = samples_of(facts, env, low, high, version)
    return resource_summary(samples, *bounds, interval)


def autoscaled(
    facts: Facts, spec: Environment | None, samples: list[dict[str, Any]]
) -> Autoscaled | None:
    """For replicas that follow the load: how many ran, from the replicas' own resource
    samples (`running_replicas`)."""
    if spec is None or spec.autoscaling is None:
        return None
    mean, peak = running_replicas(samples, facts.manifest.monitoring.sample_interval_s)
    return Autoscaled(
        min=spec.autoscaling.min,
        max=spec.autoscaling.max,
        mean_running=None if mean is None else round(mean, 3),
        peak_running=peak,
        samples=len(samples),
    )


def running_replicas(
    samples: list[dict[str, Any]], interval: float
) -> tuple[float | None, int | None]:
    """The mean and the peak of the replicas running while any ran.

    A replica is a process (pid) for as long as it writes a sample every interval: its own
    interval is the median gap between its samples (`interval`, the manifest's, when it wrote
    one), and a gap over 1.5 intervals ends one life (a pid reused by a later process, a gap
    left by a load test taken out). Each sample stands for the interval before it, so a life
    covers (first − interval, last]; the mean is the replica-seconds sampled divided by the
    seconds some replica covered."""
    import bisect
    import itertools
    import statistics

    by_pid: dict[Any, list[float]] = {}
    for sample in samples:
        by_pid.setdefault(str(sample.get("pid")), []).append(float(sample["t"]))
    lives: list[tuple[float, float, float, int]] = []  # begin, end, interval, samples
    for times in by_pid.values():
        times.sort()
        gaps = [b - a for a, b in itertools.pairwise(times) if b > a]
        own = statistics.median(gaps) if gaps else interval
        first = previous = times[0]
        count = 1
        for moment in times[1:]:
            if moment - previous > 1.5 * own:
                lives.append((first - own, previous, own, count))
                first, count = moment, 0
            previous, count = moment, count + 1
        lives.append((first - own, previous, own, count))
    if not lives:
        return None, None
    covered, reach = 0.0, -math.inf
    for begin, end, _, _ in sorted(lives):
        covered += max(0.0, end - max(begin, reach))
        reach = max(reach, end)
    ran = sum(own * count for _, _, own, count in lives)
    begins = sorted(life[0] for life in lives)
    ends = sorted(life[1] for life in lives)
    moments = sorted(float(s["t"]) for s in samples)
    peak = max(bisect.bisect_left(begins, t) - bisect.bisect_left(ends, t) for t in moments)
    return (ran / covered if covered > 0 else None), peak


def environment(facts: Facts, env: str, planned: bool, start: float, end: float) -> EnvironmentCost:
    name, prices = facts.name, facts.prices
    spec, _ = facts.spec(env)
    live = facts.state.env(name, env).live
    intervals = facts.intervals(env)
    version = facts.version_of(env)
    url = live.details.get("url") if live else (intervals[-1].url if intervals else None)
    facts.say(f"reading {env}'s resource samples")
    samples = samples_of(facts, env, start, end)
    scaled = autoscaled(facts, spec, samples)
    charged_replicas: int | float = spec.min_replicas if spec else 0
    if scaled is not None and scaled.mean_running is not None:
        charged_replicas = scaled.mean_running
    alloc = facts.allocation(env, charged_replicas)
    alloc_hour = float(alloc.per_hour.value or 0.0)
    live_hours = round(measure.live_seconds(intervals, start, end) / 3600, 4)
    summary = usage(facts, env, start, end, samples=samples)
    used: Usage | None = None
    usage_note: str | None = None
    if summary:
        used = charged(alloc, summary, prices)
        used.samples = summary.samples
        used.processes = summary.processes
        serving = float(used.charged_per_month.value or 0.0)
        serving_figure = figure(
            serving, "charged_per_month (usage view)", charged_per_month=serving
        )
    else:
        usage_note = (
            "no resource samples in the period: the local server writes them while it runs"
            if (spec is None or spec.target == "local")
            else f"the {spec.target} target is not measured here: allocation only"
        )
        serving = float(alloc.per_month.value or 0.0)
        serving_figure = figure(serving, "allocation per_month", per_month=serving)
    served = facts.served(env, start, end)
    seconds = live_hours * 3600
    rate = served["predictions"] / seconds if seconds > 0 else None
    project = rate is not None and seconds >= MIN_PROJECTION_S
    if used is not None:
        used.bench_excluded_s = (
            0.0
            if facts.include_synthetic
            else round(measure.excluded_seconds(facts.benches(env), start, end), 3)
        )
    traffic = Traffic(
        **served,
        measured_s=round(seconds, 3),
        predictions_per_s=None if rate is None else round(rate, 6),
        predictions_per_month=round(rate * 3600 * HOURS_PER_MONTH)
        if project and rate is not None
        else None,
        basis="predictions ÷ live seconds in the period"
        + (
            ", synthetic requests included"
            if facts.include_synthetic
            else ", without synthetic requests (load tests)"
        ),
    )
    if rate is not None and not project:
        traffic.note = (
            f"{seconds:,.0f} s of live traffic: too little to project a month "
            f"(needs {MIN_PROJECTION_S / 3600:g} h)"
        )
    charged_hour = float(used.charged_per_hour.value or 0.0) if used else alloc_hour
    cap = measure.capacity(facts.home, name, version, url, facts.slo) if version else None
    entry = EnvironmentCost(
        env=env,
        target=spec.target if spec else None,
        in_manifest=env in facts.manifest.environments,
        planned=planned,
        version=version,
        live=live is not None,
        url=url,
        replicas=charged_replicas,
        resources=ReplicaResources(
            cpu=spec.resources.cpu if spec else 0.0,
            memory_gb=spec.resources.memory_gb if spec else 0.0,
        ),
        live_hours=live_hours,
        allocation=alloc,
        usage=used,
        serving_per_month=serving_figure,
        traffic=traffic,
        capacity=cap,
        cost_per_1000=PerThousand(
            at_capacity=model.per_thousand(
                alloc_hour,
                cap.predictions_per_s if cap else None,
                "allocation, at the benchmarked capacity",
            ),
            at_traffic=model.per_thousand(
                charged_hour, rate, "charged per hour, at the measured traffic"
            ),
        ),
        previous=previous(facts, env, alloc, url),
    )
    if scaled is not None:
        entry.autoscaled = scaled
    if usage_note is not None:
        entry.usage_note = usage_note
    if cap is None:
        entry.capacity_note = (
            f"no data yet: run `cpmai bench {name}@{env}`"
            + (f" --url {url}" if url else "")
            + " to know what a prediction costs at capacity"
        )
    return entry


def previous(facts: Facts, env: str, alloc: Allocation, url: str | None) -> Previous | None:
    """The current and the previous version side by side: usage while each was live (the
    charged cost moves only when usage passes the allocation) and cost per 1,000 predictions
    at each one's benchmarked capacity (what a faster version changes)."""
    intervals = facts.intervals(env)
    if not intervals:
        return None
    current = intervals[-1].version
    before = next((i.version for i in reversed(intervals) if i.version != current), None)
    if before is None:
        return None
    alloc_hour = float(alloc.per_hour.value or 0.0)
    sides: dict[str, VersionSide] = {}
    for version in (before, current):
        summary = usage(facts, env, None, None, version)
        month = float(alloc.per_month.value or 0.0)
        if summary:
            month = float(charged(alloc, summary, facts.prices).charged_per_month.value or 0.0)
        cap = measure.capacity(facts.home, facts.name, version, url, facts.slo)
        per_1000 = model.per_thousand(
            alloc_hour, cap.predictions_per_s if cap else None, "allocation, at capacity"
        ).value
        sides[version] = VersionSide(
            version=version,
            serving_per_month=round(month, 6),
            measured=summary is not None,
            cost_per_1000_at_capacity=per_1000,
            capacity_source=cap.source if cap else None,
        )
    old, new = sides[before], sides[current]

    def change(then: float | None, now: float | None) -> float | None:
        return None if not then or now is None else round(now / then - 1, 6)

    same_bench = old.capacity_source == new.capacity_source
    out = Previous(
        previous=old,
        current=new,
        increase=Increase(
            serving_per_month=change(old.serving_per_month, new.serving_per_month)
            if old.measured and new.measured
            else None,
            cost_per_1000_at_capacity=change(
                old.cost_per_1000_at_capacity, new.cost_per_1000_at_capacity
            )
            if same_bench
            else None,
        ),
    )
    if not same_bench:
        out.note = (
            "the two versions were benchmarked differently "
            f"({old.capacity_source} / {new.capacity_source}): "
            "their costs per 1,000 predictions are not compared"
        )
    return out


def increases(envs: list[EnvironmentCost], limit: float) -> list[CostAlert]:
    """An alert per cost that rose more than `limit` against the previous version."""
    alerts = []
    for entry in envs:
        before = entry.previous
        if not before:
            continue
        for key, rise in before.increase.model_dump().items():
            if rise is not None and rise > limit:
                alerts.append(
                    CostAlert(
                        kind="increase",
                        message=f"{entry.env}: {key.replace('_', ' ')} rose {rise:.1%} "
                        f"from {before.previous.version} to "
                        f"{before.current.version} (more than {limit:.0%})",
                    )
                )
    return alerts
