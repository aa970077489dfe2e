"""The report as one self-contained HTML file: inline CSS and SVG, no script, no external link."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

from cpmai.clock import short_time
from cpmai.report import svg
from cpmai.report.document import Monitored
from cpmai.report.text import (
    budget_share,
    count,
    env_label,
    idle,
    log_notes,
    money,
    status_of,
)

if TYPE_CHECKING:
    from cpmai.report.document import DriftBrief, Report

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
background:#f8fafc;color:#0f172a}
header{background:#0f172a;color:#f8fafc;padding:20px 32px}
header h1{margin:0 0 4px;font-size:22px} header p{margin:2px 0;color:#cbd5e1}
main{padding:20px 32px;max-width:1400px}
section{margin:0 0 28px} h2{font-size:17px;margin:0 0 10px;border-bottom:1px solid #e2e8f0;
padding-bottom:4px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin-bottom:24px}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:12px 16px;min-width:170px}
.card .k{font-size:12px;color:#64748b;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:20px;font-weight:600;margin-top:2px} .card .s{font-size:12px;color:#475569}
.ok{color:#15803d} .bad{color:#b91c1c} .none{color:#64748b}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(600px,1fr));gap:16px}
figure{background:#fff;border:1px solid #e2e8f0;border-radius:8px;margin:0;padding:10px}
figcaption{font-weight:600;margin-bottom:4px} .empty{color:#64748b;padding:24px 8px}
table{border-collapse:collapse;background:#fff;border:1px solid #e2e8f0;width:100%}
th,td{padding:5px 9px;border-bottom:1px solid #f1f5f9;text-align:left;vertical-align:top}
th{background:#f1f5f9;font-weight:600} td.n{text-align:right;font-variant-numeric:tabular-nums}
svg.chart{max-width:100%;height:auto} svg .grid{stroke:#e2e8f0}
svg text{font-size:11px;fill:#475569} svg .unit{font-size:11px;fill:#0f172a}
svg .legend{font-size:11px;fill:#0f172a} svg .bound-label{fill:#dc2626}
ul.journey{margin:0;padding-left:16px}
footer{color:#64748b;font-size:12px;padding:12px 32px 32px}
"""


def render(doc: Report) -> str:
    """The report as one HTML page."""
    cur = doc.currency
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>cpmai report: {escape(doc.name)}</title>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<style>{CSS}</style></head><body>",
        "<header>",
        f"<h1>{escape(doc.name)}</h1>",
        f"<p>{escape(doc.description)}</p>" if doc.description else "",
        f"<p>owners: {escape(', '.join(doc.owners) or '-')} · period "
        f"{escape(short_time(doc.period.since))} → "
        f"{escape(short_time(doc.period.until))} UTC · generated "
        f"{escape(short_time(doc.generated))} UTC</p>",
        "</header><main>",
        _cards(doc, cur),
        "<section><h2>Performance and usage</h2><div class='grid'>",
        _figure("Latency per version (benchmark)", _latency_chart(doc)),
        *(_env_charts(doc)),
        "</div>",
        *(f"<p class='none'>{escape(note)}</p>" for note in log_notes(doc)),
        "</section>",
        "<section><h2>Cost and value</h2><div class='grid'>",
        _figure("Cost vs value, cumulative", _value_chart(doc, cur)),
        _figure("Monthly cost by part", _cost_chart(doc, cur)),
        "</div>",
        _cost_table(doc, cur),
        "</section>",
        "<section><h2>Drift and data quality</h2><div class='grid'>",
        *(_drift_charts(doc)),
        "</div></section>",
        "<section><h2>Versions and their journey</h2>",
        _versions_table(doc),
        "</section>",
        _triggers_table(doc),
        _kpi_section(doc),
        "</main><footer>cpmai report · ",
        escape(doc.manifest),
        " · every figure here is in <code>cpmai report --json</code></footer></body></html>",
    ]
    return "".join(parts)


def _figure(caption: str, chart: str | None, note: str = "") -> str:
    inner = chart if chart else f"<div class='empty'>{escape(note or 'no data yet')}</div>"
    return f"<figure><figcaption>{escape(caption)}</figcaption>{inner}</figure>"


def _card(key: str, value: str, sub: str = "", cls: str = "") -> str:
    return (
        f"<div class='card'><div class='k'>{escape(key)}</div>"
        f"<div class='v {cls}'>{escape(value)}</div><div class='s'>{escape(sub)}</div></div>"
    )


