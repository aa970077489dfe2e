"""What one scheduled check found: the monitor's verdict as alert findings, keyed by (kind,
feature), and which kinds the check could judge at all (a kind it could not judge — too few
requests, no labels yet — neither fires nor resolves)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cpmai.manifest_watch import AlertKind

if TYPE_CHECKING:
    from cpmai.monitor.result import MonitorResult


@dataclass(frozen=True)
class Finding:
    """A bound one check found breached."""

    kind: AlertKind
    feature: str | None
    summary: str
    details: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "feature": self.feature, "summary": self.summary}


@dataclass
class Verdict:
    """Findings and what one check judged: kinds (`slo`), or one key of a kind (`slo/p99_ms`)
    when the check could judge only some of its bounds."""

    findings: list[Finding]
    judged: set[str]

    def judges(self, kind: str, feature: str | None) -> bool:
        """Whether this check could tell if `kind` (about `feature`) holds."""
        return kind in self.judged or f"{kind}/{feature}" in self.judged

    def kinds_judged(self) -> set[str]:
        return {j.split("/", 1)[0] for j in self.judged}


def verdict_of(result: MonitorResult, *, min_requests: int) -> Verdict:
    """The alert findings in a monitor result (the same bounds `cpmai monitor` alerts on, made
    finer: one finding per SLO metric, the error rate apart as `errors`)."""
    findings: list[Finding] = []
    judged: set[str] = {"age", "check"}
    by_kind = {a.kind: a for a in result.alerts}
    if result.drift.status != "not enough data":
        judged.add("drift")
        if "drift" in by_kind:
            alert = by_kind["drift"]
            findings.append(Finding("drift", None, alert.message, dict(alert.evidence)))
    quality = result.model_quality
    if quality is not None and quality.passed is not None:
        judged.add("quality")
        if quality.passed is False:
            alert = by_kind["quality"]
            findings.append(Finding("quality", quality.metric, alert.message, dict(alert.evidence)))
    if result.traffic.requests >= min_requests:
        for check in result.slo.checks:
            kind: AlertKind = "errors" if check.metric == "error_rate" else "slo"
            if check.passed is not None:  # a p99 with no successful request is not judged
                judged.add(f"{kind}/{check.metric}")
            if check.passed is not False:
                continue
            summary = (
                f"error rate {check.measured:.4g} > {check.bound:g}"
                if kind == "errors"
                else f"SLO missed: {check.metric} {check.measured:g} > {check.bound:g}"
            )
            details = {**check.to_json(), "requests": result.traffic.requests}
            findings.append(Finding(kind, check.metric, f"{summary} ({details['requests']:,} "
                                    f"requests)", details))  # fmt: skip
    if "age" in by_kind:
        alert = by_kind["age"]
        findings.append(Finding("age", None, alert.message, dict(alert.evidence)))
    if result.error is not None:
        findings.append(Finding("check", "log", result.error.message))
    labels_error = getattr(result, "labels_error", None)
    if labels_error:
        findings.append(Finding("check", "labels", labels_error))
    return Verdict(findings, judged)


def failed_check(message: str) -> Verdict:
    """A check that could not be made: one `check` finding, nothing else judged."""
    return Verdict([Finding("check", None, message)], {"check"})
