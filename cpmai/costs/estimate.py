"""`cpmai cost`: what a model's environments cost, what a prediction costs, what retraining
costs, how that compares with the budget and the previous version, and what it returns (ROI).

Prices come from the manifest's `costs:` (a team shares one through `extends:`), resources from
its `environments:`. Measurements come from the state folder: the ledger (when each version was
live, triggers, KPIs), the servers' resource samples and prediction logs, and saved benchmarks.
A figure that has no data behind it is None with a note saying what to run, never a zero.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpmai.costs import measure, model
from cpmai.costs.model import HOURS_PER_MONTH, figure
from cpmai.errors import UsageError
from cpmai.ledger import Event, Ledger, replay

if TYPE_CHECKING:
    from cpmai.manifest import Manifest

SCHEMA = "cpmai-cost/1"
DEFAULT_PERIOD_S = HOURS_PER_MONTH * 3600
SKIP_ENVS = ("batch",)
MIN_PROJECTION_S = 3600.0
"""Live seconds of traffic a month's predictions (and value) are projected from, at least."""

Progress = Callable[[str], None]


@dataclass
class CostResult:
    doc: dict[str, Any]
    alerts: list[dict[str, Any]] = field(default_factory=list)


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def choose_manifest(
    home: Path, name: str, events: list[Event], manifest: Manifest | None
) -> tuple[Manifest, str]:
    """The manifest given, else the one packaged with the version that went live last, else
    with the newest packaged version."""
    if manifest is not None:
        return manifest, f"file {manifest.file}" if manifest.file else "given"
    state = replay(events)
    if name not in state.versions:
        known = ", ".join(state.names()) or "none yet"
        raise UsageError(f"no model named {name!r} has been packaged (packaged: {known})")
    lives = [s.live for s in state.envs_of(name).values() if s.live is not None]
    if lives:
        version = max(lives, key=lambda r: r.seq).version
    else:
        version = state.versions_of(name)[-1].version
    from cpmai.artifacts import open_artifact

    return open_artifact(home, name, version).manifest(), f"artifact {name} {version}"


