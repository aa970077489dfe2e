"""Formatting shared by the terminal, Markdown and HTML reports and `cpmai cost`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cpmai.monitor.notes import lost_line, synthetic_line

if TYPE_CHECKING:
    from cpmai.costs.document import Budget, EnvironmentCost
    from cpmai.report.document import Monitored, Report


def money(value: float | None, currency: str = "") -> str:
    """2 decimals, or 3 significant digits below 1 (a cost per 1,000 predictions is small)."""
    if value is None:
        return "n/a"
    text = f"{value:.3g}" if value and abs(value) < 1 else f"{value:,.2f}"
    return text + (f" {currency}" if currency else "")


def ms(value: float | None) -> str:
    """A latency in ms, 2 decimals, or "-"."""
    return "-" if value is None else f"{value:.2f}"


def count(value: float | None) -> str:
    """1,234 / 12.3k / 4.5M / 6.7G."""
    if value is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size * 10:
            return f"{value / size:,.1f}{unit}"
    return f"{value:,.0f}"


def idle(entry: EnvironmentCost) -> str:
    """The idle share of an environment's cost, or "-" (no samples, or nothing priced)."""
    value = entry.usage.idle_share.cost.value if entry.usage else None
    return "-" if value is None else f"{value:.0%}"


def budget_share(budget: Budget, currency: str = "") -> str:
    """ "38% of the 300.00 USD budget", or "over the 0.00 USD budget"."""
    amount = money(budget.per_month, currency)
    if budget.used_share is None:
        return f"{'over' if budget.over else 'within'} the {amount} budget"
    return f"{budget.used_share:.0%} of the {amount} budget"


def env_label(entry: EnvironmentCost) -> str:
    """An environment of `cpmai cost`'s document: "(not live)" when its cost is a plan."""
    return entry.env + (" (not live)" if entry.planned else "")


def status_of(monitored: Monitored) -> tuple[str, str]:
    """(css class / colour word, label) of an environment's SLO over the period."""
    judged = [c for c in monitored.slo.checks if c.passed is not None]
    if not judged:
        return "none", "no data"
    if all(c.passed for c in judged):
        return "ok", "met"
    return "bad", "missed"


def windows_met(monitored: Monitored) -> tuple[int, int]:
    """(windows that met the SLO, windows with traffic)."""
    judged = [w for w in monitored.windows if w.slo_passed is not None]
    return sum(1 for w in judged if w.slo_passed), len(judged)


def log_notes(doc: Report) -> list[str]:
    """A report's notes on what the logs hold besides customers' traffic: per environment, its
    `lost_line` and `synthetic_line`, when it has them."""
    notes = []
    for env, mon in doc.monitored().items():
        for line in (lost_line(mon.lost), synthetic_line(mon.synthetic)):
            if line:
                notes.append(f"{env}: {line}")
    return notes
