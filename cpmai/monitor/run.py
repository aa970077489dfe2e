"""`cpmai monitor`: what an environment served over a period, window by window, and whether it
still meets its bounds.

The focus version (`--version`, else the one live at the end of the period, else the last one
that was live there, else the one in the newest log line) gives the signature, the reference
data and — unless a manifest file is given — the monitoring settings. Traffic, errors and
latency cover every version in the period; drift, data quality and model quality cover the
focus version's rows, compared with its own reference data.

Every task and input kind is judged: a regression model's predictions drift like a numeric
feature (KS / Wasserstein) and its quality is MAE, RMSE, R² and MAPE; free-text inputs drift by
length, unknown words and token distribution (`cpmai.monitor.textdrift`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cpmai.clock import epoch, iso
from cpmai.errors import ExitCode, UsageError
from cpmai.home import Home
from cpmai.manifest import LabelsQuery
from cpmai.monitor import drift as drift_mod
from cpmai.monitor.quality import Labels, below_bound, data_quality, model_quality, read_labels
from cpmai.monitor.result import (
    Age,
    Alert,
    DriftSummary,
    ErrorInfo,
    LogSummary,
    ModelQuality,
    MonitorResult,
    Period,
    PeriodDrift,
    SloResult,
    TrafficSummary,
    Unreadable,
    Window,
    WindowQuality,
)
from cpmai.monitor.subject import (
    Profiles,
    Subject,
    choose_version,
    load_subject,
    newest_logged_version,
    reference_profiles,
)
from cpmai.monitor.summaries import (
    lost_of,
    per_version,
    resource_summary,
    slo_checks,
    synthetic_of,
    traffic_fields,
    without_spans,
)
from cpmai.monitor.textdrift import TextComparison, TextDrift, TextProfile
from cpmai.predlog.reader import Traffic, read_resources, read_traffic

if TYPE_CHECKING:
    from cpmai.manifest import Manifest
    from cpmai.predlog.parts import IndexMemo

__all__ = ["MonitorResult", "monitor"]

MAX_WINDOWS = 2000


def monitor(
    home: Path,
    name: str,
    env: str,
    *,
    window_s: float = 3600.0,
    since: float | None = None,
    until: float | None = None,
    version: str | None = None,
    manifest: Manifest | None = None,
    labels: Path | LabelsQuery | None = None,
    now: float | None = None,
    use_cache: bool = True,
    include_synthetic: bool = False,
    memo: IndexMemo | None = None,
    drift_rows: int | None = None,
) -> MonitorResult:
    """Read the period's log and samples and judge them. Records nothing (triggers fire with
    `cpmai.monitor.triggers.respond`).

    Synthetic requests (load tests: `cpmai.serving.origin`) are counted apart and judged only
    with `include_synthetic`. `memo`: a long-running caller's (the watcher's) memory of the
    server's index, so that only what was logged since its last call is read. `drift_rows`:
    judge drift on at most that many rows a window, evenly spaced in their time order (the
    watcher's bound on a check's cost under heavy traffic); every row when None."""
    now = time.time() if now is None else now
    end = min(until, now) if until is not None else now
    if since is not None and since >= end:
        raise UsageError("--since must be before --until (and before now)")
    live_version, live_since, state = choose_version(home, name, env, until)
    folder = Home(home).env(name, env).logs
    focus = version or live_version or newest_logged_version(folder)
    if focus is None:
        raise UsageError(
            f"nothing to monitor: {name} was never live in {env!r} and it has no prediction log "
            f"there (deploy it with `cpmai deploy`, or score a file with `cpmai predict`)"
        )
    subject = load_subject(
        home, name, focus, manifest, live_since if focus == live_version else None, state
    )
    settings = subject.manifest.monitoring
    from_manifest = labels is None and settings.labels is not None
    if labels is None:
        labels = settings.labels
    traffic = read_traffic(
        folder,
        focus=subject.artifact.version,
        specs=subject.specs,
        output_kind=subject.output_kind,
        since=since,
        until=until,
        with_ids=labels is not None,
        output_categories=subject.classes,
        cache=Home(home).env(name, env).log_cache if use_cache else None,
        include_synthetic=include_synthetic,
        memo=memo,
    )
    start = since if since is not None else (float(traffic.time.min()) if traffic.requests else end)
    start = float(np.floor(start / window_s) * window_s) if since is None else start
    count = int(np.ceil(max(end - start, 1e-9) / window_s))
    if count > MAX_WINDOWS:
        raise UsageError(
            f"{count:,} windows of {window_s:g} s in the period: use a larger --window "
            f"(at most {MAX_WINDOWS:,} windows)"
        )
    profiles, output_profile, reference_rows = reference_profiles(subject)
    truth: Labels | None = None
    labels_error = None
    if labels is not None:
        try:
            truth = read_labels(labels, traffic, target=subject.artifact.manifest().data.target)
        except UsageError as exc:
            if not from_manifest:  # asked for on the command line: the command fails
                raise
            # the manifest's labels database down: drift, SLO and data quality still judged
            labels_error = f"monitoring.labels: {exc.message}"
    resources = read_resources(folder, since, until)
    if not include_synthetic:  # CPU and memory under a load test are not what customers use
        resources = without_spans(resources, traffic.synthetic_spans, settings.sample_interval_s)
    slo = subject.manifest.slo.model_dump(exclude_none=True)
    slo.pop("throughput_min", None)  # a capacity bound: `cpmai bench` checks it, traffic cannot
    interval = settings.sample_interval_s

    bounds = [(start + i * window_s, min(start + (i + 1) * window_s, end)) for i in range(count)]
    per_window, features = drift_all(
        traffic, subject, profiles, settings.drift, bounds, max_rows=drift_rows
    )
    windows = []
    for index, (low, high) in enumerate(bounds):
        fields = traffic_fields(traffic, low, high, last=index == count - 1)
        window = Window(
            **fields,
            resources=resource_summary(resources, low, high, interval),
            drift=drift_summary(per_window[index], settings.drift.share),
            slo=slo_checks(fields["error_rate"], fields["latency_ms"], slo),
        )
        if truth is not None:
            window.quality = _quality(subject, traffic, truth, low, high)
        windows.append(window)
    period = TrafficSummary(
        **traffic_fields(traffic, start, end, last=True),
        resources=resource_summary(resources, start, end, interval),
    )
    prediction = None
    if output_profile is not None:
        prediction = drift_mod.compare(
            output_profile,
            traffic.outputs,
            threshold=settings.drift.threshold,
            p_value=settings.drift.p_value,
            min_samples=settings.drift.min_samples,
            # a regression's outputs are numbers (float64, NaN missing), not codes
            vocab=None if subject.output_kind == "numeric" else traffic.vocab.get("__output__", []),
        ).document()
    model_doc = None
    if truth is not None:
        quality = _quality(subject, traffic, truth, start, end)
        model_doc = ModelQuality(
            **quality.model_dump(exclude_unset=True), join=truth.join, labels_given=truth.given
        )
    age_days = (now - epoch(subject.packaged)) / 86400
    result = MonitorResult(
        name=name,
        env=env,
        version=subject.artifact.version,
        live_version=live_version,
        period=Period(
            since=iso(start), until=iso(end), seconds=round(end - start, 3), window_s=window_s
        ),
        log=_log_summary(folder, traffic),
        age=Age(
            packaged=subject.packaged,
            live_since=subject.live_since,
            days=round(age_days, 3),
            max_days=settings.triggers.max_age_days,
        ),
        slo=SloResult(bounds=slo, checks=slo_checks(period.error_rate, period.latency_ms, slo)),
        traffic=period,
        windows=windows,
        drift=PeriodDrift(
            **drift_summary(features, settings.drift.share).model_dump(),
            features=[f.document() for f in features],
            prediction=prediction,
            reference_rows=reference_rows,
            version=subject.artifact.version,
        ),
        data_quality=data_quality(traffic, subject.specs, subject.inputs),
        model_quality=model_doc,
        **({"labels_error": labels_error} if labels_error else {}),
        settings=settings,
        alerts=[],
        trigger_run=None,
        error=None,
        exit_code=0,
    )
    result.alerts = alerts_of(result, subject.manifest)
    unreadable = unreadable_error(result)
    if unreadable is not None:
        # A log the monitor cannot read in full is damaged state that cpmai itself wrote: the
        # same class of failure as a torn ledger line, hence the integrity code (5), which
        # outranks 4 — not 2, which says the user's arguments or files were wrong.
        result.error = ErrorInfo(
            type="IntegrityError", message=unreadable[0], exit_code=int(ExitCode.INTEGRITY)
        )
    result.judge()
    return result


def _log_summary(folder: Path, traffic: Traffic) -> LogSummary:
    return LogSummary(
        folder=str(folder),
        files=traffic.files,
        bytes=traffic.bytes,
        requests_logged=traffic.requests,
        unreadable_lines=traffic.unreadable,
        unreadable=[
            Unreadable(file=file, offset=offset, reason=reason)
            for file, offset, reason in traffic.unreadable_at
        ],
        versions=per_version(traffic),
        synthetic=synthetic_of(traffic),
        lost=lost_of(traffic),
    )


def unreadable_error(result: MonitorResult) -> tuple[str, str] | None:
    """(message, hint) when the period's prediction log holds lines that could not be read, else
    None. Such a period is never "within bounds": what was not read may be what breaches them.
    (Lost requests, `lost_summary`, are another matter: the server counted them, nothing is
    unknown about how many.)"""
    log = result.log
    count = log.unreadable_lines
    if not count:
        return None
    named = log.unreadable
    where = "; ".join(f"{u.file} at byte {u.offset:,}: {u.reason}" for u in named)
    more = f" (and {count - len(named):,} more)" if count > len(named) else ""
    message = (
        f"{count:,} line(s) of the prediction log could not be read — {where}{more}. "
        "The period cannot be judged within bounds: the figures leave those requests out"
    )
    first = named[0] if named else None
    look = (
        f"look at it with `tail -c +{first.offset + 1} {log.folder}/{first.file} | head -c 400`; "
        if first
        else ""
    )
    hint = (
        f"{look}a damaged disk, another program writing there, or a log written by another "
        "version of cpmai. To monitor again, blank the line out with spaces of the same length "
        "(the server's index refers to byte offsets), or choose a period whose log files do not "
        "hold it with --since/--until"
    )
    return message, hint


Drift = drift_mod.FeatureDrift | TextDrift


def drift_all(
    traffic: Traffic,
    subject: Subject,
    profiles: Profiles,
    settings: Any,
    bounds: list[tuple[float, float]],
    *,
    max_rows: int | None = None,
) -> tuple[list[list[Drift]], list[Drift]]:
    """Every feature's drift in every window and over the whole period (on at most `max_rows`
    rows of each, evenly spaced in their time order, when given).

    Rows are put in time order once, so a window is a slice, not a mask; the comparisons run
    on a thread per core (numpy's sorts and sums release the GIL)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    times = traffic.row_time
    order = None
    if len(times) > 1 and not bool(np.all(times[1:] >= times[:-1])):
        order = np.argsort(times, kind="stable")
        times = times[order]
    cuts = [int(np.searchsorted(times, low, side="left")) for low, _ in bounds]
    cuts.append(len(times))
    names = [s.name for s in subject.specs if s.name in profiles and s.name in traffic.features]

    def one(name: str) -> list[Drift]:
        values = traffic.features[name]
        if order is not None:
            values = values[order]
        vocab = traffic.vocab.get(name)
        profile = profiles[name]
        text = TextComparison(profile, vocab or []) if isinstance(profile, TextProfile) else None

        def compare(part: np.ndarray) -> Drift:
            if max_rows is not None and len(part) > max_rows:
                part = part[np.linspace(0, len(part) - 1, max_rows).astype(np.int64)]
            if text is not None:
                return text.compare(
                    part,
                    threshold=settings.threshold,
                    p_value=settings.p_value,
                    min_samples=settings.min_samples,
                )
            assert isinstance(profile, drift_mod.Profile)
            return drift_mod.compare(
                profile,
                part,
                threshold=settings.threshold,
                p_value=settings.p_value,
                min_samples=settings.min_samples,
                vocab=vocab,
            )

        windows = [compare(values[cuts[i] : cuts[i + 1]]) for i in range(len(bounds))]
        if len(bounds) == 1 and cuts[0] == 0:  # one window, the whole period (the watcher's)
            return [*windows, windows[0]]
        return [*windows, compare(values)]

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(one, names))
    per_window = [[r[i] for r in results] for i in range(len(bounds))]
    return per_window, [r[-1] for r in results]


