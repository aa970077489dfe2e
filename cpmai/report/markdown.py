"""The report in Markdown: short enough for a pull-request comment or $GITHUB_STEP_SUMMARY."""

from __future__ import annotations

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

MARK = {"ok": "✅", "bad": "❌", "none": "➖"}


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def render(doc: Report) -> str:
    """The report in Markdown."""
    cur = doc.currency
    period = doc.period
    lines = [
        f"## cpmai report: {doc.name}",
        "",
        f"Period {short_time(period.since)} → {short_time(period.until)} UTC · "
        f"generated {short_time(doc.generated)} UTC",
        "",
        "### Environments",
        "",
    ]
    rows = []
    monitored = doc.monitored()
    for env in doc.environments:
        mon = monitored.get(env.env)
        if mon is not None:
            css, label = status_of(mon)
            met, judged = windows_met(mon)
            p99 = mon.traffic.latency_ms.p99_ms
            rows.append(
                [
                    env.env,
                    env.live_version or "none",
                    f"{mon.traffic.requests:,}",
                    "-" if p99 is None else f"{p99:.2f}",
                    f"{MARK[css]} {label} ({met}/{judged} windows)",
                    f"{MARK[_drift_class(mon.drift.status)]} {mon.drift.status}",
                    len(mon.alerts),
                ]
            )
        else:
            rows.append([env.env, env.live_version or "none", "-", "-", "no data yet",
                         "-", 0])  # fmt: skip
    if not rows:
        rows.append(["no deployment yet", "-", "-", "-", "-", "-", 0])
    lines += _table(["env", "live", "requests", "p99 ms", "SLO", "drift", "alerts"], rows)
    notes = log_notes(doc)
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    lines += ["", "### Latency per version (newest benchmark, busiest level)", ""]
    rows = []
    for v in doc.latency:
        bench = v.bench
        if not bench or not bench.levels:
            rows.append([v.version, "no data yet: run `cpmai bench`", "-", "-", "-", "-"])
            continue
        lv = max(bench.levels, key=lambda x: x.throughput_rps)
        rows.append(
            [
                v.version,
                f"{lv.label} ({bench.kind})",
                f"{lv.throughput_rps:,.0f}",
                ms(lv.p50_ms),
                ms(lv.p99_ms),
                MARK["ok"]
                if bench.slo_passed
                else MARK["bad"]
                if bench.slo_passed is False
                else MARK["none"],
            ]
        )
    lines += _table(["version", "level", "req/s", "p50 ms", "p99 ms", "SLO"], rows)
    cost = doc.cost
    budget = cost.budget
    lines += ["", "### Cost and ROI", ""]
    rows = [
        [
            env_label(e),
            e.version or "-",
            money(e.serving_per_month.value, cur),
            idle(e),
            count(e.traffic.predictions_per_month),
            money(e.cost_per_1000.at_capacity.value, cur),
            money(e.cost_per_1000.at_traffic.value, cur),
        ]
        for e in cost.environments
    ]
    lines += _table(
        [
            "env",
            "version",
            "serving /month",
            "idle",
            "predictions /month",
            "per 1k @capacity",
            "per 1k @traffic",
        ],
        rows,
    )
    total = cost.total_per_month.value
    line = f"**Total {money(total, cur)} a month**"
    if budget.per_month is not None:
        line += f" — {MARK['bad'] if budget.over else MARK['ok']} {budget_share(budget, cur)}"
    lines += ["", line + f" (retraining {money(cost.retraining.per_month.value, cur)})"]
    roi = cost.roi
    if roi.configured:
        pct = roi.roi_percent.value
        lines.append(
            f"ROI: value {money(roi.value_per_month.value, cur)}/month, net "
            f"{money(roi.net_per_month.value, cur)}/month, "
            + ("n/a" if pct is None else f"{pct:,.0f}%")
            + (f" ({roi.projection_note})" if roi.projection_note else "")
        )
    else:
        lines.append(f"ROI: {roi.note}")
    alerts = [
        f"- {env}: **{a.kind}** {a.message}" for env, mon in monitored.items() for a in mon.alerts
    ] + [f"- **{a.kind}** {a.message}" for a in cost.alerts]
    if alerts:
        lines += ["", "### Alerts", "", *alerts]
    if doc.triggers:
        lines += ["", f"Triggers fired: {sum(t.action == 'trigger' for t in doc.triggers)}"]
    lines += ["", "<details><summary>Versions</summary>", ""]
    lines += _table(
        ["version", "packaged", "by", "live in", "events"],
        [
            [
                v.version,
                short_time(v.packaged),
                v.by,
                ", ".join(v.live_in) or "-",
                " → ".join(e.action + (f" {e.env}" if e.env else "") for e in v.journey),
            ]
            for v in doc.versions
        ],
    )
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def _drift_class(status: str) -> str:
    return {"drift": "bad", "ok": "ok"}.get(status, "none")
