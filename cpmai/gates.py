"""What must hold before a version may go live in an environment.

Each gate gives a `GateResult` with the measured value and the threshold, pass or fail; all of
them are recorded in the ledger (one `gate` event) whatever the outcome, so the question "with
which gate results did this version go live?" has an answer later.

Gates: metrics on the holdout data, a short in-process latency benchmark, the artifact's size,
the presence of its signature, environment and model card, and approvals (with separation of
duties: the deployer's own approval does not count).
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from cpmai.home import home_of_artifact
from cpmai.stats import compare, score

if TYPE_CHECKING:
    from pathlib import Path

    from cpmai.artifacts import Artifact
    from cpmai.manifest import LatencyGate, Manifest
    from cpmai.replay import State
    from cpmai.runtime.predictor import Predictor


@dataclass
class GateResult:
    gate: str
    """e.g. "metric:accuracy", "latency:p99_ms", "size", "approvals"."""
    passed: bool
    measured: Any
    threshold: Any
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        mark = "✓" if self.passed else "✗"
        text = f"{mark} {self.gate}: {_fmt(self.measured)} (needs {_fmt(self.threshold)})"
        return f"{text} — {self.note}" if self.note else text


@dataclass
class GateReport:
    results: list[GateResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> list[GateResult]:
        return [r for r in self.results if not r.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "seconds": round(self.seconds, 3),
            "results": [r.to_dict() for r in self.results],
        }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def check(
    artifact: Artifact,
    manifest: Manifest,
    env: str,
    state: State,
    *,
    actor: str,
    predictor: Predictor | None = None,
    approvals: bool = True,
) -> GateReport:
    """Run every gate `manifest` configures for `env` on `artifact` (already verified); the
    approvals gate only if `approvals`."""
    start = time.perf_counter()
    report = GateReport()
    report.results += _presence(artifact)
    gates = manifest.gates
    if gates.max_size_mb is not None:
        size_mb = int(artifact.meta["size_bytes"]) / 1_000_000
        report.results.append(
            GateResult(
                "size_mb", size_mb <= gates.max_size_mb, round(size_mb, 3), gates.max_size_mb
            )
        )
    if gates.metrics or gates.latency:
        if predictor is None:
            from cpmai.runtime.predictor import Predictor

            predictor = Predictor.from_artifact(artifact)
        if gates.metrics:
            report.results += metric_gates(artifact, manifest, predictor)
        if gates.latency:
            report.results += latency_gates(artifact, gates.latency, predictor)
    if approvals:
        report.results += approval_gates(
            manifest, state, artifact.name, artifact.version, env, actor,
            home=home_of_artifact(artifact.path).root,
        )  # fmt: skip
    report.seconds = time.perf_counter() - start
    return report


def _presence(artifact: Artifact) -> list[GateResult]:
    out = []
    for gate, rel in (
        ("signature", "signature.json"),
        ("environment", "environment.json"),
        ("model_card", "MODEL_CARD.md"),
    ):
        present = rel in artifact.meta.get("files", {})
        out.append(GateResult(gate, present, "present" if present else "missing", "present"))
    if out[0].passed and not artifact.signature.inputs:
        out[0] = GateResult("signature", False, "no inputs", "present")
    return out


# --- metrics -----------------------------------------------------------------------------------


def metric_gates(artifact: Artifact, manifest: Manifest, predictor: Predictor) -> list[GateResult]:
    """The metric thresholds, measured on the artifact's copy of the holdout data."""
    measured = evaluate(artifact, manifest, predictor, list(manifest.gates.metrics))
    rows = int(measured.pop("_rows"))
    return [
        GateResult(
            f"metric:{metric}",
            compare(measured[metric], threshold),
            round(measured[metric], 6),
            threshold,
            note=f"on {rows:,} holdout rows",
        )
        for metric, threshold in manifest.gates.metrics.items()
    ]


