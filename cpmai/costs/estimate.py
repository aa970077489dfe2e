"""`cpmai cost`: what a model's environments cost, what a prediction costs, what retraining
costs, how that compares with the budget and the previous version, and what it returns (ROI).

Prices come from the manifest's `costs:` (a team shares one through `extends:`). An
environment's replicas and resources come from the manifest packaged with the version it runs
(or ran last) — unless a manifest file is given, whose `environments:` then apply (the way to
price a change before making it). Measurements come from the state folder: the ledger (when
each version was live, triggers, KPIs), the servers' resource samples and prediction logs, and
saved benchmarks. A figure with no data behind it is None with a note saying what to run, never
a zero that looks measured.
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
from cpmai.ledger import Event, Ledger, State, replay

if TYPE_CHECKING:
    from cpmai.manifest import Environment, Manifest

SCHEMA = "cpmai-cost/1"
DEFAULT_PERIOD_S = HOURS_PER_MONTH * 3600
BATCH = "batch"
"""`cpmai predict`'s log: predictions with no server (no allocation, no live time)."""
MIN_PROJECTION_S = 3600.0
"""Live seconds of traffic a month's predictions (and value) are projected from, at least."""
MAX_TRAFFIC = 1e9

Progress = Callable[[str], None]


@dataclass
class CostResult:
    doc: dict[str, Any]
    alerts: list[dict[str, Any]] = field(default_factory=list)
    facts: Facts | None = None


def iso(moment: float) -> str:
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


