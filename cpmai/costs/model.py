"""The cost model: pure formulas, each returning its value with the formula and the inputs it
used (`--explain` prints them, so a finance reader can redo the sum).

- Allocation (OpenCost): amount × hours × hourly rate, for CPU cores and GiB of memory.
- A workload is charged max(request, usage) per resource; idle = allocated − used.
- A month is 730 hours (infracost's convention).
- Cost per N predictions = hourly cost × N / (3600 × sustained predictions per second).
"""

from __future__ import annotations

from typing import Any

from cpmai.costs.document import Allocation, Figure, IdleShare, Retraining, Roi, Usage

HOURS_PER_MONTH = 730.0


def figure(value: float | None, formula: str, /, **inputs: Any) -> Figure:
    """A computed figure: its value, its formula, and the inputs put into it."""
    return Figure(value=_round(value), formula=formula, inputs=inputs)


def _round(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.10g}")


def allocation(
    replicas: float, cpu: float, memory_gb: float, cpu_hour: float, memory_gb_hour: float
) -> Allocation:
    """What the environment reserves, priced."""
    cores, gib = replicas * cpu, replicas * memory_gb
    per_hour = cores * cpu_hour + gib * memory_gb_hour
    return Allocation(
        cpu_cores=cores,
        memory_gib=gib,
        per_hour=figure(
            per_hour,
            "replicas × (cpu × cpu_hour + memory_gb × memory_gb_hour)",
            replicas=replicas,
            cpu=cpu,
            memory_gb=memory_gb,
            cpu_hour=cpu_hour,
            memory_gb_hour=memory_gb_hour,
        ),
        per_month=figure(per_hour * HOURS_PER_MONTH, "per_hour × 730 h", per_hour=_round(per_hour)),
    )


def charged(
    cores: float,
    gib: float,
    used_cores: float,
    used_gib: float,
    cpu_hour: float,
    memory_gb_hour: float,
) -> Usage:
    """The usage view: what was used, what is charged (max of reserved and used, per resource)
    and the idle share of what is reserved."""
    usage_hour = used_cores * cpu_hour + used_gib * memory_gb_hour
    alloc_hour = cores * cpu_hour + gib * memory_gb_hour
    charged_cores, charged_gib = max(cores, used_cores), max(gib, used_gib)
    charged_hour = charged_cores * cpu_hour + charged_gib * memory_gb_hour
    idle_hour = max(cores - used_cores, 0.0) * cpu_hour + max(gib - used_gib, 0.0) * memory_gb_hour
    return Usage(
        cpu_cores_used=_round(used_cores),
        memory_gib_used=_round(used_gib),
        usage_per_hour=figure(
            usage_hour,
            "used_cores × cpu_hour + used_gib × memory_gb_hour",
            used_cores=_round(used_cores),
            used_gib=_round(used_gib),
            cpu_hour=cpu_hour,
            memory_gb_hour=memory_gb_hour,
        ),
        charged_per_hour=figure(
            charged_hour,
            "max(cores, used_cores) × cpu_hour + max(gib, used_gib) × memory_gb_hour",
            cores=cores,
            used_cores=_round(used_cores),
            gib=gib,
            used_gib=_round(used_gib),
            cpu_hour=cpu_hour,
            memory_gb_hour=memory_gb_hour,
        ),
        charged_per_month=figure(
            charged_hour * HOURS_PER_MONTH,
            "charged_per_hour × 730 h",
            charged_per_hour=_round(charged_hour),
        ),
        idle_share=IdleShare(
            cpu=figure(
                max(1 - used_cores / cores, 0.0) if cores else None,
                "1 − used_cores / cores",
                used_cores=_round(used_cores),
                cores=cores,
            ),
            memory=figure(
                max(1 - used_gib / gib, 0.0) if gib else None,
                "1 − used_gib / gib",
                used_gib=_round(used_gib),
                gib=gib,
            ),
            cost=figure(
                idle_hour / alloc_hour if alloc_hour else None,
                "(max(cores − used_cores, 0) × cpu_hour + max(gib − used_gib, 0) × "
                "memory_gb_hour) / allocation_per_hour",
                allocation_per_hour=_round(alloc_hour),
            ),
        ),
    )


def per_thousand(per_hour: float, predictions_per_s: float | None, basis: str) -> Figure:
    """Cost of 1,000 predictions at a sustained rate."""
    value = None
    if predictions_per_s is not None and predictions_per_s > 0:
        value = per_hour * 1000 / (3600 * predictions_per_s)
    return figure(
        value,
        "per_hour × 1000 / (3600 × predictions_per_s)",
        per_hour=_round(per_hour),
        predictions_per_s=_round(predictions_per_s),
        basis=basis,
    )


def retraining(cost_per_run: float, runs_per_month: float, triggered_runs: int) -> Retraining:
    """Planned runs plus the runs triggers called for over the last month (730 h)."""
    return Retraining(
        planned_runs_per_month=runs_per_month,
        triggered_runs=triggered_runs,
        per_month=figure(
            cost_per_run * (runs_per_month + triggered_runs),
            "cost_per_run × (runs_per_month + triggered_runs in the last 730 h)",
            cost_per_run=cost_per_run,
            runs_per_month=runs_per_month,
            triggered_runs=triggered_runs,
        ),
    )


def roi(value: float | None, cost: float, baseline: float, investment: float, *, basis: str) -> Roi:
    """Per month: value delivered, the old process's cost avoided, what the model costs.
    `value` None (not enough history to project): net, ROI and payback are None too."""
    net = None if value is None else value + baseline - cost
    return Roi(
        value_per_month=figure(value, basis),
        cost_per_month=figure(cost, "serving + retraining per month"),
        savings_per_month=figure(
            baseline - cost,
            "baseline_cost_per_month − cost_per_month",
            baseline_cost_per_month=baseline,
            cost_per_month=_round(cost),
        ),
        net_per_month=figure(
            net,
            "value_per_month + baseline_cost_per_month − cost_per_month",
            value_per_month=_round(value),
            baseline_cost_per_month=baseline,
            cost_per_month=_round(cost),
        ),
        roi_percent=figure(
            net / cost * 100 if net is not None and cost > 0 else None,
            "net_per_month / cost_per_month × 100",
            net_per_month=_round(net),
            cost_per_month=_round(cost),
        ),
        payback_months=figure(
            investment / net if net is not None and investment > 0 and net > 0 else None,
            "investment / net_per_month",
            investment=investment,
            net_per_month=_round(net),
        ),
    )


def render(fig: Figure) -> str:
    """`formula = inputs = value`, for --explain."""
    inputs = ", ".join(f"{k}={v}" for k, v in fig.inputs.items() if v is not None)
    value = "n/a" if fig.value is None else f"{fig.value:.6g}"
    return f"{fig.formula}" + (f" with {inputs}" if inputs else "") + f" = {value}"