def evaluate(
    artifact: Artifact, manifest: Manifest, predictor: Predictor, metrics: list[str]
) -> dict[str, float]:
    """The named metrics of the served runtime on the holdout data (plus `_rows`)."""
    from cpmai.errors import UsageError
    from cpmai.runtime.data import read_table

    holdout_rel = [rel for rel in artifact.meta["files"] if rel.startswith("data/holdout.")]
    target = manifest.data.target
    if not holdout_rel or not target:
        raise UsageError("metric gates need data.holdout and data.target in the manifest")
    frame = read_table(artifact.path / holdout_rel[0])
    if frame.empty:
        raise UsageError("the holdout data has no rows: metric gates cannot be computed")
    if target not in frame.columns:
        raise UsageError(f"the holdout data has no column {target!r} (data.target)")
    truth = frame[target].to_numpy()
    columns = {name: frame[name].tolist() for name in predictor.signature.names}
    want_proba = any(m in ("roc_auc", "log_loss") for m in metrics)
    labels, probabilities = predictor.run(columns, want_proba)
    values = {m: score(m, truth, labels, probabilities, predictor.classes) for m in metrics}
    return {**values, "_rows": float(len(frame))}


# --- latency -----------------------------------------------------------------------------------


def latency_gates(artifact: Artifact, gate: LatencyGate, predictor: Predictor) -> list[GateResult]:
    """A short in-process benchmark (`cpmai bench`'s engine): `concurrency` threads scoring
    single reference rows for `duration_s` after a warm-up of 0.2 s; percentiles against the
    bounds."""
    from cpmai.bench.inprocess import make_batches, run_inprocess
    from cpmai.bench.subjects import artifact_rows

    names = predictor.signature.names
    result = run_inprocess(
        predictor.run,
        make_batches(artifact_rows(artifact, names), 1),
        concurrency=gate.concurrency,
        warmup_s=0.2,
        duration_s=gate.duration_s,
    )
    stats = result.latency.summary_ms()
    out = []
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        bound = getattr(gate, key)
        value = stats[key]
        if bound is not None and value is not None:
            out.append(
                GateResult(
                    f"latency:{key}",
                    value <= bound and not result.errors,
                    round(value, 4),
                    f"<= {bound}",
                    note=f"{result.requests:,} single-row calls, concurrency {gate.concurrency}"
                    + (f", {sum(result.errors.values())} failed" if result.errors else ""),
                )
            )
    return out


# --- approvals ---------------------------------------------------------------------------------


def may_approve(manifest: Manifest, env: str, actor: str) -> bool:
    """Whether `actor` is one of `env`'s approvers (anyone, when none are listed)."""
    patterns = manifest.environments[env].approvers
    return not patterns or any(fnmatch.fnmatchcase(actor, p) for p in patterns)


def approval_gates(
    manifest: Manifest,
    state: State,
    name: str,
    version: str,
    env: str,
    actor: str,
    home: Path | None = None,
) -> list[GateResult]:
    """Approvals of `version` for `env` by others than `actor`; where `env` requires signed acts,
    only those whose signature the allowed-signers file (in `home`) accepts."""
    needed = manifest.gates.approvals.get(env, 0)
    if needed == 0:
        return []
    approvers = state.approvers(name, version, env)
    unsigned: list[str] = []
    if env in manifest.governance.require_signatures:
        from cpmai import signatures

        signers = signatures.signers_file(home) if home is not None else None
        events = state.approvals.get((name, version, env), [])
        valid = {
            e.actor
            for e in events
            if signers is not None and signatures.verify(e.to_dict(), signers) is None
        }
        unsigned = [a for a in approvers if a not in valid]
        approvers = [a for a in approvers if a in valid]
    counted = [a for a in approvers if a != actor and may_approve(manifest, env, a)]
    note = f"approved by {', '.join(counted)}" if counted else "no approvals yet"
    if unsigned:
        note += f"; not counted, unsigned or not verified: {', '.join(unsigned)}"
    if actor in approvers:
        note += f"; {actor}'s own approval does not count for their deploy (separation of duties)"
    return [GateResult("approvals", len(counted) >= needed, len(counted), f">= {needed}", note)]
