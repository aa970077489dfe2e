"""The benchmark result as files for CI: JUnit XML, Markdown, CSV."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree as ET

if TYPE_CHECKING:
    from cpmai.bench.result import BenchResult, LevelResult

LEVEL_COLUMNS = (
    "label",
    "mode",
    "concurrency",
    "rate",
    "batch_size",
    "requests",
    "error_rate",
    "throughput_rps",
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
    "stable",
)


def _cell(level: LevelResult, column: str) -> Any:
    if column in type(level.latency_ms).model_fields:
        return getattr(level.latency_ms, column)
    return getattr(level, column)


def junit(result: BenchResult) -> str:
    """One <testcase> per SLO check (and per baseline comparison), <failure> when breached."""
    checks = result.slo.checks if result.slo else []
    comparisons = result.baseline.comparisons if result.baseline else []
    suite = ET.Element("testsuite", name="cpmai bench")
    failures = 0
    for check in checks:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"slo.{check.level}",
            name=f"{check.metric} {check.op} {check.threshold:g}",
        )
        if not check.passed:
            failures += 1
            ET.SubElement(
                case,
                "failure",
                message=f"{check.metric} = {check.measured} (needs {check.op} {check.threshold:g})",
                type="SloBreach",
            )
    for row in comparisons:
        for item in row.checks:
            assert result.baseline is not None
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"baseline.{row.level}",
                name=f"{item.metric} ratio <= {result.baseline.threshold:g}",
            )
            if item.regressed:
                failures += 1
                ET.SubElement(
                    case,
                    "failure",
                    message=f"{item.metric}: {item.current} vs {item.baseline} "
                    f"(ratio {item.ratio}, p = {item.p_value:.3g})",
                    type="Regression",
                )
    suite.set("tests", str(len(suite)))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def markdown(result: BenchResult) -> str:
    """A summary for a pull-request comment or a CI step summary."""
    target = result.target
    what = f"{target.name} {target.version or ''}".strip() if target.name else target.url
    verdict = "❌ threshold breached" if result.breached else "✅ passed"
    lines = [
        f"### cpmai bench: {what} ({target.kind}) — {verdict}",
        "",
        f"{result.time} · {result.machine.cpu}, {result.machine.cores} cores, "
        f"Python {result.machine.python}",
        "",
        "| level | requests | req/s | p50 ms | p95 ms | p99 ms | p99.9 ms | max ms | errors "
        "| stable |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for level in result.levels:
        lat = level.latency_ms
        lines.append(
            f"| {level.label} | {level.requests:,} | {level.throughput_rps:,.0f} | "
            f"{_ms(lat.p50_ms)} | {_ms(lat.p95_ms)} | {_ms(lat.p99_ms)} | "
            f"{_ms(lat.p999_ms)} | {_ms(lat.max_ms)} | {level.error_rate:.2%} | "
            f"{'yes' if level.stable else 'no'} |"
        )
    if result.slo:
        lines += ["", "| SLO check | level | measured | ok |", "| --- | --- | --- | --- |"]
        for check in result.slo.checks:
            lines.append(
                f"| {check.metric} {check.op} {check.threshold:g} | {check.level} | "
                f"{check.measured} | {'✅' if check.passed else '❌'} |"
            )
    if result.capacity:
        cap = result.capacity
        lines += ["", f"**Capacity** at the SLO: {cap.level or 'none'} "
                  f"({cap.throughput_rps or 0:,.0f} req/s). {cap.note}"]  # fmt: skip
    if result.baseline:
        base = result.baseline
        lines += [
            "",
            f"Baseline `{base.file}` (regression: ratio > {base.threshold:g} and p < "
            f"{base.alpha}):",
            "",
            "| level | metric | baseline | now | ratio | p | regressed |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in base.comparisons:
            for item in row.checks:
                p = "-" if item.p_value is None else f"{item.p_value:.3g}"
                verdict = "❌" if item.regressed else "✅"
                if item.untested:
                    verdict = "❔ untested (too few windows)"
                lines.append(
                    f"| {row.level} | {item.metric} | {item.baseline} | "
                    f"{item.current} | {item.ratio} | {p} | {verdict} |"
                )
    for warning in result.warnings:
        lines.append(f"\n> ⚠️ {warning}")
    return "\n".join(lines) + "\n"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def to_csv(result: BenchResult) -> str:
    """One row per level: its settings, throughput and latency percentiles."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(LEVEL_COLUMNS)
    for level in result.levels:
        writer.writerow([_cell(level, c) for c in LEVEL_COLUMNS])
    return buffer.getvalue()