def drift_summary(features: list[Drift], share: float) -> DriftSummary:
    """The verdict over the judged features: drift when `share` of them or more drifted."""
    judged = [f for f in features if f.drifted is not None]
    drifted = [f.name for f in judged if f.drifted]
    if not judged:
        return DriftSummary(status="not enough data", share=None, drifted=[], judged=0)
    part = len(drifted) / len(judged)
    return DriftSummary(
        status="drift" if part >= share else "ok",
        share=round(part, 4),
        drifted=drifted,
        judged=len(judged),
    )


def _quality(
    subject: Subject, traffic: Traffic, labels: Labels, low: float, high: float
) -> WindowQuality:
    mask = (traffic.row_time >= low) & (traffic.row_time <= high)
    truth = labels.truth[mask]
    values = model_quality(
        subject.task,
        truth,
        traffic.outputs[mask],
        traffic.vocab.get("__output__"),
        subject.classes,
    )
    rows = sum(1 for v in truth.tolist() if v is not None and v == v)
    quality = WindowQuality(labelled_rows=rows, metrics={k: round(v, 6) for k, v in values.items()})
    bound = subject.manifest.monitoring.quality
    if bound is not None:
        value = values.get(bound.metric)
        quality.metric = bound.metric
        quality.bound = bound.min
        quality.value = None if value is None else round(value, 6)
        quality.passed = None if value is None else not below_bound(bound.metric, value, bound.min)
    return quality