def estimate(
    home: Path,
    name: str,
    *,
    env: str | None = None,
    manifest: Manifest | None = None,
    since: float | None = None,
    until: float | None = None,
    now: float | None = None,
    replicas: int | None = None,
    traffic: float | None = None,
    max_increase: float | None = None,
    use_cache: bool = True,
    progress: Progress | None = None,
) -> CostResult:
    """Compute the cost document (docs/cost.schema.json). Records nothing."""
    from cpmai.monitor.logs import log_folder, read_resources, read_traffic
    from cpmai.monitor.run import resource_summary

    say = progress or (lambda _: None)
    now = time.time() if now is None else now
    end = min(until, now) if until is not None else now
    start = since if since is not None else end - DEFAULT_PERIOD_S
    if start >= end:
        raise UsageError("--since must be before --until (and before now)")
    events = Ledger(home).events()
    manifest, source = choose_manifest(home, name, events, manifest)
    state = replay(events)
    prices = manifest.costs
    envs = _environments(manifest, state, name, env)
    slo = manifest.slo.model_dump(exclude_none=True)
    first = measure.first_live(events, name)
    value_envs = manifest.business.value_from
    out_envs = []
    predictions_to_date = 0.0
    cost_to_date = 0.0
    for env_name, planned in envs:
        spec = manifest.environments.get(env_name)
        live = state.env(name, env_name).live
        intervals = measure.live_intervals(events, name, env_name)
        version = live.version if live else (intervals[-1].version if intervals else None)
        url = live.details.get("url") if live else (intervals[-1].url if intervals else None)
        count = spec.replicas if spec else 1
        cpu = spec.resources.cpu if spec else 1.0
        memory = spec.resources.memory_gb if spec else 1.0
        alloc = model.allocation(count, cpu, memory, prices.cpu_hour, prices.memory_gb_hour)
        alloc_hour = float(alloc["per_hour"]["value"])
        entry: dict[str, Any] = {
            "env": env_name,
            "target": spec.target if spec else None,
            "in_manifest": spec is not None,
            "planned": planned,
            "version": version,
            "live": live is not None,
            "url": url,
            "replicas": count,
            "resources": {"cpu": cpu, "memory_gb": memory},
            "live_hours": round(measure.live_seconds(intervals, start, end) / 3600, 4),
            "allocation": alloc,
        }
        folder = log_folder(home, name, env_name)
        say(f"reading {env_name}'s resource samples")
        samples = read_resources(folder, start, end)
        interval = manifest.monitoring.sample_interval_s
        summary = resource_summary(samples, start, end, interval)["resources"]
        if summary:
            usage = _charged(alloc, summary, prices)
            usage["samples"] = summary["samples"]
            usage["processes"] = summary["processes"]
            entry["usage"] = usage
            serving = float(usage["charged_per_month"]["value"])
            entry["serving_per_month"] = figure(
                serving, "charged_per_month (usage view)", charged_per_month=serving
            )
        else:
            entry["usage"] = None
            entry["usage_note"] = (
                "no resource samples in the period: the local server writes them while it runs"
                if (spec is None or spec.target == "local")
                else f"the {spec.target} target is not measured here: allocation only"
            )
            serving = float(alloc["per_month"]["value"])
            entry["serving_per_month"] = figure(serving, "allocation per_month", per_month=serving)
        say(f"reading {env_name}'s prediction log")
        log = read_traffic(
            folder,
            focus=None,
            specs=[],
            output_kind="numeric",
            cache=home / "cache" / "monitor" / "logs" / name / env_name if use_cache else None,
        )
        benches = measure.bench_windows(home, name, {i.url for i in intervals if i.url})
        served = measure.served(log, start, end, benches)
        excluded = measure.excluded_seconds(benches, start, end)
        seconds = max(entry["live_hours"] * 3600 - excluded, 0.0)
        rate = served["predictions"] / seconds if seconds > 0 else None
        project = rate is not None and seconds >= MIN_PROJECTION_S
        entry["traffic"] = {
            **served,
            "measured_s": round(seconds, 3),
            "bench_excluded_s": round(excluded, 3),
            "predictions_per_s": None if rate is None else round(rate, 6),
            "predictions_per_month": round(rate * 3600 * HOURS_PER_MONTH)
            if project and rate is not None
            else None,
            "basis": "predictions ÷ live seconds in the period, without `cpmai bench` runs",
        }
        if rate is not None and not project:
            entry["traffic"]["note"] = (
                f"{seconds:,.0f} s of live traffic: too little to project a month "
                f"(needs {MIN_PROJECTION_S / 3600:g} h)"
            )
        charged_hour = (
            float(entry["usage"]["charged_per_hour"]["value"]) if entry["usage"] else alloc_hour
        )
        cap = measure.capacity(home, name, version, url, slo) if version else None
        entry["capacity"] = cap
        entry["cost_per_1000"] = {
            "at_capacity": model.per_thousand(
                alloc_hour,
                cap["predictions_per_s"] if cap else None,
                "allocation, at the benchmarked capacity",
            ),
            "at_traffic": model.per_thousand(
                charged_hour, rate, "charged per hour, at the measured traffic"
            ),
        }
        if cap is None:
            entry["capacity_note"] = (
                f"no data yet: run `cpmai bench {name}@{env_name}`"
                + (f" --url {url}" if url else "")
                + " to know what a prediction costs at capacity"
            )
        if first is not None:
            all_intervals_s = measure.live_seconds(intervals, first, now)
            cost_to_date += all_intervals_s / 3600 * alloc_hour
            if value_envs is None or env_name in value_envs:
                predictions_to_date += measure.served(log, first, now + 1, benches)["predictions"]
        entry["previous"] = _previous(
            home, name, env_name, intervals, alloc, prices, slo, interval, url
        )
        out_envs.append(entry)
    serving_total = sum(float(e["serving_per_month"]["value"]) for e in out_envs)
    # a trigger is counted over the month that ends with the period, whatever its length:
    # two retraining runs in the first four hours are two runs this month, not 365
    triggered = measure.triggered_runs(events, name, end - DEFAULT_PERIOD_S, end)
    retraining = model.retraining(
        prices.retraining.cost_per_run, prices.retraining.runs_per_month, triggered
    )
    retrain_month = float(retraining["per_month"]["value"])
    total = serving_total + retrain_month
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "name": name,
        "currency": prices.currency,
        "manifest": source,
        "period": {
            "since": _iso(start),
            "until": _iso(end),
            "hours": round((end - start) / 3600, 4),
        },
        "prices": {"cpu_hour": prices.cpu_hour, "memory_gb_hour": prices.memory_gb_hour},
        "environments": out_envs,
        "retraining": retraining,
        "total_per_month": figure(
            total,
            "Σ serving_per_month + retraining per_month",
            serving=round(serving_total, 6),
            retraining=round(retrain_month, 6),
        ),
    }
    alerts: list[dict[str, Any]] = []
    budget = prices.budget_per_month
    doc["budget"] = {
        "per_month": budget,
        "used_share": None if not budget else round(total / budget, 6),
        "over": bool(budget is not None and total > budget),
    }
    if doc["budget"]["over"]:
        alerts.append(
            {
                "kind": "budget",
                "message": f"{total:,.2f} {prices.currency} a month is over the budget of "
                f"{budget:,.2f}",
            }
        )
    if max_increase is not None:
        alerts += _increases(out_envs, max_increase)
    doc["max_increase"] = max_increase
    doc["roi"] = _roi(
        manifest,
        events,
        name,
        out_envs,
        total,
        start,
        end,
        now=now,
        first=first,
        predictions_to_date=predictions_to_date,
        cost_to_date=cost_to_date,
    )
    doc["what_if"] = None
    if replicas is not None or traffic is not None:
        doc["what_if"] = _what_if(doc, out_envs, env, replicas, traffic, prices, manifest)
    doc["alerts"] = alerts
    doc["exit_code"] = 4 if alerts else 0
    return CostResult(doc, alerts)


