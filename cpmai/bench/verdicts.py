"""SLO checks and baseline comparisons: the verdicts a CI job acts on.

An SLO is `p99_ms=20,error_rate=0.01,throughput_min=1000`; an unknown metric is an error
(exit 2), never silently ignored. A regression against a baseline needs both a ratio over the
threshold (default 1.10) and a significant difference (one-sided Mann–Whitney U, p < 0.05, on
the per-second windows), as asv does; runs from machines with different fingerprints are not
compared unless forced.
"""

from __future__ import annotations

from cpmai.bench.result import (
    BenchResult,
    Comparison,
    LevelComparison,
    LevelResult,
    MetricComparison,
    SloCheck,
)
from cpmai.errors import UsageError
from cpmai.stats import SLO_LOWER_BOUNDS, SLO_UPPER_BOUNDS, slo_measures
from cpmai.stats import check_slo as verdicts_of

KNOWN = SLO_UPPER_BOUNDS + SLO_LOWER_BOUNDS
ALPHA = 0.05
MIN_WINDOWS = 4
"""With 3 windows a side, the smallest one-sided Mann–Whitney p is 0.05: never significant."""


def parse_slo(text: str) -> dict[str, float]:
    """`p99_ms=20,error_rate=0.01` → {"p99_ms": 20.0, "error_rate": 0.01}."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            raise UsageError(f"--slo {part!r}: expected METRIC=VALUE, e.g. p99_ms=20")
        if key not in KNOWN:
            raise UsageError(f"--slo: unknown metric {key!r} (known: {', '.join(KNOWN)})")
        try:
            number = float(value)
        except ValueError:
            raise UsageError(f"--slo {part!r}: {value!r} is not a number") from None
        if number != number or number < 0:
            raise UsageError(f"--slo {part!r}: expected a number >= 0")
        out[key] = number
    if not out:
        raise UsageError("--slo: no checks given (e.g. p99_ms=20,error_rate=0.01)")
    return out


def check_slo(levels: list[LevelResult], slo: dict[str, float]) -> list[SloCheck]:
    """One check per level and metric (the verdicts are `cpmai.stats.check_slo`'s)."""
    checks = []
    for level in levels:
        values = slo_measures(level.latency_ms.model_dump(), level.error_rate, level.throughput_rps)
        for verdict in verdicts_of(values, slo):
            checks.append(
                SloCheck(
                    level=level.label,
                    metric=verdict.metric,
                    threshold=verdict.threshold,
                    op=">=" if verdict.op == ">=" else "<=",
                    measured=verdict.measured,
                    passed=verdict.passed,
                )
            )
    return checks


def compare(
    current: BenchResult, baseline: BenchResult, *, threshold: float, force: bool, file: str
) -> Comparison:
    """Compare matching load levels of two runs (`file`: where the baseline was read from):
    p99 and throughput."""
    mine = current.machine.fingerprint
    theirs = baseline.machine.fingerprint
    if mine != theirs and not force:
        raise UsageError(
            f"the baseline was measured on another machine (fingerprint {theirs}: "
            f"{baseline.machine.cpu}) than this run ({mine}); figures "
            "from different machines do not compare",
            hint="rerun the baseline here, or pass --force to compare anyway",
        )
    by_key = {level.key: level for level in baseline.levels}
    rows = [
        _compare_level(level, by_key[level.key], threshold)
        for level in current.levels
        if level.key in by_key
    ]
    return Comparison(
        file=file,
        threshold=threshold,
        alpha=ALPHA,
        fingerprints_match=mine == theirs,
        comparisons=rows,
        regressed=any(r.regressed for r in rows),
    )


def _figure(level: LevelResult, metric: str) -> float | None:
    return level.latency_ms.p99_ms if metric == "p99_ms" else level.throughput_rps


def _compare_level(level: LevelResult, base: LevelResult, threshold: float) -> LevelComparison:
    checks: list[MetricComparison] = []
    for metric, higher_is_worse in (("p99_ms", True), ("throughput_rps", False)):
        now_values = [v for w in level.windows if (v := getattr(w, metric)) is not None]
        then_values = [v for w in base.windows if (v := getattr(w, metric)) is not None]
        now, then = _figure(level, metric), _figure(base, metric)
        if not now or not then:
            continue
        ratio = now / then if higher_is_worse else then / now
        p_value = None
        if len(now_values) >= MIN_WINDOWS and len(then_values) >= MIN_WINDOWS:
            from scipy.stats import mannwhitneyu

            side = "greater" if higher_is_worse else "less"
            p_value = float(mannwhitneyu(now_values, then_values, alternative=side).pvalue)
        significant = p_value is not None and p_value < ALPHA
        note = ""
        if p_value is None:
            note = f"fewer than {MIN_WINDOWS} one-second windows: no test"
            if ratio > threshold:  # never a silent pass: the run was too short to tell
                note += f" (measure for at least {MIN_WINDOWS + 1} s to test this ratio)"
        checks.append(
            MetricComparison(
                metric="p99_ms" if metric == "p99_ms" else "throughput_rps",
                baseline=then,
                current=now,
                ratio=round(ratio, 4),
                p_value=p_value,
                regressed=ratio > threshold and significant,
                untested=p_value is None and ratio > threshold,
                note=note,
            )
        )
    return LevelComparison(
        level=level.label, checks=checks, regressed=any(c.regressed for c in checks)
    )