class Facts:
    """What the state folder knows about one model, read once: the ledger, and per environment
    its live stretches, benchmark windows, prediction log, resources and its own manifest."""

    def __init__(
        self,
        home: Path,
        name: str,
        *,
        manifest: Manifest | None,
        now: float,
        use_cache: bool = True,
        progress: Progress | None = None,
        include_synthetic: bool = False,
    ) -> None:
        """`include_synthetic`: count requests marked synthetic (load tests) as traffic, and
        the resources they used as usage."""
        self.home, self.name, self.now, self.use_cache = home, name, now, use_cache
        self.include_synthetic = include_synthetic
        self.say = progress or (lambda _: None)
        self.events = Ledger(home).events()
        self.given = manifest
        self.manifest, self.source = choose_manifest(home, name, self.events, manifest)
        self.state: State = replay(self.events)
        self.prices = self.manifest.costs
        self.slo = self.manifest.slo.model_dump(exclude_none=True)
        self.first = measure.first_live(self.events, name)
        self._intervals: dict[str, list[measure.Interval]] = {}
        self._benches: dict[str, list[tuple[float, float]]] = {}
        self._logs: dict[str, Any] = {}

    # --- per environment ------------------------------------------------------------------

    def envs(self) -> list[str]:
        """Every environment the model ever ran in (from the ledger), oldest name first."""
        return [e for e in self.state.envs_of(self.name) if e != BATCH]

    def live_now(self) -> list[str]:
        return sorted(e for e in self.envs() if self.state.env(self.name, e).live is not None)

    def intervals(self, env: str) -> list[measure.Interval]:
        if env not in self._intervals:
            self._intervals[env] = measure.live_intervals(self.events, self.name, env)
        return self._intervals[env]

    def benches(self, env: str) -> list[tuple[float, float]]:
        if env not in self._benches:
            urls = {i.url for i in self.intervals(env) if i.url}
            self._benches[env] = measure.bench_windows(self.home, self.name, urls)
        return self._benches[env]

    def log(self, env: str) -> Any:
        """The environment's whole prediction log, request columns only (cached on disk)."""
        if env not in self._logs:
            from cpmai.monitor.logs import log_folder, read_traffic

            self.say(f"reading {env}'s prediction log")
            cache = self.home / "cache" / "monitor" / "logs" / self.name / env
            self._logs[env] = read_traffic(
                log_folder(self.home, self.name, env),
                focus=None,
                specs=[],
                output_kind="numeric",
                cache=cache if self.use_cache else None,
                include_synthetic=True,  # `served` sets them apart period by period
            )
        return self._logs[env]

    def version_of(self, env: str) -> str | None:
        live = self.state.env(self.name, env).live
        if live is not None:
            return live.version
        intervals = self.intervals(env)
        return intervals[-1].version if intervals else None

    def spec(self, env: str) -> tuple[Environment | None, str]:
        """The environment's replicas and resources, and where they come from."""
        if self.given is not None and env in self.given.environments:
            return self.given.environments[env], "the manifest file given"
        version = self.version_of(env)
        if version is not None:
            from cpmai.artifacts import open_artifact

            own = open_artifact(self.home, self.name, version).manifest()
            if env in own.environments:
                return own.environments[env], f"the manifest of {version}, which runs there"
        if env in self.manifest.environments:
            return self.manifest.environments[env], self.source
        return None, "not in any manifest: nothing is known of its resources"

    def allocation(self, env: str, replicas: int | None = None) -> dict[str, Any]:
        spec, source = self.spec(env)
        count = replicas if replicas is not None else (spec.replicas if spec else 0)
        cpu = spec.resources.cpu if spec else 0.0
        memory = spec.resources.memory_gb if spec else 0.0
        alloc = model.allocation(
            count, cpu, memory, self.prices.cpu_hour, self.prices.memory_gb_hour
        )
        alloc["resources_from"] = source
        return alloc

    def served(self, env: str, low: float, high: float) -> dict[str, Any]:
        return measure.served(self.log(env), low, high, include_synthetic=self.include_synthetic)

    def counts_as_value(self, env: str) -> bool:
        chosen = self.manifest.business.value_from
        return chosen is None or env in chosen

    def batch_predictions(self, low: float, high: float) -> int:
        if not self.counts_as_value(BATCH):
            return 0
        if not (self.home / "logs" / self.name / BATCH).is_dir():
            return 0
        served = measure.served(
            self.log(BATCH), low, high, include_synthetic=self.include_synthetic
        )
        return int(served["predictions"])


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
    facts: Facts | None = None,
    include_synthetic: bool = False,
) -> CostResult:
    """Compute the cost document (docs/cost.schema.json). Records nothing. `facts`: what the
    caller has already read of the state folder (else read here)."""
    now = time.time() if now is None else now
    end = min(until, now) if until is not None else now
    start = since if since is not None else end - DEFAULT_PERIOD_S
    if start >= end:
        raise UsageError("--since must be before --until (and before now)")
    if traffic is not None and not (0 < traffic <= MAX_TRAFFIC):
        raise UsageError(f"--traffic {traffic:g}: expected predictions per second in (0, 1e9]")
    if facts is None:
        facts = Facts(
            home,
            name,
            manifest=manifest,
            now=now,
            use_cache=use_cache,
            progress=progress,
            include_synthetic=include_synthetic,
        )
    prices = facts.prices
    shown = _environments(facts, env)
    live = facts.live_now()
    # the budget is the model's: every live environment counts, whatever --env shows
    counted = live or [e for e, _ in shown]
    entries = {
        e: _environment(facts, e, planned, start, end)
        for e, planned in [*shown, *((e, False) for e in live if e not in dict(shown))]
    }
    serving_total = sum(float(entries[e]["serving_per_month"]["value"]) for e in counted)
    month_start = end - DEFAULT_PERIOD_S
    # a trigger is counted over the month that ends with the period, whatever its length: two
    # retraining runs in the first four hours are two runs this month, not 365
    triggered = measure.triggered_runs(facts.events, name, month_start, end)
    retraining = model.retraining(
        prices.retraining.cost_per_run, prices.retraining.runs_per_month, triggered
    )
    retrain_month = float(retraining["per_month"]["value"])
    total = serving_total + retrain_month
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "name": name,
        "currency": prices.currency,
        "manifest": facts.source,
        "period": {"since": iso(start), "until": iso(end), "hours": round((end - start) / 3600, 4)},
        "prices": {
            "cpu_hour": prices.cpu_hour,
            "memory_gb_hour": prices.memory_gb_hour,
            "configured": bool(prices.cpu_hour or prices.memory_gb_hour),
        },
        "environments": [entries[e] for e, _ in shown],
        "counted": counted,
        "retraining": retraining,
        "total_per_month": figure(
            total,
            "Σ serving_per_month of the environments live now + retraining per_month",
            serving=round(serving_total, 6),
            retraining=round(retrain_month, 6),
            environments=counted,
        ),
    }
    if not doc["prices"]["configured"]:
        doc["prices"]["note"] = (
            "no price sheet: costs.cpu_hour and costs.memory_gb_hour are 0, so serving costs 0 "
            "(set them, or extend configs/team-defaults.yaml)"
        )
    alerts: list[dict[str, Any]] = []
    budget = prices.budget_per_month
    doc["budget"] = {
        "per_month": budget,
        "used_share": round(total / budget, 6) if budget else None,
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
        alerts += _increases(doc["environments"], max_increase)
    doc["max_increase"] = max_increase
    doc["roi"] = _roi(facts, [entries[e] for e in counted], total, end)
    doc["what_if"] = None
    if replicas is not None or traffic is not None:
        doc["what_if"] = _what_if(facts, doc, entries, counted, env, replicas, traffic)
    doc["alerts"] = alerts
    doc["exit_code"] = 4 if alerts else 0
    return CostResult(doc, alerts, facts)


def _environments(facts: Facts, env: str | None) -> list[tuple[str, bool]]:
    """(environment, planned) to show: the one asked for, else those live now, else — nothing
    is live — every environment of the manifest, as a plan."""
    known = set(facts.envs()) | set(facts.manifest.environments)
    if env is not None:
        if env not in known:
            raise UsageError(
                f"--env {env}: not an environment of {facts.name} "
                f"(known: {', '.join(sorted(known)) or 'none'})"
            )
        return [(env, facts.state.env(facts.name, env).live is None)]
    live = facts.live_now()
    if live:
        return [(e, False) for e in live]
    if not facts.manifest.environments:
        raise UsageError(f"{facts.name} has no environments: nothing runs, nothing costs")
    return [(e, True) for e in facts.manifest.environments]


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


def _usage(
    facts: Facts, env: str, low: float | None, high: float | None, version: str | None = None
) -> dict[str, Any] | None:
    """`resource_summary` of the environment's samples in [low, high), of one version or all,
    without those taken while `cpmai bench` loaded the server (unless synthetic traffic is
    counted in)."""
    from cpmai.monitor.logs import log_folder, read_resources
    from cpmai.monitor.run import resource_summary, without_spans

    interval = facts.manifest.monitoring.sample_interval_s
    windows = [] if facts.include_synthetic else facts.benches(env)
    samples = [
        s
        for s in read_resources(log_folder(facts.home, facts.name, env), low, high)
        if (version is None or s.get("version") == version)
        and not any(a <= s["t"] < b for a, b in windows)
    ]
    if not facts.include_synthetic and (facts.home / "logs" / facts.name / env).is_dir():
        samples = without_spans(samples, facts.log(env).synthetic_spans, interval)
    bounds = (-math.inf if low is None else low, math.inf if high is None else high)
    summary: dict[str, Any] | None = resource_summary(samples, *bounds, interval)["resources"]
    return summary


def _environment(facts: Facts, env: str, planned: bool, start: float, end: float) -> dict[str, Any]:
    name, prices = facts.name, facts.prices
    spec, _ = facts.spec(env)
    live = facts.state.env(name, env).live
    intervals = facts.intervals(env)
    version = facts.version_of(env)
    url = live.details.get("url") if live else (intervals[-1].url if intervals else None)
    alloc = facts.allocation(env)
    alloc_hour = float(alloc["per_hour"]["value"])
    entry: dict[str, Any] = {
        "env": env,
        "target": spec.target if spec else None,
        "in_manifest": env in facts.manifest.environments,
        "planned": planned,
        "version": version,
        "live": live is not None,
        "url": url,
        "replicas": spec.replicas if spec else 0,
        "resources": {
            "cpu": spec.resources.cpu if spec else 0.0,
            "memory_gb": spec.resources.memory_gb if spec else 0.0,
        },
        "live_hours": round(measure.live_seconds(intervals, start, end) / 3600, 4),
        "allocation": alloc,
    }
    facts.say(f"reading {env}'s resource samples")
    summary = _usage(facts, env, start, end)
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
    served = facts.served(env, start, end)
    seconds = entry["live_hours"] * 3600
    rate = served["predictions"] / seconds if seconds > 0 else None
    project = rate is not None and seconds >= MIN_PROJECTION_S
    if entry["usage"] is not None:
        entry["usage"]["bench_excluded_s"] = (
            0.0
            if facts.include_synthetic
            else round(measure.excluded_seconds(facts.benches(env), start, end), 3)
        )
    entry["traffic"] = {
        **served,
        "measured_s": round(seconds, 3),
        "predictions_per_s": None if rate is None else round(rate, 6),
        "predictions_per_month": round(rate * 3600 * HOURS_PER_MONTH)
        if project and rate is not None
        else None,
        "basis": "predictions ÷ live seconds in the period"
        + (
            ", synthetic requests included"
            if facts.include_synthetic
            else ", without synthetic requests (load tests)"
        ),
    }
    if rate is not None and not project:
        entry["traffic"]["note"] = (
            f"{seconds:,.0f} s of live traffic: too little to project a month "
            f"(needs {MIN_PROJECTION_S / 3600:g} h)"
        )
    charged_hour = (
        float(entry["usage"]["charged_per_hour"]["value"]) if entry["usage"] else alloc_hour
    )
    cap = measure.capacity(facts.home, name, version, url, facts.slo) if version else None
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
            f"no data yet: run `cpmai bench {name}@{env}`"
            + (f" --url {url}" if url else "")
            + " to know what a prediction costs at capacity"
        )
    entry["previous"] = _previous(facts, env, alloc, url)
    return entry


