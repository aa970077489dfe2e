"""`cpmai cost`: serving and retraining cost, cost per 1,000 predictions, budget and ROI."""

from typing import TYPE_CHECKING, Annotated

from cpmai.cli.options import IncludeSyntheticFlag, JsonFlag, argument, flag, option
from cpmai.cli.output import OPTIONS, detail, emit_json, progress, show, wants_json, warn
from cpmai.cli.project import name_or_manifest
from cpmai.monitor.notes import synthetic_line
from cpmai.report.text import budget_share, count, env_label, idle, money

if TYPE_CHECKING:
    from cpmai.costs.document import CostDocument, Figure, Roi, WhatIf


def cost(
    target: Annotated[
        str,
        argument(
            "Model name, or a manifest file (its costs:, business: and environments: then "
            "apply: the way to try a new price sheet)."
        ),
    ],
    env: Annotated[
        str | None, option("One environment (default: every live one).", "--env", "-e")
    ] = None,
    since: Annotated[
        str | None,
        option("Start of the measured period: ISO time or age (default: 730h, a month)."),
    ] = None,
    until: Annotated[str | None, option("End of the period (default: now).")] = None,
    replicas: Annotated[int | None, option("What if: this many replicas.", min=1, max=1000)] = None,
    traffic: Annotated[float | None, option("What if: this many predictions per second.")] = None,
    max_increase: Annotated[
        str | None,
        option("Exit 4 when a cost rose more than this against the previous version (15%)."),
    ] = None,
    explain: Annotated[bool, flag("--explain", "Show every figure's formula and inputs.")] = False,
    include_synthetic: IncludeSyntheticFlag = False,
    json_: JsonFlag = False,
) -> int:
    """What the model costs and returns: per environment, the allocation (replicas × (cpu ×
    cpu_hour + memory_gb × memory_gb_hour) × 730 h) and the usage view from the servers' own
    samples (charged max(reserved, used); idle share); cost per 1,000 predictions at the
    benchmarked capacity and at the measured traffic; retraining (planned + triggered runs);
    the monthly total against budget_per_month; ROI from business: per month and since the
    first deployment.

    Exit 4 when over budget, or with --max-increase when a cost rose more than that against the
    previous version.
    """
    import math
    import time

    from cpmai.clock import parse_moment
    from cpmai.costs.estimate import estimate
    from cpmai.errors import UsageError, breach_code
    from cpmai.settings import resolve_home

    name, manifest = name_or_manifest(target)
    now = time.time()
    if traffic is not None and (not math.isfinite(traffic) or traffic <= 0):
        raise UsageError(f"--traffic {traffic}: expected predictions per second > 0")
    with progress(detail) as say:
        result = estimate(
            resolve_home(OPTIONS.home),
            name,
            env=env,
            manifest=manifest,
            since=parse_moment(since, now=now) if since else None,
            until=parse_moment(until, now=now) if until else None,
            now=now,
            replicas=replicas,
            traffic=traffic,
            max_increase=parse_share(max_increase) if max_increase else None,
            progress=say,
            include_synthetic=include_synthetic,
        )
    doc = result.document
    if wants_json(json_):
        emit_json(doc.to_json())
    else:
        render(doc, explain=explain)
    return int(breach_code(doc.breached))


def parse_share(text: str) -> float:
    """`15%` or `0.15` → 0.15."""
    from cpmai.errors import UsageError

    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise UsageError(f"--max-increase {text!r}: expected a share such as 15% or 0.15") from None
    if not 0 <= value < 1000:
        raise UsageError(f"--max-increase {text!r}: expected a share such as 15% or 0.15")
    return value