def _charged(alloc: dict[str, Any], summary: dict[str, Any], prices: Any) -> dict[str, Any]:
    """The usage view of an allocation, from `resource_summary`'s means (CPU %, MiB)."""
    return model.charged(
        alloc["cpu_cores"],
        alloc["memory_gib"],
        summary["cpu_percent_mean"] / 100,
        summary["rss_mb_mean"] / 1024,
        prices.cpu_hour,
        prices.memory_gb_hour,
    )


def _environments(
    manifest: Manifest, state: Any, name: str, env: str | None
) -> list[tuple[str, bool]]:
    """(environment, planned): the one asked for, else those live now, else — nothing is live —
    every environment of the manifest, as a plan."""
    known = {e for e in state.envs_of(name) if e not in SKIP_ENVS} | set(manifest.environments)
    if env is not None:
        if env not in known:
            raise UsageError(
                f"--env {env}: not an environment of {name} "
                f"(known: {', '.join(sorted(known)) or 'none'})"
            )
        return [(env, state.env(name, env).live is None)]
    live = [e for e, s in state.envs_of(name).items() if s.live is not None and e not in SKIP_ENVS]
    if live:
        return [(e, False) for e in sorted(live)]
    if not manifest.environments:
        raise UsageError(f"{name} has no environments: nothing runs, nothing costs")
    return [(e, True) for e in manifest.environments]


