"""The report for a terminal: Rich panels and tables (built here, printed by the CLI)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cpmai.clock import short_time
from cpmai.report.text import (
    budget_share,
    count,
    env_label,
    idle,
    log_notes,
    money,
    ms,
    status_of,
    windows_met,
)

if TYPE_CHECKING:
    from cpmai.report.document import Report

COLOUR = {"ok": "green", "bad": "red", "none": "dim"}
SPARK = 24
"""Windows a sparkline shows (the last ones)."""
BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float | None]) -> str:
    """One block character per value, scaled to the largest; a gap for None."""
    top = max((v for v in values if v is not None), default=0.0)
    if top <= 0:
        return "".join(" " if v is None else BLOCKS[0] for v in values)
    return "".join(
        " " if v is None else BLOCKS[min(int(v / top * (len(BLOCKS) - 1) + 0.5), 7)] for v in values
    )


def render(doc: Report) -> Any:
    """The report as one Rich panel."""
    from rich.console import Group
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table

    cur = doc.currency
    period = doc.period
    title = f"[bold]{doc.name}[/bold]  {short_time(period.since)} → {short_time(period.until)} UTC"
    envs = Table(expand=False, box=None, padding=(0, 2))
    for column in ("env", "live", "requests", "p99 ms", "SLO", "drift", "req/s", "p99"):
        envs.add_column(column)
    monitored = doc.monitored()
    for env in doc.environments:
        mon = monitored.get(env.env)
        if mon is None:
            envs.add_row(env.env, env.live_version or "none", "-", "-",
                         "[dim]no data yet[/dim]", "-", "", "")  # fmt: skip
            continue
        css, label = status_of(mon)
        met, judged = windows_met(mon)
        drift = mon.drift.status
        p99 = mon.traffic.latency_ms.p99_ms
        envs.add_row(
            env.env,
            env.live_version or "[dim]none[/dim]",
            f"{mon.traffic.requests:,}",
            "-" if p99 is None else f"{p99:.2f}",
            f"[{COLOUR[css]}]{label}[/] ({met}/{judged})",
            f"[{'red' if drift == 'drift' else 'green' if drift == 'ok' else 'dim'}]{drift}[/]",
            sparkline([w.requests_per_s for w in mon.windows][-SPARK:]),
            sparkline([w.latency_ms.p99_ms for w in mon.windows][-SPARK:]),
        )
    if not doc.environments:
        envs.add_row("[dim]no deployment yet: cpmai deploy MANIFEST --env ENV[/dim]", *[""] * 7)
    latency = Table(title="latency per version (newest benchmark)", title_justify="left")
    for column in ("version", "level", "req/s", "p50 ms", "p95 ms", "p99 ms"):
        latency.add_column(column, justify="left" if column in ("version", "level") else "right")
    for timed in doc.latency:
        bench = timed.bench
        if not bench or not bench.levels:
            latency.add_row(
                timed.version, "[dim]no data yet: run cpmai bench[/dim]", "", "", "", ""
            )
            continue
        for lv in bench.levels:
            latency.add_row(
                timed.version, f"{lv.label} ({bench.kind})", f"{lv.throughput_rps:,.0f}",
                ms(lv.p50_ms), ms(lv.p95_ms), ms(lv.p99_ms),
            )  # fmt: skip
    versions = Table(title="versions", title_justify="left")
    for column in ("version", "packaged", "by", "live in", "journey"):
        versions.add_column(column)
    for v in doc.versions:
        versions.add_row(
            v.version,
            short_time(v.packaged),
            escape(v.by),
            ", ".join(v.live_in) or "-",
            " → ".join(
                e.action
                + (f" {e.env}" if e.env else "")
                + (" ✗" if e.action == "gate" and e.summary != "passed" else "")
                for e in v.journey
                if e.action != "package"
            )
            or "packaged",
        )
    cost = doc.cost
    budget = cost.budget
    money_table = Table(title="cost", title_justify="left")
    for column in ("env", "serving/mo", "idle", "pred/mo", "1k @capacity", "1k @traffic"):
        money_table.add_column(column, justify="left" if column == "env" else "right")
    for e in cost.environments:
        money_table.add_row(
            env_label(e),
            money(e.serving_per_month.value),
            idle(e),
            count(e.traffic.predictions_per_month),
            money(e.cost_per_1000.at_capacity.value),
            money(e.cost_per_1000.at_traffic.value),
        )
    total = cost.total_per_month.value
    budget_line = f"total [bold]{money(total, cur)}[/bold] a month"
    if budget.per_month is not None:
        colour = "red" if budget.over else "green"
        budget_line += f", [{colour}]{budget_share(budget, cur)}[/]"
    roi = cost.roi
    pct = roi.roi_percent.value
    roi_line = (
        f"ROI {('n/a' if pct is None else f'{pct:,.0f}%')}, net "
        f"{money(roi.net_per_month.value, cur)} a month"
        + (f" [dim]({escape(roi.projection_note)})[/dim]" if roi.projection_note else "")
        if roi.configured
        else f"[dim]{escape(roi.note or '')}[/dim]"
    )
    alerts = [
        f"[red]●[/red] {env}: {a.kind} — {escape(a.message)}"
        for env, mon in monitored.items()
        for a in mon.alerts
    ] + [f"[red]●[/red] {a.kind} — {escape(a.message)}" for a in cost.alerts]
    fired = sum(t.action == "trigger" for t in doc.triggers)
    parts: list[Any] = [
        Panel(envs, title="environments", title_align="left"),
        *(f"[dim]{escape(note)}[/dim]" for note in log_notes(doc)),
        latency,
        money_table,
        budget_line + "  ·  " + roi_line,
        f"triggers fired: {fired}" if fired else "[dim]no trigger fired[/dim]",
        *alerts,
        versions,
    ]
    return Panel(Group(*parts), title=title, title_align="left", expand=False)
