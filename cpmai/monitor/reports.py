"""`cpmai monitor --markdown`: the result as a short Markdown summary (a scheduled CI job's step
summary or an issue comment)."""

from __future__ import annotations

from typing import Any

from cpmai.monitor.notes import lost_line, synthetic_line
from cpmai.monitor.result import MonitorResult


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(result: MonitorResult) -> str:
    """The result in Markdown: verdict, alerts, traffic, SLO, resources, drift, quality, age."""
    period, traffic, drift = result.period, result.traffic, result.drift
    alerts = result.alerts
    unreadable = result.log.unreadable_lines
    verdict = "⛔ log unreadable" if unreadable else ("🔴 alerts" if alerts else "🟢 within bounds")
    lines = [
        f"## cpmai monitor: {result.name} @ {result.env} — {verdict}",
        "",
        f"Version **{result.version}** (live: {result.live_version or 'none'}), "
        f"{period.since} → {period.until}, windows of {period.window_s:g} s.",
        "",
    ]
    if alerts:
        lines += ["| alert | trigger | detail |", "| --- | --- | --- |"]
        lines += [f"| {a.kind} | {a.trigger} | {a.message} |" for a in alerts]
        lines.append("")
    lat = traffic.latency_ms
    lines += [
        "| requests | req/s | error rate | p50 ms | p95 ms | p99 ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {traffic.requests:,} | {_num(traffic.requests_per_s)} | "
        f"{_num(traffic.error_rate)} | {_num(lat.p50_ms)} | {_num(lat.p95_ms)} | "
        f"{_num(lat.p99_ms)} |",
        "",
    ]
    if unreadable:
        message = result.error.message if result.error else f"{unreadable:,} unreadable line(s)"
        lines += [f"⛔ {message}.", ""]
    lost = lost_line(result.log.lost)
    if lost:
        lines += [f"⚠️ {lost}.", ""]
    synthetic = synthetic_line(result.log.synthetic)
    if synthetic:
        lines += [synthetic[0].upper() + synthetic[1:] + ".", ""]
    checks = result.slo.checks
    if checks:
        marks = ", ".join(
            f"{'✅' if c.passed else ('❌' if c.passed is False else '–')} "
            f"{c.metric} {_num(c.measured)} (≤ {c.bound:g})"
            for c in checks
        )
        lines += [f"SLO: {marks}", ""]
    res = traffic.resources
    if res:
        lines += [
            f"Resources: CPU mean {res.cpu_percent_mean:.1f}% (peak "
            f"{res.cpu_percent_peak:.1f}%), RSS mean {res.rss_mb_mean:.0f} MiB (peak "
            f"{res.rss_mb_peak:.0f} MiB), {res.processes} process(es).",
            "",
        ]
    lines += [
        f"Data drift: **{drift.status}**"
        + (f" ({len(drift.drifted)}/{drift.judged} features)" if drift.judged else ""),
        "",
        "| feature | method | statistic | p-value | PSI | status |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    rows = [(f.feature, f) for f in drift.features]
    if drift.prediction:
        rows.append(("(prediction)", drift.prediction))
    for feature, f in rows:
        lines.append(
            f"| {feature} | {f.method} | {_num(f.statistic)} | {_num(f.p_value)} "
            f"| {_num(f.psi)} | {f.status} |"
        )
    texts = [(f, f.text) for f in drift.features if f.text is not None]
    if texts:
        lines += [
            "",
            "| text feature | mean length (ref) | length test | unknown words (expected) "
            "| token distance (chance) | status |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for f, text in texts:
            length, unknown, tokens = text.length, text.unknown_words, text.token_distribution
            by = ", ".join(text.drifted_by)
            lines.append(
                f"| {f.feature} | {_num(length.mean)} ({_num(length.reference_mean)}) "
                f"| {length.method} {_num(length.statistic)} "
                f"| {_num(unknown.share)} ({_num(unknown.expected_share)}) "
                f"| {_num(tokens.statistic)} ({_num(tokens.chance)}) "
                f"| {f.status}{f' ({by})' if by else ''} |"
            )
    quality = result.model_quality
    if quality:
        metrics = ", ".join(f"{k} {_num(v, 4)}" for k, v in quality.metrics.items())
        lines += ["", f"Model quality on {quality.labelled_rows:,} labelled rows: {metrics}."]
    age = result.age
    lines += ["", f"Age: {age.days:.1f} days since packaging (max {age.max_days or '–'})."]
    return "\n".join(lines) + "\n"