def _previous(
    facts: Facts, env: str, alloc: dict[str, Any], url: str | None
) -> dict[str, Any] | None:
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
    alloc_hour = float(alloc["per_hour"]["value"])
    sides = {}
    for version in (before, current):
        summary = _usage(facts, env, None, None, version)
        month = float(alloc["per_month"]["value"])
        if summary:
            month = float(_charged(alloc, summary, facts.prices)["charged_per_month"]["value"])
        cap = measure.capacity(facts.home, facts.name, version, url, facts.slo)
        per_1000 = model.per_thousand(
            alloc_hour, cap["predictions_per_s"] if cap else None, "allocation, at capacity"
        )["value"]
        sides[version] = {
            "version": version,
            "serving_per_month": round(month, 6),
            "measured": summary is not None,
            "cost_per_1000_at_capacity": per_1000,
            "capacity_source": cap["source"] if cap else None,
        }

    def change(key: str) -> float | None:
        old, new = sides[before][key], sides[current][key]
        return None if not old or new is None else round(new / old - 1, 6)

    same_bench = sides[before]["capacity_source"] == sides[current]["capacity_source"]
    out: dict[str, Any] = {
        "previous": sides[before],
        "current": sides[current],
        "increase": {
            "serving_per_month": change("serving_per_month")
            if sides[before]["measured"] and sides[current]["measured"]
            else None,
            "cost_per_1000_at_capacity": change("cost_per_1000_at_capacity")
            if same_bench
            else None,
        },
    }
    if not same_bench:
        out["note"] = (
            "the two versions were benchmarked differently "
            f"({sides[before]['capacity_source']} / {sides[current]['capacity_source']}): "
            "their costs per 1,000 predictions are not compared"
        )
    return out


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