def render(doc: "CostDocument", *, explain: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    from cpmai.costs.model import render as formula

    cur = doc.currency
    period = doc.period
    show(
        f"[bold]{doc.name}[/bold]: costs in {cur}, prices from {escape(doc.manifest)}; "
        f"measured "
        f"{period.since} → {period.until} ({period.hours:g} h)"
    )
    table = Table(title="serving, per environment", title_justify="left")
    for column in ("env", "version", "repl", "alloc/mo", "CPU used", "GiB used", "idle",
                   "charged/mo", "pred/mo", "1k @capacity", "1k @traffic"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("env", "version") else "right")
    for e in doc.environments:
        usage = e.usage
        table.add_row(
            env_label(e),
            e.version or "-",
            str(e.replicas),
            money(e.allocation.per_month.value),
            f"{usage.cpu_cores_used:.3f}" if usage else "-",
            f"{usage.memory_gib_used:.3f}" if usage else "-",
            idle(e),
            money(e.serving_per_month.value),
            count(e.traffic.predictions_per_month),
            money(e.cost_per_1000.at_capacity.value),
            money(e.cost_per_1000.at_traffic.value),
        )
    show(table)
    if doc.prices.note:
        warn(doc.prices.note)
    if doc.counted != [e.env for e in doc.environments]:
        show(f"[dim]the total counts every environment live now: {', '.join(doc.counted)}[/dim]")
    for e in doc.environments:
        if e.autoscaled is not None:
            a = e.autoscaled
            ran = (
                f"{a.mean_running:g} running on average (peak {a.peak_running}, "
                f"{a.samples:,} resource samples): charged for that"
                if a.mean_running is not None
                else "no resource samples in the period: charged at the floor"
            )
            show(f"{e.env}: replicas follow the load ({a.min}–{a.max}); {ran}")
        resources_from = e.allocation.resources_from or ""
        if resources_from.startswith("not in any manifest"):
            warn(f"{e.env}: {resources_from}")
        measured = e.traffic.measured_s
        if e.traffic.predictions and measured < 3600:
            warn(
                f"{e.env}: per-second rates come from {measured:,.0f} s of live traffic "
                f"({e.traffic.predictions:,} predictions)"
            )
        synthetic = synthetic_line(e.traffic.synthetic)
        if synthetic:
            show(f"{e.env}: {synthetic}")
        if e.usage_note:
            detail(f"{e.env}: {e.usage_note}")
        if e.capacity_note:
            show(f"[dim]{e.env}: {escape(e.capacity_note)}[/dim]")
        elif e.capacity:
            cap = e.capacity
            show(
                f"[dim]{e.env}: capacity {cap.predictions_per_s or 'n/a'} predictions/s "
                f"({cap.note}; {cap.source}, {cap.time})[/dim]"
            )
        if e.previous:
            rise = e.previous.increase
            show(
                f"{e.env}: against {e.previous.previous.version}: serving per month "
                f"{_change(rise.serving_per_month)}, per 1,000 at capacity "
                f"{_change(rise.cost_per_1000_at_capacity)}"
            )
    retraining = doc.retraining
    show(
        f"retraining: {retraining.planned_runs_per_month:g} planned run(s)/month + "
        f"{retraining.triggered_runs} triggered in the period → "
        f"{money(retraining.per_month.value, cur)} a month"
    )
    budget = doc.budget
    line = f"[bold]total {money(doc.total_per_month.value, cur)} a month[/bold]"
    if budget.per_month is not None:
        colour = "red" if budget.over else "green"
        line += f" — [{colour}]{budget_share(budget, cur)}[/{colour}]"
    show(line)
    _render_roi(doc.roi, cur)
    if doc.what_if:
        _render_what_if(doc.what_if, cur)
    if explain:
        show("\n[bold]how each figure is computed[/bold]")
        for label, fig in _figures(doc):
            show(f"  {label}: {escape(formula(fig))}")
    for alert in doc.alerts:
        show(f"[red]ALERT[/red] {alert.kind}: {escape(alert.message)}")
    if not doc.alerts:
        show("[green]within budget[/green]" if budget.per_month is not None else "")


def _change(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def _render_roi(roi: "Roi", cur: str) -> None:
    from rich.markup import escape

    if not roi.configured:
        warn(roi.note or "")
        return
    pct = roi.roi_percent.value
    payback = roi.payback_months
    line = (
        f"ROI per month: value {money(roi.value_per_month.value, cur)}, saved "
        f"{money(roi.savings_per_month.value, cur)}, net "
        f"{money(roi.net_per_month.value, cur)}, ROI " + ("n/a" if pct is None else f"{pct:,.0f}%")
    )
    if payback.inputs["investment"]:
        months = payback.value
        line += ", payback " + ("not at this rate" if months is None else f"{months:.1f} months")
    show(line)
    if roi.projection_note:
        show(f"[dim]{escape(roi.projection_note)}[/dim]")
    to_date = roi.to_date
    if to_date:
        show(
            f"since the first deployment ({to_date.since}, {to_date.months:.2f} months): "
            f"value {money(to_date.value, cur)}, net {money(to_date.net.value, cur)}"
            + (" — paid back" if to_date.paid_back else " — not paid back yet")
        )


def _render_what_if(plan: "WhatIf", cur: str) -> None:
    rate = plan.predictions_per_s
    show(
        f"[bold]what if[/bold] {plan.env} ran {plan.replicas} replica(s)"
        + (f" at {rate:g} predictions/s" if rate is not None else "")
        + f": {money(plan.allocation.per_month.value, cur)} a month for serving, "
        f"total {money(plan.total_per_month.value, cur)}"
        + (" [red](over budget)[/red]" if plan.over_budget else "")
    )
    cap = plan.capacity.value
    if cap is None:
        show(f"  capacity unknown: {plan.note}")
    else:
        show(
            f"  capacity ≈ {cap:,.0f} predictions/s"
            + (
                f"; {plan.replicas_needed} replica(s) needed"
                + ("" if plan.fits else " [red](does not fit)[/red]")
                if plan.replicas_needed is not None
                else ""
            )
        )
    if plan.cost_per_1000.value is not None:
        show(f"  {money(plan.cost_per_1000.value, cur)} per 1,000 predictions")


def _figures(doc: "CostDocument") -> list[tuple[str, "Figure"]]:
    out = []
    for e in doc.environments:
        env = e.env
        out.append((f"{env} allocation per hour", e.allocation.per_hour))
        out.append((f"{env} allocation per month", e.allocation.per_month))
        if e.usage:
            out.append((f"{env} usage per hour", e.usage.usage_per_hour))
            out.append((f"{env} charged per hour", e.usage.charged_per_hour))
            out.append((f"{env} idle share of cost", e.usage.idle_share.cost))
        out.append((f"{env} per 1,000 at capacity", e.cost_per_1000.at_capacity))
        out.append((f"{env} per 1,000 at traffic", e.cost_per_1000.at_traffic))
    out.append(("retraining per month", doc.retraining.per_month))
    out.append(("total per month", doc.total_per_month))
    roi = doc.roi
    for key in ("value_per_month", "net_per_month", "roi_percent", "payback_months"):
        out.append((key.replace("_", " "), getattr(roi, key)))
    if roi.to_date:
        out.append(("net since the first deployment", roi.to_date.net))
    return out
