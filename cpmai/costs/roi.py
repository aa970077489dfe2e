"""What a model returns against what it costs: ROI per month (value, baseline saved, cost),
since the first deployment, and cost and value window by window (`cpmai report`'s trend)."""

from __future__ import annotations

from typing import Any

from cpmai.clock import iso
from cpmai.costs import measure, model
from cpmai.costs.document import EnvironmentCost, Roi, ToDate, ValuePoint
from cpmai.costs.facts import DEFAULT_PERIOD_S, Facts
from cpmai.costs.model import HOURS_PER_MONTH, figure


def roi(facts: Facts, counted: list[EnvironmentCost], cost: float, end: float) -> Roi:
    """ROI per month from business: (value per prediction or a value KPI), and to date."""
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
        valued = [e for e in counted if facts.counts_as_value(e.env)]
        known = [e.traffic.predictions_per_month for e in valued]
        batch = facts.batch_predictions(month_start, end)
        projected = [p for p in known if p is not None]
        predictions = sum(projected) + batch if projected or batch else None
        value = None if predictions is None else predictions * business.value_per_prediction
        basis = "predictions_per_month × value_per_prediction"
        inputs = {
            "predictions_per_month": predictions,
            "of_which_batch": batch,
            "value_per_prediction": business.value_per_prediction,
            "environments": [e.env for e in valued],
        }
        has_value = business.value_per_prediction > 0
    doc = model.roi(value, cost, business.baseline_cost_per_month, business.investment, basis=basis)
    doc.value_per_month.inputs = inputs
    doc.configured = has_value or business.baseline_cost_per_month > 0
    if not doc.configured:
        doc.note = (
            "no business value configured: set business.value_per_prediction (or value_kpi with "
            "`cpmai kpi record`) and baseline_cost_per_month in the manifest"
        )
    elif value is None:
        if business.value_kpi:
            doc.projection_note = (
                f"no value per month yet: no {business.value_kpi} recorded in the last 730 h "
                f"(`cpmai kpi record {facts.name} {business.value_kpi} VALUE`)"
            )
        else:
            short = [e.traffic.note for e in counted if e.traffic.note]
            doc.projection_note = "no value per month yet: " + (
                "; ".join(short) or "no live traffic in the period"
            )
    doc.to_date = to_date(facts, end)
    return doc


def to_date(facts: Facts, end: float) -> ToDate | None:
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
        per_hour = float(facts.allocation(env).per_hour.value or 0.0)
        serving += measure.live_seconds(intervals, first, end) / 3600 * per_hour
        stretches += [(i.start, end if i.end is None else min(i.end, end)) for i in intervals]
        if facts.counts_as_value(env):
            predictions += facts.served(env, first, end)["predictions"]
    predictions += facts.batch_predictions(first, end)
    live_months = union(stretches, first, end) / 3600 / HOURS_PER_MONTH
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
    return ToDate(
        since=iso(first),
        months=round((end - first) / 3600 / HOURS_PER_MONTH, 6),
        live_months=round(live_months, 6),
        environments=facts.envs(),
        predictions=round(predictions),
        value=round(value, 6),
        serving_cost=round(serving, 6),
        retraining_cost=round(retrain, 6),
        baseline_saved=round(baseline, 6),
        investment=business.investment,
        net=figure(
            net,
            "value + baseline_saved − serving_cost − retraining_cost − investment",
            value=round(value, 6),
            baseline_saved=round(baseline, 6),
            serving_cost=round(serving, 6),
            retraining_cost=round(retrain, 6),
            investment=business.investment,
        ),
        paid_back=net >= 0,
        basis="every environment's live hours × allocation per hour (today's prices); "
        "baseline and planned retraining while any environment was live; "
        + (
            "KPI records since the first deployment"
            if business.value_kpi
            else "every logged prediction but `cpmai bench`'s"
        ),
    )


def union(stretches: list[tuple[float, float]], low: float, high: float) -> float:
    """Seconds of [low, high) covered by at least one stretch."""
    total, reach = 0.0, low
    for a, b in sorted(stretches):
        a, b = max(a, reach), min(b, high)
        if b > a:
            total += b - a
            reach = b
    return total


def trend(facts: Facts, start: float, end: float, window: float) -> list[ValuePoint]:
    """Per window, model-wide: what the environments cost (live seconds × allocation per hour)
    and what was delivered (predictions of the environments that count × value_per_prediction
    without `cpmai bench`'s, or the value KPI's records), and both added up."""
    from cpmai import kpi

    business = facts.manifest.business
    records = kpi.read(facts.events, facts.name, business.value_kpi) if business.value_kpi else []
    envs = [(e, float(facts.allocation(e).per_hour.value or 0.0)) for e in facts.envs()]
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
            ValuePoint(
                start=iso(low),
                cost=round(spent, 6),
                value=round(worth, 6),
                cumulative_cost=round(total_cost, 6),
                cumulative_value=round(total_value, 6),
            )
        )
        low = high
    return out