def _previous(
    home: Path,
    name: str,
    env: str,
    intervals: list[measure.Interval],
    alloc: dict[str, Any],
    prices: Any,
    slo: dict[str, float],
    sample_interval: float,
    url: str | None,
) -> dict[str, Any] | None:
    """The current and the previous version side by side: usage while each was live (the
    charged cost moves only when usage passes the allocation) and cost per 1,000 predictions
    at each one's benchmarked capacity (what a faster version changes)."""
    if not intervals:
        return None
    current = intervals[-1].version
    before = next((i.version for i in reversed(intervals) if i.version != current), None)
    if before is None:
        return None
    from cpmai.monitor.logs import log_folder, read_resources
    from cpmai.monitor.run import resource_summary

    samples = read_resources(log_folder(home, name, env), None, None)
    alloc_hour = float(alloc["per_hour"]["value"])
    sides = {}
    for version in (before, current):
        mine = [s for s in samples if s.get("version") == version]
        summary = resource_summary(mine, 0, math.inf, sample_interval)["resources"]
        month = float(alloc["per_month"]["value"])
        if summary:
            month = float(_charged(alloc, summary, prices)["charged_per_month"]["value"])
        cap = measure.capacity(home, name, version, url, slo)
        per_1000 = model.per_thousand(
            alloc_hour, cap["predictions_per_s"] if cap else None, "allocation, at capacity"
        )["value"]
        sides[version] = {
            "version": version,
            "serving_per_month": round(month, 6),
            "measured": summary is not None,
            "cost_per_1000_at_capacity": per_1000,
        }

    def change(key: str) -> float | None:
        old, new = sides[before][key], sides[current][key]
        return None if not old or new is None else round(new / old - 1, 6)

    return {
        "previous": sides[before],
        "current": sides[current],
        "increase": {
            "serving_per_month": change("serving_per_month"),
            "cost_per_1000_at_capacity": change("cost_per_1000_at_capacity"),
        },
    }


def _increases(envs: list[dict[str, Any]], limit: float) -> list[dict[str, Any]]:
    alerts = []
    for entry in envs:
        previous = entry.get("previous")
        if not previous:
            continue
        for key, rise in previous["increase"].items():
            if rise is not None and rise > limit:
                alerts.append(
                    {
                        "kind": "increase",
                        "message": f"{entry['env']}: {key.replace('_', ' ')} rose {rise:.1%} "
                        f"from {previous['previous']['version']} to "
                        f"{previous['current']['version']} (more than {limit:.0%})",
                    }
                )
    return alerts


def _roi(
    manifest: Manifest,
    events: list[Event],
    name: str,
    envs: list[dict[str, Any]],
    cost: float,
    start: float,
    end: float,
    *,
    now: float,
    first: float | None,
    predictions_to_date: float,
    cost_to_date: float,
) -> dict[str, Any]:
    from cpmai import kpi

    business = manifest.business
    prices = manifest.costs
    chosen = business.value_from
    counted = [e for e in envs if chosen is None or e["env"] in chosen]
    value: float | None
    if business.value_kpi:
        records = kpi.read(events, name, business.value_kpi)
        # KPI values are amounts delivered: the last month's add up to a month's value
        month_start = end - DEFAULT_PERIOD_S
        value = sum(r.value for r in records if month_start <= r.moment < end)
        basis = f"Σ KPI {business.value_kpi} recorded in the last 730 h"
        value_to_date = sum(r.value for r in records if first is not None and r.moment >= first)
        has_value = bool(records)
    else:
        projected = [e["traffic"]["predictions_per_month"] for e in counted]
        known = [p for p in projected if p is not None]
        value = sum(known) * business.value_per_prediction if known else None
        basis = "predictions_per_month × value_per_prediction"
        value_to_date = predictions_to_date * business.value_per_prediction
        has_value = business.value_per_prediction > 0
    doc = model.roi(value, cost, business.baseline_cost_per_month, business.investment, basis=basis)
    doc["value_per_month"]["inputs"] = (
        {"kpi": business.value_kpi}
        if business.value_kpi
        else {
            "predictions_per_month": None
            if value is None
            else sum(e["traffic"]["predictions_per_month"] or 0 for e in counted),
            "value_per_prediction": business.value_per_prediction,
            "environments": [e["env"] for e in counted],
        }
    )
    doc["configured"] = has_value or business.baseline_cost_per_month > 0
    short = [e["traffic"]["note"] for e in counted if e["traffic"].get("note")]
    if value is None and short:
        doc["projection_note"] = "no value per month yet: " + "; ".join(short)
    if not doc["configured"]:
        doc["note"] = (
            "no business value configured: set business.value_per_prediction (or value_kpi with "
            "`cpmai kpi record`) and baseline_cost_per_month in the manifest"
        )
    if first is None:
        doc["to_date"] = None
        return doc
    months = (now - first) / 3600 / HOURS_PER_MONTH
    triggered = measure.triggered_runs(events, name, first, now + 1)
    retrain = prices.retraining.cost_per_run * (
        prices.retraining.runs_per_month * months + triggered
    )
    baseline = business.baseline_cost_per_month * months
    spent = cost_to_date + retrain
    net = value_to_date + baseline - spent - business.investment
    doc["to_date"] = {
        "since": _iso(first),
        "months": round(months, 6),
        "value": round(value_to_date, 6),
        "serving_cost": round(cost_to_date, 6),
        "retraining_cost": round(retrain, 6),
        "baseline_saved": round(baseline, 6),
        "investment": business.investment,
        "net": figure(
            net,
            "value + baseline_saved − serving_cost − retraining_cost − investment",
            value=round(value_to_date, 6),
            baseline_saved=round(baseline, 6),
            serving_cost=round(cost_to_date, 6),
            retraining_cost=round(retrain, 6),
            investment=business.investment,
        ),
        "paid_back": net >= 0,
        "basis": "live hours × allocation per hour (today's prices) for serving; "
        "value from every logged prediction"
        if not business.value_kpi
        else "KPI records since the first deployment",
    }
    return doc