def _roi(facts: Facts, counted: list[dict[str, Any]], cost: float, end: float) -> dict[str, Any]:
    from cpmai import kpi

    business = facts.manifest.business
    month_start = end - DEFAULT_PERIOD_S
    value: float | None
    if business.value_kpi:
        records = kpi.read(facts.events, facts.name, business.value_kpi)
        # KPI values are amounts delivered: the last month's add up to a month's value
        recent = [r.value for r in records if month_start <= r.moment < end]
        value = sum(recent) if recent else None
        basis = f"Σ KPI {business.value_kpi} recorded in the last 730 h"
        inputs: dict[str, Any] = {"kpi": business.value_kpi, "records": len(recent)}
        has_value = True
    else:
        valued = [e for e in counted if facts.counts_as_value(e["env"])]
        known = [e["traffic"]["predictions_per_month"] for e in valued]
        batch = facts.batch_predictions(month_start, end)
        projected = [p for p in known if p is not None]
        predictions = sum(projected) + batch if projected or batch else None
        value = None if predictions is None else predictions * business.value_per_prediction
        basis = "predictions_per_month × value_per_prediction"
        inputs = {
            "predictions_per_month": predictions,
            "of_which_batch": batch,
            "value_per_prediction": business.value_per_prediction,
            "environments": [e["env"] for e in valued],
        }
        has_value = business.value_per_prediction > 0
    doc = model.roi(value, cost, business.baseline_cost_per_month, business.investment, basis=basis)
    doc["value_per_month"]["inputs"] = inputs
    doc["configured"] = has_value or business.baseline_cost_per_month > 0
    if not doc["configured"]:
        doc["note"] = (
            "no business value configured: set business.value_per_prediction (or value_kpi with "
            "`cpmai kpi record`) and baseline_cost_per_month in the manifest"
        )
    elif value is None:
        if business.value_kpi:
            doc["projection_note"] = (
                f"no value per month yet: no {business.value_kpi} recorded in the last 730 h "
                f"(`cpmai kpi record {facts.name} {business.value_kpi} VALUE`)"
            )
        else:
            short = [e["traffic"]["note"] for e in counted if e["traffic"].get("note")]
            doc["projection_note"] = "no value per month yet: " + (
                "; ".join(short) or "no live traffic in the period"
            )
    doc["to_date"] = _to_date(facts, end)
    return doc