def _cards(doc: Report, cur: str) -> str:
    cards = []
    for env in doc.environments:
        live = env.live_version
        cards.append(
            _card(
                f"{env.env} live",
                live or "none",
                f"since {short_time(env.since)}" if live else f"last: {env.last_event}",
                "ok" if live else "none",
            )
        )
    for env_name, mon in doc.monitored().items():
        slo, label = status_of(mon)
        cards.append(_card(f"{env_name} SLO", label, _slo_sub(mon), slo))
        drift = mon.drift.status
        cards.append(
            _card(
                f"{env_name} drift",
                drift,
                f"{sum(f.status == 'drift' for f in mon.drift.features)} feature(s) drifted",
                "bad" if drift == "drift" else "ok" if drift == "ok" else "none",
            )
        )
    cost = doc.cost
    budget = cost.budget
    total = cost.total_per_month.value
    cards.append(
        _card(
            "cost / month",
            money(total, cur),
            budget_share(budget, cur) if budget.per_month is not None else "no budget set",
            "bad" if budget.over else "ok",
        )
    )
    roi = cost.roi
    pct = roi.roi_percent.value
    cards.append(
        _card(
            "ROI / month",
            "n/a" if pct is None or not roi.configured else f"{pct:,.0f}%",
            (roi.projection_note or f"net {money(roi.net_per_month.value, cur)} a month")
            if roi.configured
            else "business value not configured",
            "ok" if pct is not None and pct > 0 else "none",
        )
    )
    return "<div class='cards'>" + "".join(cards) + "</div>"


def _slo_sub(mon: Monitored) -> str:
    parts = []
    for check in mon.slo.checks:
        measured = "-" if check.measured is None else f"{check.measured:.3g}"
        parts.append(f"{check.metric} {measured} ≤ {check.bound:g}")
    return ", ".join(parts)


def _latency_chart(doc: Report) -> str | None:
    benches = [(v.version, v.bench) for v in doc.latency if v.bench and v.bench.levels]
    if not benches:
        return None
    # the busiest level each version was measured at, side by side
    picks = [max(bench.levels, key=lambda lv: lv.throughput_rps) for _, bench in benches]
    series: list[svg.Series] = [
        (key.replace("_ms", ""), [getattr(lv, key) for lv in picks])
        for key in ("p50_ms", "p95_ms", "p99_ms")
    ]
    bound = doc.slo.get("p99_ms")
    return svg.bar_chart(
        "latency",
        "Latency per version",
        [f"{version} ({lv.label})" for (version, _), lv in zip(benches, picks, strict=True)],
        series,
        unit="ms",
        bounds=[("SLO p99", bound)] if bound else None,
    )


def _labels(starts: list[str], window_s: float) -> list[str]:
    """Window starts, to the second when windows are shorter than a minute."""
    width = 19 if window_s < 60 else 16
    return [start.replace("T", " ")[:width] for start in starts]


def _env_charts(doc: Report) -> list[str]:
    out = []
    for env_name, mon in doc.monitoring.items():
        if not isinstance(mon, Monitored):
            out.append(_figure(f"{env_name}: traffic", None, mon.note))
            continue
        windows = mon.windows
        labels = _labels([w.start for w in windows], doc.period.window_s)
        out.append(
            _figure(
                f"{env_name}: traffic (requests/s per window, `cpmai bench` load included)",
                svg.line_chart(
                    "traffic",
                    f"{env_name} traffic",
                    labels,
                    [("requests/s", [w.requests_per_s for w in windows])],
                    unit="req/s",
                ),
            )
        )
        bound = doc.slo.get("p99_ms")
        out.append(
            _figure(
                f"{env_name}: latency over time (server side)",
                svg.line_chart(
                    "slo",
                    f"{env_name} latency",
                    labels,
                    [
                        ("p50", [w.latency_ms.p50_ms for w in windows]),
                        ("p99", [w.latency_ms.p99_ms for w in windows]),
                    ],
                    unit="ms",
                    bounds=[("SLO p99", bound)] if bound else None,
                ),
            )
        )
        cpu = [w.resources.cpu_percent_mean if w.resources else None for w in windows]
        rss = [w.resources.rss_mb_mean if w.resources else None for w in windows]
        if any(v is not None for v in cpu):
            out.append(
                _figure(
                    f"{env_name}: resources",
                    svg.line_chart(
                        "resources",
                        f"{env_name} resources",
                        labels,
                        [("CPU %", cpu), ("RSS MiB", rss)],
                        unit="CPU % / MiB",
                    ),
                )
            )
    return out


def _value_chart(doc: Report, cur: str) -> str | None:
    windows = doc.value_trend
    if not windows or not any(w.cumulative_cost or w.cumulative_value for w in windows):
        return None
    return svg.line_chart(
        "value",
        "Cost vs value",
        _labels([w.start for w in windows], doc.period.window_s),
        [
            (f"cost ({cur})", [w.cumulative_cost for w in windows]),
            (f"value ({cur})", [w.cumulative_value for w in windows]),
        ],
        unit=cur,
    )


def _cost_chart(doc: Report, cur: str) -> str | None:
    cost = doc.cost
    parts = [(f"{e.env} serving", e.serving_per_month.value) for e in cost.environments]
    parts.append(("retraining", cost.retraining.per_month.value))
    budget = cost.budget.per_month
    return svg.bar_chart(
        "cost",
        "Monthly cost",
        [name for name, _ in parts],
        [(f"{cur} per month", [v for _, v in parts])],
        unit=cur,
        bounds=[("budget", budget)] if budget else None,
    )