def _what_if(
    doc: dict[str, Any],
    envs: list[dict[str, Any]],
    env: str | None,
    replicas: int | None,
    traffic: float | None,
    prices: Any,
    manifest: Manifest,
) -> dict[str, Any]:
    """Plan one environment: N replicas and/or R predictions/s, assuming capacity grows in
    proportion to replicas (true while each replica has its own cores)."""
    if env is None and len(envs) != 1:
        raise UsageError(
            "--replicas/--traffic plan one environment: name it with --env "
            f"(here: {', '.join(e['env'] for e in envs)})"
        )
    entry = envs[0]
    count = replicas if replicas is not None else entry["replicas"]
    cpu, memory = entry["resources"]["cpu"], entry["resources"]["memory_gb"]
    alloc = model.allocation(count, cpu, memory, prices.cpu_hour, prices.memory_gb_hour)
    alloc_hour = float(alloc["per_hour"]["value"])
    cap = entry["capacity"]
    per_replica = (
        cap["predictions_per_s"] / entry["replicas"] if cap and cap["predictions_per_s"] else None
    )
    rate = traffic if traffic is not None else entry["traffic"]["predictions_per_s"]
    capacity_n = None if per_replica is None else per_replica * count
    needed = None if per_replica is None or rate is None else max(1, math.ceil(rate / per_replica))
    month = float(alloc["per_month"]["value"])
    total = float(doc["total_per_month"]["value"]) - float(entry["serving_per_month"]["value"])
    total += month
    value = None
    if rate is not None and not manifest.business.value_kpi:
        value = rate * 3600 * HOURS_PER_MONTH * manifest.business.value_per_prediction
    return {
        "env": entry["env"],
        "replicas": count,
        "predictions_per_s": rate,
        "allocation": alloc,
        "capacity": figure(
            capacity_n,
            "capacity_predictions_per_s / benchmarked_replicas × replicas",
            capacity_predictions_per_s=cap["predictions_per_s"] if cap else None,
            benchmarked_replicas=entry["replicas"],
            replicas=count,
        ),
        "replicas_needed": needed,
        "fits": None if capacity_n is None or rate is None else rate <= capacity_n,
        "cost_per_1000": model.per_thousand(alloc_hour, rate, "allocation, at the planned traffic"),
        "predictions_per_month": None if rate is None else round(rate * 3600 * HOURS_PER_MONTH),
        "value_per_month": None if value is None else round(value, 6),
        "total_per_month": figure(
            total,
            "total_per_month − this environment's serving + planned allocation per_month",
            planned_allocation=round(month, 6),
        ),
        "over_budget": bool(
            prices.budget_per_month is not None and total > prices.budget_per_month
        ),
        "note": "capacity assumed to grow in proportion to replicas (each replica with its own "
        "cores); unknown until the environment is benchmarked"
        if cap is None
        else "capacity assumed to grow in proportion to replicas (each replica with its own cores)",
    }