def _to_date(facts: Facts, end: float) -> dict[str, Any] | None:
    """Since the first deployment, every environment the model ran in: serving = live hours ×
    allocation per hour (today's prices); the baseline is saved, and planned retraining paid,
    only while at least one environment was live."""
    from cpmai import kpi

    first = facts.first
    if first is None or first >= end:
        return None
    business, prices = facts.manifest.business, facts.prices
    serving = predictions = 0.0
    stretches: list[tuple[float, float]] = []
    for env in facts.envs():
        intervals = facts.intervals(env)
        per_hour = float(facts.allocation(env)["per_hour"]["value"])
        serving += measure.live_seconds(intervals, first, end) / 3600 * per_hour
        stretches += [(i.start, end if i.end is None else min(i.end, end)) for i in intervals]
        if facts.counts_as_value(env):
            predictions += facts.served(env, first, end)["predictions"]
    predictions += facts.batch_predictions(first, end)
    live_months = _union(stretches, first, end) / 3600 / HOURS_PER_MONTH
    triggered = measure.triggered_runs(facts.events, facts.name, first, end)
    retrain = prices.retraining.cost_per_run * (
        prices.retraining.runs_per_month * live_months + triggered
    )
    baseline = business.baseline_cost_per_month * live_months
    if business.value_kpi:
        records = kpi.read(facts.events, facts.name, business.value_kpi)
        value = sum(r.value for r in records if first <= r.moment < end)
    else:
        value = predictions * business.value_per_prediction
    net = value + baseline - serving - retrain - business.investment
    return {
        "since": iso(first),
        "months": round((end - first) / 3600 / HOURS_PER_MONTH, 6),
        "live_months": round(live_months, 6),
        "environments": facts.envs(),
        "predictions": round(predictions),
        "value": round(value, 6),
        "serving_cost": round(serving, 6),
        "retraining_cost": round(retrain, 6),
        "baseline_saved": round(baseline, 6),
        "investment": business.investment,
        "net": figure(
            net,
            "value + baseline_saved − serving_cost − retraining_cost − investment",
            value=round(value, 6),
            baseline_saved=round(baseline, 6),
            serving_cost=round(serving, 6),
            retraining_cost=round(retrain, 6),
            investment=business.investment,
        ),
        "paid_back": net >= 0,
        "basis": "every environment's live hours × allocation per hour (today's prices); "
        "baseline and planned retraining while any environment was live; "
        + (
            "KPI records since the first deployment"
            if business.value_kpi
            else "every logged prediction but `cpmai bench`'s"
        ),
    }


