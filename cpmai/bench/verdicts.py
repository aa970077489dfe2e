"""SLO checks and baseline comparisons: the verdicts a CI job acts on.

An SLO is `p99_ms=20,error_rate=0.01,throughput_min=1000`; an unknown metric is an error
(exit 2), never silently ignored. A regression against a baseline needs both a ratio over the
threshold (default 1.10) and a significant difference (one-sided Mann–Whitney U, p < 0.05, on
the per-second windows), as asv does; runs from machines with different fingerprints are not
compared unless forced.
"""

from __future__ import annotations

from typing import Any

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


def check_slo(levels: list[dict[str, Any]], slo: dict[str, float]) -> list[dict[str, Any]]:
    """One check per level and metric (the verdicts are `cpmai.stats.check_slo`'s)."""
    checks = []
    for level in levels:
        values = slo_measures(level["latency_ms"], level["error_rate"], level["throughput_rps"])
        for verdict in verdicts_of(values, slo):
            checks.append(
                {
                    "level": level["label"],
                    "metric": verdict.metric,
                    "threshold": verdict.threshold,
                    "op": verdict.op,
                    "measured": verdict.measured,
                    "passed": verdict.passed,
                }
            )
    return checks


def compare(
    current: dict[str, Any], baseline: dict[str, Any], *, threshold: float, force: bool
) -> dict[str, Any]:
    """Compare matching load levels of two runs: p99 and throughput."""
    mine = current["machine"]["fingerprint"]
    theirs = (baseline.get("machine") or {}).get("fingerprint")
    if mine != theirs and not force:
        raise UsageError(
            f"the baseline was measured on another machine (fingerprint {theirs}: "
            f"{(baseline.get('machine') or {}).get('cpu')}) than this run ({mine}); figures "
            "from different machines do not compare",
            hint="rerun the baseline here, or pass --force to compare anyway",
        )
    try:
        by_key = {level["key"]: level for level in baseline["levels"]}
        rows = [
            _compare_level(level, by_key[level["key"]], threshold)
            for level in current["levels"]
            if level["key"] in by_key
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"the baseline is not a complete benchmark result: {exc!r}") from None
    return {
        "threshold": threshold,
        "alpha": ALPHA,
        "fingerprints_match": mine == theirs,
        "comparisons": rows,
        "regressed": any(r["regressed"] for r in rows),
    }


def _compare_level(level: dict[str, Any], base: dict[str, Any], threshold: float) -> dict[str, Any]:
    out: dict[str, Any] = {"level": level["label"], "checks": []}
    for metric, higher_is_worse in (("p99_ms", True), ("throughput_rps", False)):
        now_values = [w[metric] for w in level["windows"] if w.get(metric) is not None]
        then_values = [w[metric] for w in base["windows"] if w.get(metric) is not None]
        now = level["latency_ms"]["p99_ms"] if metric == "p99_ms" else level["throughput_rps"]
        then = base["latency_ms"]["p99_ms"] if metric == "p99_ms" else base["throughput_rps"]
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
        out["checks"].append(
            {
                "metric": metric,
                "baseline": then,
                "current": now,
                "ratio": round(ratio, 4),
                "p_value": p_value,
                "regressed": ratio > threshold and significant,
                "untested": p_value is None and ratio > threshold,
                "note": note,
            }
        )
    out["regressed"] = any(c["regressed"] for c in out["checks"])
    return out