def alerts_of(result: MonitorResult, manifest: Manifest) -> list[Alert]:
    """The bounds the result breaches: drift, model quality, SLO over the period, age."""
    alerts = []
    drift = result.drift
    if drift.status == "drift":
        alerts.append(
            Alert(
                "drift",
                f"{len(drift.drifted)} of {drift.judged} features drifted "
                f"(share {drift.share:.2f} ≥ {manifest.monitoring.drift.share}): "
                + ", ".join(drift.drifted),
                {
                    "share": drift.share,
                    "drifted": drift.drifted,
                    "features": [f.to_json() for f in drift.features if f.drifted],
                },
            )
        )
    quality = result.model_quality
    if quality and quality.passed is False:
        assert quality.value is not None and quality.bound is not None
        alerts.append(
            Alert(
                "quality",
                f"{quality.metric} {quality.value:.4g} breaks the bound {quality.bound:g} "
                f"({quality.labelled_rows} labelled rows)",
                {
                    "metric": quality.metric,
                    "value": quality.value,
                    "bound": quality.bound,
                    "labelled_rows": quality.labelled_rows,
                },
            )
        )
    failed = [c for c in result.slo.checks if c.passed is False]
    if failed:
        alerts.append(
            Alert(
                "slo",
                "SLO missed: "
                + ", ".join(f"{c.metric} {c.measured:g} > {c.bound:g}" for c in failed),
                {"checks": [c.to_json() for c in failed], "requests": result.traffic.requests},
            )
        )
    age = result.age
    if age.max_days is not None and age.days > age.max_days:
        alerts.append(
            Alert(
                "age",
                f"version {result.version} is {age.days:.0f} days old (max {age.max_days})",
                {"days": age.days, "max_days": age.max_days, "packaged": age.packaged},
            )
        )
    return alerts