def _union(stretches: list[tuple[float, float]], low: float, high: float) -> float:
    """Seconds of [low, high) covered by at least one stretch."""
    total, reach = 0.0, low
    for a, b in sorted(stretches):
        a, b = max(a, reach), min(b, high)
        if b > a:
            total += b - a
            reach = b
    return total


def trend(facts: Facts, start: float, end: float, window: float) -> list[dict[str, Any]]:
    """Per window, model-wide: what the environments cost (live seconds × allocation per hour)
    and what was delivered (predictions of the environments that count × value_per_prediction
    without `cpmai bench`'s, or the value KPI's records), and both added up."""
    from cpmai import kpi

    business = facts.manifest.business
    records = kpi.read(facts.events, facts.name, business.value_kpi) if business.value_kpi else []
    envs = [(e, float(facts.allocation(e)["per_hour"]["value"])) for e in facts.envs()]
    out = []
    total_cost = total_value = 0.0
    low = start
    while low < end:
        high = min(low + window, end)
        spent = sum(measure.live_seconds(facts.intervals(e), low, high) / 3600 * h for e, h in envs)
        if business.value_kpi:
            worth = sum(r.value for r in records if low <= r.moment < high)
        else:
            count = sum(facts.served(e, low, high)["predictions"] for e, _ in envs
                        if facts.counts_as_value(e))  # fmt: skip
            worth = (count + facts.batch_predictions(low, high)) * business.value_per_prediction
        total_cost += spent
        total_value += worth
        out.append(
            {
                "start": iso(low),
                "cost": round(spent, 6),
                "value": round(worth, 6),
                "cumulative_cost": round(total_cost, 6),
                "cumulative_value": round(total_value, 6),
            }
        )
        low = high
    return out


def _what_if(
    facts: Facts,
    doc: dict[str, Any],
    entries: dict[str, dict[str, Any]],
    counted: list[str],
    env: str | None,
    replicas: int | None,
    traffic: float | None,
) -> dict[str, Any]:
    """Plan one environment: N replicas and/or R predictions/s, assuming capacity grows in
    proportion to replicas (true while each replica has its own cores)."""
    shown = doc["environments"]
    if env is None and len(shown) != 1:
        raise UsageError(
            "--replicas/--traffic plan one environment: name it with --env "
            f"(here: {', '.join(e['env'] for e in shown)})"
        )
    entry = shown[0]
    prices, business = facts.prices, facts.manifest.business
    count = replicas if replicas is not None else entry["replicas"]
    alloc = facts.allocation(entry["env"], count)
    alloc_hour = float(alloc["per_hour"]["value"])
    cap = entry["capacity"]
    per_replica = (
        cap["predictions_per_s"] / entry["replicas"]
        if cap and cap["predictions_per_s"] and entry["replicas"]
        else None
    )
    rate = traffic if traffic is not None else entry["traffic"]["predictions_per_s"]
    capacity_n = None if per_replica is None else per_replica * count
    needed = None if per_replica is None or rate is None else max(1, math.ceil(rate / per_replica))
    month = float(alloc["per_month"]["value"])
    total = float(doc["total_per_month"]["value"]) + month
    if entry["env"] in counted:
        total -= float(entries[entry["env"]]["serving_per_month"]["value"])
    value = None
    if rate is not None and not business.value_kpi:
        value = rate * 3600 * HOURS_PER_MONTH * business.value_per_prediction
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
        "cores)" + ("; unknown until the environment is benchmarked" if cap is None else ""),
    }
