"""What a check found, as Prometheus gauges: the file (`watch/NAME/ENV/gauges.prom`) the
watcher writes after each check and the environment's server appends to its /metrics
(`cpmai.serving.metrics.WatchGauges`), so one scrape carries the drift, quality and alert state
beside the request counters.

Text exposition format 0.0.4, every family a gauge with `# HELP` and `# TYPE` lines. Every
series carries `model` and `env`; those about the focus version (drift, data and model quality,
its packaging time) carry `version` too. What was not judged (too few rows, no labels, no
traffic) is left out rather than written as NaN or 0: a rule then has nothing to compare.

    cpmai_feature_drift{feature,method}            the drift statistic (drift.py): the distance
                                                   for wasserstein / jensen_shannon, KS D, chi²
    cpmai_feature_drift_p_value{feature,method}    ks and chi2 only
    cpmai_feature_drifted{feature}                 0/1, the verdict
    cpmai_drift_share                              share of judged features that drifted
    cpmai_dataset_drift                            0/1, share ≥ monitoring.drift.share
    cpmai_prediction_drift{method}, cpmai_prediction_drifted   the predictions' distribution
    cpmai_model_quality{metric}                    every metric computed from labels
    cpmai_model_quality_labelled_rows              the rows they were computed on
    cpmai_data_quality_missing_share{feature}      share of rows without a value
    cpmai_data_quality_out_of_range_share{feature} share outside the reference range (numbers)
    cpmai_slo_measured{metric}, cpmai_slo_bound{metric}   the SLO over the check's window
    cpmai_alerts_firing{kind}                      the watcher's open alerts by kind (0 if none)
    cpmai_version_packaged_timestamp_seconds       when the focus version was packaged
    cpmai_watch_last_check_timestamp_seconds       when the check ran
    cpmai_watch_check_duration_seconds             how long it took
"""

from __future__ import annotations

import math
from pathlib import Path

from cpmai.clock import epoch
from cpmai.fsutil import write_atomic
from cpmai.manifest_watch import ALERT_KINDS
from cpmai.monitor.result import MonitorResult

Labels = dict[str, str]
Sample = tuple[Labels, float | None]


class _Exposition:
    """Gauge families in the order added, each written with its HELP and TYPE lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, help_text: str, samples: list[Sample]) -> None:
        kept = [(labels, float(v)) for labels, v in samples if v is not None and math.isfinite(v)]
        if not kept:
            return
        self.lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} gauge")
        for labels, value in kept:
            pairs = ",".join(f'{key}="{_escape_label(text)}"' for key, text in labels.items())
            self.lines.append(f"{name}{{{pairs}}} {value!r}")

    def text(self) -> str:
        return "".join(f"{line}\n" for line in self.lines)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _flag(value: bool | None) -> float | None:
    return None if value is None else float(value)


def render_gauges(
    result: MonitorResult, *, checked_at: float, check_seconds: float, firing: dict[str, int]
) -> str:
    """The check's findings as Prometheus text exposition (gauges only; see the module).

    `checked_at`: when the check ran (epoch seconds); `check_seconds`: how long it took;
    `firing`: the open alerts by kind (every kind of `monitoring.alerts` is written, 0 when
    absent from `firing`)."""
    env: Labels = {"model": result.name, "env": result.env}
    focus: Labels = {**env, "version": result.version}
    out = _Exposition()
    drift = result.drift
    judged = [f for f in drift.features if f.drifted is not None]
    out.family(
        "cpmai_feature_drift",
        "Drift statistic of an input against the reference data: the distance (wasserstein, "
        "jensen_shannon: drift at >= monitoring.drift.threshold), or the test statistic (ks, "
        "chi2: judged by p-value).",
        [({**focus, "feature": f.feature, "method": f.method}, f.statistic) for f in judged],
    )
    out.family(
        "cpmai_feature_drift_p_value",
        "p-value of an input's drift test (ks, chi2: drift below monitoring.drift.p_value).",
        [({**focus, "feature": f.feature, "method": f.method}, f.p_value) for f in judged],
    )
    out.family(
        "cpmai_feature_drifted",
        "Whether an input drifted (1) or not (0); inputs with too few rows are left out.",
        [({**focus, "feature": f.feature}, _flag(f.drifted)) for f in judged],
    )
    out.family(
        "cpmai_drift_share",
        "Share of the judged inputs that drifted.",
        [(focus, drift.share)],
    )
    dataset = None if drift.status == "not enough data" else drift.status == "drift"
    out.family(
        "cpmai_dataset_drift",
        "Whether the dataset drifted (1): the drifted share reached monitoring.drift.share.",
        [(focus, _flag(dataset))],
    )
    prediction = drift.prediction
    if prediction is not None and prediction.drifted is not None:
        out.family(
            "cpmai_prediction_drift",
            "Drift statistic of the predictions against the reference data's (method as for "
            "inputs).",
            [({**focus, "method": prediction.method}, prediction.statistic)],
        )
        out.family(
            "cpmai_prediction_drifted",
            "Whether the predictions' distribution drifted (1) or not (0).",
            [(focus, _flag(prediction.drifted))],
        )
    quality = result.model_quality
    if quality is not None:
        out.family(
            "cpmai_model_quality",
            "Model quality from the labels matched to the window's predictions, by metric.",
            [({**focus, "metric": m}, v) for m, v in sorted(quality.metrics.items())],
        )
        out.family(
            "cpmai_model_quality_labelled_rows",
            "Rows with a label that model quality was computed on.",
            [(focus, float(quality.labelled_rows))] if quality.metrics else [],
        )
    data = result.data_quality
    out.family(
        "cpmai_data_quality_missing_share",
        "Share of the window's rows where an input had no value.",
        [({**focus, "feature": q.feature}, q.missing_share) for q in data],
    )
    out.family(
        "cpmai_data_quality_out_of_range_share",
        "Share of the window's rows where a numeric input lay outside the reference range.",
        [({**focus, "feature": q.feature}, q.out_of_range_share) for q in data],
    )
    checks = result.slo.checks
    out.family(
        "cpmai_slo_measured",
        "An SLO metric over the check's window (p50_ms, p95_ms, p99_ms: milliseconds, of "
        "successful requests; error_rate: share of requests answered 4xx or 5xx).",
        [({**env, "metric": c.metric}, c.measured) for c in checks],
    )
    out.family(
        "cpmai_slo_bound",
        "An SLO bound from the manifest (same unit as cpmai_slo_measured).",
        [({**env, "metric": c.metric}, c.bound) for c in checks],
    )
    kinds = [*ALERT_KINDS, *sorted(k for k in firing if k not in ALERT_KINDS)]
    out.family(
        "cpmai_alerts_firing",
        "The watcher's open (firing) alerts, by kind.",
        [({**env, "kind": kind}, float(firing.get(kind, 0))) for kind in kinds],
    )
    out.family(
        "cpmai_version_packaged_timestamp_seconds",
        "When the focus version was packaged (its age: time() minus this).",
        [(focus, _packaged(result))],
    )
    out.family(
        "cpmai_watch_last_check_timestamp_seconds",
        "When the watcher's last check ran (Unix time).",
        [(env, checked_at)],
    )
    out.family(
        "cpmai_watch_check_duration_seconds",
        "How long the watcher's last check took.",
        [(env, check_seconds)],
    )
    return out.text()


def _packaged(result: MonitorResult) -> float | None:
    try:
        return epoch(result.age.packaged)
    except ValueError:
        return None


def write_gauges(path: Path, text: str) -> None:
    """Write the gauges file atomically (a scrape reads the old file or the new one, never half
    of one); its folder is made if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode())
