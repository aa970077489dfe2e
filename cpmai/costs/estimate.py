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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cpmai.clock import iso
from cpmai.costs import measure, model
from cpmai.costs.document import (
    Budget,
    CostAlert,
    CostDocument,
    EnvironmentCost,
    Period,
    Prices,
    WhatIf,
)
from cpmai.costs.environment import environment, increases
from cpmai.costs.facts import DEFAULT_PERIOD_S, Facts, Progress
from cpmai.costs.model import HOURS_PER_MONTH, figure
from cpmai.costs.roi import roi
from cpmai.errors import UsageError, breach_code

if TYPE_CHECKING:
    from cpmai.manifest import Manifest


MAX_TRAFFIC = 1e9


@dataclass
class CostResult:
    """The cost document, its alerts, and what was read of the state folder to build it."""

    document: CostDocument
    facts: Facts | None = None
    alerts: list[CostAlert] = field(default_factory=list)

    @property
    def breached(self) -> bool:
        return self.document.breached


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
    caller has already read of the state folder (else read here). The document says whether a
    threshold was breached (over budget, or a rise past `max_increase`)."""
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
        e: environment(facts, e, planned, start, end)
        for e, planned in [*shown, *((e, False) for e in live if e not in dict(shown))]
    }
    serving_total = sum(float(entries[e].serving_per_month.value or 0.0) for e in counted)
    month_start = end - DEFAULT_PERIOD_S
    # a trigger is counted over the month that ends with the period, whatever its length: two
    # retraining runs in the first four hours are two runs this month, not 365
    triggered = measure.triggered_runs(facts.events, name, month_start, end)
    retraining = model.retraining(
        prices.retraining.cost_per_run, prices.retraining.runs_per_month, triggered
    )
    retrain_month = float(retraining.per_month.value or 0.0)
    total = serving_total + retrain_month
    configured = bool(prices.cpu_hour or prices.memory_gb_hour)
    price_sheet = Prices(
        cpu_hour=prices.cpu_hour, memory_gb_hour=prices.memory_gb_hour, configured=configured
    )
    if not configured:
        price_sheet.note = (
            "no price sheet: costs.cpu_hour and costs.memory_gb_hour are 0, so serving costs 0 "
            "(set them, or extend configs/team-defaults.yaml)"
        )
    shown_entries = [entries[e] for e, _ in shown]
    budget = prices.budget_per_month
    over = bool(budget is not None and total > budget)
    alerts: list[CostAlert] = []
    if over:
        alerts.append(
            CostAlert(
                kind="budget",
                message=f"{total:,.2f} {prices.currency} a month is over the budget of "
                f"{budget:,.2f}",
            )
        )
    if max_increase is not None:
        alerts += increases(shown_entries, max_increase)
    total_figure = figure(
        total,
        "Σ serving_per_month of the environments live now + retraining per_month",
        serving=round(serving_total, 6),
        retraining=round(retrain_month, 6),
        environments=counted,
    )
    plan = None
    if replicas is not None or traffic is not None:
        plan = _what_if(facts, shown_entries, entries, total_figure.value, counted, env,
                        replicas, traffic)  # fmt: skip
    doc = CostDocument(
        name=name,
        currency=prices.currency,
        manifest=facts.source,
        period=Period(since=iso(start), until=iso(end), hours=round((end - start) / 3600, 4)),
        prices=price_sheet,
        environments=shown_entries,
        counted=counted,
        retraining=retraining,
        total_per_month=total_figure,
        budget=Budget(
            per_month=budget, used_share=round(total / budget, 6) if budget else None, over=over
        ),
        max_increase=max_increase,
        roi=roi(facts, [entries[e] for e in counted], total, end),
        what_if=plan,
        alerts=alerts,
        exit_code=int(breach_code(bool(alerts))),
    )
    return CostResult(doc, facts, alerts)


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


def _what_if(
    facts: Facts,
    shown: list[EnvironmentCost],
    entries: dict[str, EnvironmentCost],
    total_per_month: float | None,
    counted: list[str],
    env: str | None,
    replicas: int | None,
    traffic: float | None,
) -> WhatIf:
    """Plan one environment: N replicas and/or R predictions/s, assuming capacity grows in
    proportion to replicas (true while each replica has its own cores)."""
    if env is None and len(shown) != 1:
        raise UsageError(
            "--replicas/--traffic plan one environment: name it with --env "
            f"(here: {', '.join(e.env for e in shown)})"
        )
    entry = shown[0]
    prices, business = facts.prices, facts.manifest.business
    count = replicas if replicas is not None else entry.replicas
    alloc = facts.allocation(entry.env, count)
    alloc_hour = float(alloc.per_hour.value or 0.0)
    cap = entry.capacity
    per_replica = (
        cap.predictions_per_s / entry.replicas
        if cap and cap.predictions_per_s and entry.replicas
        else None
    )
    rate = traffic if traffic is not None else entry.traffic.predictions_per_s
    capacity_n = None if per_replica is None else per_replica * count
    needed = None if per_replica is None or rate is None else max(1, math.ceil(rate / per_replica))
    month = float(alloc.per_month.value or 0.0)
    total = float(total_per_month or 0.0) + month
    if entry.env in counted:
        total -= float(entries[entry.env].serving_per_month.value or 0.0)
    value = None
    if rate is not None and not business.value_kpi:
        value = rate * 3600 * HOURS_PER_MONTH * business.value_per_prediction
    return WhatIf(
        env=entry.env,
        replicas=count,
        predictions_per_s=rate,
        allocation=alloc,
        capacity=figure(
            capacity_n,
            "capacity_predictions_per_s / benchmarked_replicas × replicas",
            capacity_predictions_per_s=cap.predictions_per_s if cap else None,
            benchmarked_replicas=entry.replicas,
            replicas=count,
        ),
        replicas_needed=needed,
        fits=None if capacity_n is None or rate is None else rate <= capacity_n,
        cost_per_1000=model.per_thousand(alloc_hour, rate, "allocation, at the planned traffic"),
        predictions_per_month=None if rate is None else round(rate * 3600 * HOURS_PER_MONTH),
        value_per_month=None if value is None else round(value, 6),
        total_per_month=figure(
            total,
            "total_per_month − this environment's serving + planned allocation per_month",
            planned_allocation=round(month, 6),
        ),
        over_budget=bool(prices.budget_per_month is not None and total > prices.budget_per_month),
        note="capacity assumed to grow in proportion to replicas (each replica with its own "
        "cores)" + ("; unknown until the environment is benchmarked" if cap is None else ""),
    )