def _drift_charts(doc: Report) -> list[str]:
    out = []
    for env_name, mon in doc.monitored().items():
        drift = mon.drift
        items = [
            (f"{f.feature} ({_SHORT.get(f.method, f.method)})", _score(f),
             None if f.status == "not enough data" else f.status == "drift")
            for f in drift.features
        ]  # fmt: skip
        out.append(
            _figure(
                f"{env_name}: drift per feature against the reference data (red: drifted)",
                svg.hbar_chart(
                    "drift",
                    f"{env_name} drift",
                    items,
                    threshold=drift.threshold,
                    unit="distance (Wasserstein ÷ std, Jensen–Shannon) or PSI for KS/chi-square",
                )
                if items
                else None,
            )
        )
        quality = [q for q in mon.data_quality if q.missing or q.out_of_range or q.unseen]
        if quality:
            rows = "".join(
                f"<tr><td>{escape(q.feature)}</td><td class='n'>{q.missing}</td>"
                f"<td class='n'>{q.out_of_range or 0}</td>"
                f"<td class='n'>{q.unseen or 0}</td></tr>"
                for q in quality
            )
            out.append(
                "<figure><figcaption>"
                + escape(f"{env_name}: data quality")
                + "</figcaption><table><tr><th>feature</th><th>missing</th><th>outside range"
                "</th><th>unseen</th></tr>" + rows + "</table></figure>"
            )
    return out


_SHORT = {"wasserstein": "W", "jensen_shannon": "JS", "ks": "KS", "chi2": "χ²"}


def _score(feature: DriftBrief) -> float | None:
    """The distance the method judges by; tests judge by p-value, so PSI stands in for them."""
    if feature.method in ("wasserstein", "jensen_shannon"):
        value = feature.statistic
    else:
        value = feature.psi
    return None if value is None else float(value)


def _cost_table(doc: Report, cur: str) -> str:
    rows = []
    for e in doc.cost.environments:
        rows.append(
            "<tr>"
            + "".join(
                f"<td{' class=n' if i > 1 else ''}>{escape(str(cell))}</td>"
                for i, cell in enumerate(
                    (
                        env_label(e),
                        e.version or "-",
                        e.replicas,
                        money(e.allocation.per_month.value),
                        idle(e),
                        money(e.serving_per_month.value),
                        count(e.traffic.predictions_per_month),
                        money(e.cost_per_1000.at_capacity.value),
                        money(e.cost_per_1000.at_traffic.value),
                    )
                )
            )
            + "</tr>"
        )
    head = "".join(
        f"<th>{escape(h)}</th>"
        for h in (
            "env",
            "version",
            "replicas",
            f"allocated ({cur}/mo)",
            "idle",
            f"charged ({cur}/mo)",
            "predictions/mo",
            "per 1,000 @capacity",
            "per 1,000 @traffic",
        )
    )
    return f"<h3>Per environment</h3><table><tr>{head}</tr>{''.join(rows)}</table>"


def _versions_table(doc: Report) -> str:
    rows = []
    for v in doc.versions:
        steps = "".join(
            f"<li><span class='none'>{escape(short_time(e.time))}</span> "
            f"<b>{escape(e.action)}</b>{escape(' ' + e.env if e.env else '')}"
            + (f" — {escape(e.summary)}" if e.summary and e.action != "package" else "")
            + f" <span class='none'>by {escape(e.actor)}</span></li>"
            for e in v.journey
        )
        rows.append(
            f"<tr><td><b>{escape(v.version)}</b></td>"
            f"<td>{escape(', '.join(v.live_in) or '-')}</td>"
            f"<td><code>{escape(v.digest[:19])}</code></td>"
            f"<td><ul class='journey'>{steps}</ul></td></tr>"
        )
    return (
        "<table><tr><th>version</th><th>live in</th><th>digest</th><th>journey</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _triggers_table(doc: Report) -> str:
    if not doc.triggers:
        return "<section><h2>Triggers</h2><p class='none'>no trigger fired</p></section>"
    rows = "".join(
        f"<tr><td>{escape(short_time(t.time))}</td><td>{escape(t.action)}</td>"
        f"<td>{escape(t.version or '')}</td><td>{escape(t.env or '')}</td>"
        f"<td>{escape(t.summary)}</td></tr>"
        for t in doc.triggers
    )
    return (
        "<section><h2>Triggers</h2><table><tr><th>time</th><th>event</th><th>version</th>"
        f"<th>env</th><th>what</th></tr>{rows}</table></section>"
    )


def _kpi_section(doc: Report) -> str:
    if not doc.kpis:
        return ""
    charts = []
    for metric, records in doc.kpis.items():
        charts.append(
            _figure(
                f"KPI {metric}",
                svg.line_chart(
                    "kpi",
                    metric,
                    [short_time(r.at) for r in records],
                    [(metric, [r.value for r in records])],
                ),
            )
        )
    return (
        "<section><h2>Business KPIs</h2><div class='grid'>" + "".join(charts) + "</div></section>"
    )
