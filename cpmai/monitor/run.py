"""`cpmai monitor`: what an environment served over a period, window by window, and whether it
still meets its bounds.

The focus version (`--version`, else the one live at the end of the period, else the last one
that was live there, else the one in the newest log line) gives the signature, the reference
data and — unless a manifest file is given — the monitoring settings. Traffic, errors and
latency cover every version in the period; drift, data quality and model quality cover the
focus version's rows, compared with its own reference data.

Every task and input kind is judged: a regression model's predictions drift like a numeric
feature (KS / Wasserstein) and its quality is MAE, RMSE, R² and MAPE; free-text inputs drift by
length, unknown words and token distribution (`cpmai.monitor.drift`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cpmai.errors import UsageError
from cpmai.ledger import Ledger, State, replay
from cpmai.monitor import drift as drift_mod
from cpmai.monitor.logs import (
    FeatureSpec,
    Traffic,
    log_files,
    log_folder,
    read_resources,
    read_traffic,
)
from cpmai.monitor.quality import (
    Labels,
    below_bound,
    data_quality,
    model_quality,
    read_labels,
)
from cpmai.monitor.triggers import Alert, TriggerRun
from cpmai.stats import nearest_rank

if TYPE_CHECKING:
    from cpmai.artifacts import Artifact
    from cpmai.manifest import Manifest, Triggers

SCHEMA = "cpmai-monitor/1"
MAX_WINDOWS = 2000
PERCENTILES = (50, 95, 99)


@dataclass
class MonitorResult:
    doc: dict[str, Any]
    triggers: Triggers
    """The settings that decide which alerts fire (the manifest's in use)."""
    alerts: list[Alert] = field(default_factory=list)
    fired: list[Alert] = field(default_factory=list)
    run: TriggerRun | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.doc)
        out["alerts"] = [a.to_dict() for a in self.alerts]
        out["trigger_run"] = self.run.to_dict() if self.run else None
        return out


@dataclass
class Subject:
    """The focus version and everything needed to judge its traffic."""

    artifact: Artifact
    manifest: Manifest
    specs: list[FeatureSpec]
    inputs: list[dict[str, Any]]
    task: str
    output_kind: str
    classes: list[Any] | None
    packaged: str
    live_since: str | None


def feature_specs(inputs: list[dict[str, Any]]) -> list[FeatureSpec]:
    from cpmai.serving.logindex import feature_kind  # the writer's rule: one place for it

    return [
        FeatureSpec(
            spec["name"],
            feature_kind(spec["type"]),
            frozenset(spec.get("categories") or []),
            keep=True,  # free text too: its drift is judged
        )
        for spec in inputs
    ]


def choose_version(
    home: Path, name: str, env: str, until: float | None
) -> tuple[str | None, str | None, State]:
    """(version, live since, the ledger's state then) for the period ending at `until`."""
    until_iso = None if until is None else datetime.fromtimestamp(until, UTC).isoformat()
    state = replay(Ledger(home).events(), until=until_iso)
    if name not in state.versions:
        known = ", ".join(state.names()) or "none yet"
        raise UsageError(f"no model named {name!r} has been packaged (packaged: {known})")
    env_state = state.env(name, env)
    if env_state.live is not None:
        return env_state.live.version, env_state.live.time, state
    if env_state.history:
        return env_state.history[-1].version, None, state
    return None, None, state


def newest_logged_version(folder: Path) -> str | None:
    """The version in the last complete line of the newest prediction log file."""
    import orjson

    files = sorted(log_files(folder, "predictions", None, None), key=lambda p: p.stat().st_mtime)
    for path in reversed(files):
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(max(0, size - 65536))
            lines = handle.read().split(b"\n")
        for line in reversed(lines[1:-1] if len(lines) > 2 else lines):
            try:
                return str(orjson.loads(line)["version"])
            except (ValueError, KeyError, TypeError):
                continue
    return None


def load_subject(
    home: Path,
    name: str,
    version: str,
    manifest: Manifest | None,
    live_since: str | None,
    state: State | None = None,
) -> Subject:
    from cpmai.artifacts import open_artifact

    artifact = open_artifact(home, name, version)
    signature = artifact.signature
    inputs = list(signature["inputs"])
    outputs = signature.get("outputs") or [{}]
    own = artifact.manifest()
    task = own.model.task
    record = (state.versions if state else {}).get(name, {}).get(artifact.version)
    if record is None:  # packaged after the period the state was replayed to
        record = replay(Ledger(home).events()).versions[name][artifact.version]
    return Subject(
        artifact=artifact,
        manifest=manifest or own,
        specs=feature_specs(inputs),
        inputs=inputs,
        task=task,
        output_kind="numeric" if task == "regression" else "categorical",
        classes=outputs[0].get("categories"),
        packaged=record.time,
        live_since=live_since,
    )


PROFILE_CACHE_FORMAT = 2
Profiles = dict[str, drift_mod.Profile | drift_mod.TextProfile]


def reference_profiles(subject: Subject) -> tuple[Profiles, drift_mod.Profile | None, int]:
    """Profiles of the reference data's features and of the model's predictions on it.

    Computed once per artifact (it means reading the reference file and running the model) and
    kept in `cache/monitor/`; a cache that cannot be read is rebuilt, never trusted."""
    import pickle

    from cpmai import __version__
    from cpmai.fsutil import write_atomic

    artifact = subject.artifact
    home = artifact.path.parents[2]
    cache = home / "cache" / "monitor" / f"{artifact.name}-{artifact.digest[:16]}.pickle"
    key = (PROFILE_CACHE_FORMAT, __version__, artifact.digest)
    try:
        stored = pickle.loads(cache.read_bytes())
        if stored[0] == key:
            return stored[1]  # type: ignore[no-any-return]
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, IndexError, TypeError):
        pass
    result = _profiles(subject)
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cache, pickle.dumps((key, result)))
    return result


def _profiles(subject: Subject) -> tuple[Profiles, drift_mod.Profile | None, int]:
    from cpmai.runtime.data import read_table

    files = sorted((subject.artifact.path / "data").glob("reference.*"))
    if not files:
        return {}, None, 0
    frame = read_table(files[0])
    target = subject.artifact.manifest().data.target
    if target and target in frame.columns:
        frame = frame.drop(columns=[target])
    profiles: Profiles = {}
    for spec in subject.specs:
        if spec.name not in frame.columns:
            continue
        column = frame[spec.name]
        if spec.kind == "numeric":
            profiles[spec.name] = drift_mod.profile_numeric(
                spec.name, column.to_numpy(dtype=float, na_value=np.nan)
            )
        elif spec.kind == "categorical":
            profiles[spec.name] = drift_mod.profile_categorical(spec.name, column.tolist())
        else:
            profiles[spec.name] = drift_mod.profile_text(spec.name, column.tolist())
    from cpmai.runtime.predictor import Predictor

    predictor = Predictor.from_artifact(subject.artifact)
    columns = {spec["name"]: frame[spec["name"]].tolist() for spec in predictor.inputs}
    labels, _ = predictor.run(columns, False)
    if subject.output_kind == "numeric":
        output = drift_mod.profile_numeric("prediction", np.asarray(labels, dtype=float))
    else:
        output = drift_mod.profile_categorical("prediction", labels.tolist())
    return profiles, output, len(frame)


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
    labels_file: Path | None = None,
    now: float | None = None,
    use_cache: bool = True,
    include_synthetic: bool = False,
) -> MonitorResult:
    """Read the period's log and samples and judge them. Records nothing (see `triggers.fire`).

    Synthetic requests (load tests: `cpmai.serving.origin`) are counted apart and judged only
    with `include_synthetic`."""
    now = time.time() if now is None else now
    end = min(until, now) if until is not None else now
    if since is not None and since >= end:
        raise UsageError("--since must be before --until (and before now)")
    live_version, live_since, state = choose_version(home, name, env, until)
    folder = log_folder(home, name, env)
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
    traffic = read_traffic(
        folder,
        focus=subject.artifact.version,
        specs=subject.specs,
        output_kind=subject.output_kind,
        since=since,
        until=until,
        with_ids=labels_file is not None,
        output_categories=subject.classes,
        cache=home / "cache" / "monitor" / "logs" / name / env if use_cache else None,
        include_synthetic=include_synthetic,
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
    labels: Labels | None = None
    if labels_file is not None:
        labels = read_labels(labels_file, traffic, target=subject.artifact.manifest().data.target)
    resources = read_resources(folder, since, until)
    if not include_synthetic:  # CPU and memory under a load test are not what customers use
        resources = without_spans(resources, traffic.synthetic_spans, settings.sample_interval_s)
    slo = subject.manifest.slo.model_dump(exclude_none=True)
    slo.pop("throughput_min", None)  # a capacity bound: `cpmai bench` checks it, traffic cannot

    bounds = [(start + i * window_s, min(start + (i + 1) * window_s, end)) for i in range(count)]
    per_window, features = _drift_all(traffic, subject, profiles, settings.drift, bounds)
    windows = []
    for index, (low, high) in enumerate(bounds):
        entry = _traffic_summary(traffic, low, high, last=index == count - 1)
        entry.update(resource_summary(resources, low, high, settings.sample_interval_s))
        entry["drift"] = _drift_summary(per_window[index], settings.drift.share)
        if labels is not None:
            entry["quality"] = _quality(subject, traffic, labels, low, high)
        entry["slo"] = _slo_checks(entry, slo)
        windows.append(entry)
    period = _traffic_summary(traffic, start, end, last=True)
    period.update(resource_summary(resources, start, end, settings.sample_interval_s))
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
        ).to_dict()
    drift_doc = _drift_summary(features, settings.drift.share)
    drift_doc["features"] = [f.to_dict() for f in features]
    drift_doc["prediction"] = prediction
    drift_doc["reference_rows"] = reference_rows
    drift_doc["version"] = subject.artifact.version
    quality_doc = None
    if labels is not None:
        quality_doc = _quality(subject, traffic, labels, start, end)
        quality_doc.update(join=labels.join, labels_given=labels.given)
    age_days = (now - datetime.fromisoformat(subject.packaged).timestamp()) / 86400
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "name": name,
        "env": env,
        "version": subject.artifact.version,
        "live_version": live_version,
        "period": {
            "since": _iso(start),
            "until": _iso(end),
            "seconds": round(end - start, 3),
            "window_s": window_s,
        },
        "log": {
            "folder": str(folder),
            "files": traffic.files,
            "bytes": traffic.bytes,
            "requests_logged": traffic.requests,
            "unreadable_lines": traffic.unreadable,
            "unreadable": [
                {"file": file, "offset": offset, "reason": reason}
                for file, offset, reason in traffic.unreadable_at
            ],
            "versions": _per_version(traffic),
            "synthetic": synthetic_summary(traffic.synthetic, traffic.synthetic_included),
            "lost": lost_summary(traffic.lost),
        },
        "age": {
            "packaged": subject.packaged,
            "live_since": subject.live_since,
            "days": round(age_days, 3),
            "max_days": settings.triggers.max_age_days,
        },
        "slo": {"bounds": slo, "checks": _slo_checks(period, slo)},
        "traffic": period,
        "windows": windows,
        "drift": drift_doc,
        "data_quality": data_quality(traffic, subject.specs, subject.inputs),
        "model_quality": quality_doc,
        "settings": settings.model_dump(mode="json"),
    }
    return MonitorResult(doc, settings.triggers, alerts=_alerts(doc, subject.manifest))


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def unreadable_error(doc: dict[str, Any]) -> tuple[str, str] | None:
    """(message, hint) when the period's prediction log holds lines that could not be read, else
    None. Such a period is never "within bounds": what was not read may be what breaches them.
    (Lost requests, `lost_summary`, are another matter: the server counted them, nothing is
    unknown about how many.)"""
    log = doc["log"]
    count = int(log["unreadable_lines"])
    if not count:
        return None
    named = log.get("unreadable") or []
    where = "; ".join(f"{u['file']} at byte {u['offset']:,}: {u['reason']}" for u in named)
    more = f" (and {count - len(named):,} more)" if count > len(named) else ""
    message = (
        f"{count:,} line(s) of the prediction log could not be read — {where}{more}. "
        "The period cannot be judged within bounds: the figures leave those requests out"
    )
    first = named[0] if named else None
    look = (
        f"look at it with `tail -c +{first['offset'] + 1} {log['folder']}/{first['file']} "
        "| head -c 400`; "
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


def lost_summary(lost: list[tuple[float, float, int, str]]) -> dict[str, Any] | None:
    """Requests the servers answered but could not log in the period (None: there were none)."""
    if not lost:
        return None
    return {
        "requests": sum(item[2] for item in lost),
        "since": _iso(min(item[0] for item in lost)),
        "until": _iso(max(item[1] for item in lost)),
        "reasons": sorted({reason for item in lost for reason in item[3].split("; ")}),
    }


def synthetic_summary(by_source: dict[str, int], included: bool) -> dict[str, Any]:
    """The synthetic requests of a period (load tests), by source, most first, and whether they
    were counted in."""
    return {
        "requests": sum(by_source.values()),
        "by_source": dict(sorted(by_source.items(), key=lambda kv: -kv[1])),
        "included": included,
    }


def _per_version(traffic: Traffic) -> dict[str, int]:
    if not traffic.requests:
        return {}
    counts = np.bincount(traffic.version, minlength=len(traffic.versions)).tolist()
    return {v: int(c) for v, c in zip(traffic.versions, counts, strict=False)}


def _traffic_summary(traffic: Traffic, low: float, high: float, *, last: bool) -> dict[str, Any]:
    mask = (traffic.time >= low) & ((traffic.time <= high) if last else (traffic.time < high))
    weight = traffic.weight[mask]
    status = traffic.status[mask]
    requests = float(weight.sum())
    ok = status < 400
    errors: dict[str, int] = {}
    if (~ok).any():
        codes, counts = np.unique(status[~ok], return_counts=True)
        errors = {str(int(c)): int(n) for c, n in zip(codes, counts, strict=True)}
    failed = float(weight[~ok].sum())
    latencies = np.sort(traffic.latency_ms[mask][ok])
    latency = {f"p{p}_ms": nearest_rank(latencies, p) for p in PERCENTILES}
    latency["max_ms"] = round(float(latencies[-1]), 3) if len(latencies) else None
    seconds = max(high - low, 1e-9)
    return {
        "start": _iso(low),
        "end": _iso(high),
        "requests": round(requests),
        "rows": round(float((traffic.rows[mask] * weight).sum())),
        "requests_per_s": round(requests / seconds, 3),
        "errors": errors,
        "error_rate": round(failed / requests, 6) if requests else None,
        "latency_ms": latency,
    }


def without_spans(
    samples: list[dict[str, Any]], spans: list[tuple[float, float]], interval: float
) -> list[dict[str, Any]]:
    """The resource samples that measured none of `spans`: a sample taken at t covers the
    `interval` before it."""
    if not spans:
        return samples
    return [s for s in samples if not any(a < s["t"] < b + interval for a, b in spans)]


def resource_summary(
    samples: list[dict[str, Any]], low: float, high: float, interval: float
) -> dict[str, Any]:
    """CPU % and RSS of the serving processes: samples taken at the same moment (one per process)
    are summed, then averaged and maximised over the window."""
    chosen = [s for s in samples if low <= s["t"] <= high]
    if not chosen:
        return {"resources": None}
    moments: dict[int, list[dict[str, Any]]] = {}
    for sample in chosen:
        moments.setdefault(int(sample["t"] // interval), []).append(sample)
    cpu = np.array([sum(float(s["cpu_percent"]) for s in group) for group in moments.values()])
    rss = np.array([sum(float(s["rss_bytes"]) for s in group) for group in moments.values()])
    return {
        "resources": {
            "samples": len(chosen),
            "processes": len({s.get("pid") for s in chosen}),
            "cpu_percent_mean": round(float(cpu.mean()), 2),
            "cpu_percent_peak": round(float(cpu.max()), 2),
            "rss_mb_mean": round(float(rss.mean()) / 2**20, 1),
            "rss_mb_peak": round(float(rss.max()) / 2**20, 1),
        }
    }


Drift = drift_mod.FeatureDrift | drift_mod.TextDrift


def _drift_all(
    traffic: Traffic,
    subject: Subject,
    profiles: Profiles,
    settings: Any,
    bounds: list[tuple[float, float]],
) -> tuple[list[list[Drift]], list[Drift]]:
    """Every feature's drift in every window and over the whole period.

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
        text = (
            drift_mod.TextComparison(profile, vocab or [])
            if isinstance(profile, drift_mod.TextProfile)
            else None
        )

        def compare(part: np.ndarray) -> Drift:
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
        return [*windows, compare(values)]

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(one, names))
    per_window = [[r[i] for r in results] for i in range(len(bounds))]
    return per_window, [r[-1] for r in results]


def _drift_summary(features: list[Drift], share: float) -> dict[str, Any]:
    judged = [f for f in features if f.drifted is not None]
    drifted = [f.name for f in judged if f.drifted]
    if not judged:
        return {"status": "not enough data", "share": None, "drifted": [], "judged": 0}
    part = len(drifted) / len(judged)
    return {
        "status": "drift" if part >= share else "ok",
        "share": round(part, 4),
        "drifted": drifted,
        "judged": len(judged),
    }


def _quality(
    subject: Subject, traffic: Traffic, labels: Labels, low: float, high: float
) -> dict[str, Any]:
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
    doc: dict[str, Any] = {
        "labelled_rows": rows,
        "metrics": {k: round(v, 6) for k, v in values.items()},
    }
    bound = subject.manifest.monitoring.quality
    if bound is not None:
        value = values.get(bound.metric)
        doc["metric"] = bound.metric
        doc["bound"] = bound.min
        doc["value"] = None if value is None else round(value, 6)
        doc["passed"] = None if value is None else not below_bound(bound.metric, value, bound.min)
    return doc


def _slo_checks(summary: dict[str, Any], slo: dict[str, float]) -> list[dict[str, Any]]:
    checks = []
    for metric, bound in slo.items():
        value = (
            summary["error_rate"] if metric == "error_rate" else summary["latency_ms"].get(metric)
        )
        checks.append(
            {
                "metric": metric,
                "bound": bound,
                "measured": value,
                "passed": None if value is None else value <= bound,
            }
        )
    return checks


def _alerts(doc: dict[str, Any], manifest: Manifest) -> list[Alert]:
    alerts = []
    drift = doc["drift"]
    if drift["status"] == "drift":
        alerts.append(
            Alert(
                "drift",
                f"{len(drift['drifted'])} of {drift['judged']} features drifted "
                f"(share {drift['share']:.2f} ≥ {manifest.monitoring.drift.share}): "
                + ", ".join(drift["drifted"]),
                {
                    "share": drift["share"],
                    "drifted": drift["drifted"],
                    "features": [f for f in drift["features"] if f["drifted"]],
                },
            )
        )
    quality = doc["model_quality"]
    if quality and quality.get("passed") is False:
        alerts.append(
            Alert(
                "quality",
                f"{quality['metric']} {quality['value']:.4g} breaks the bound {quality['bound']:g} "
                f"({quality['labelled_rows']} labelled rows)",
                {k: quality[k] for k in ("metric", "value", "bound", "labelled_rows")},
            )
        )
    failed = [c for c in doc["slo"]["checks"] if c["passed"] is False]
    if failed:
        alerts.append(
            Alert(
                "slo",
                "SLO missed: "
                + ", ".join(f"{c['metric']} {c['measured']:g} > {c['bound']:g}" for c in failed),
                {"checks": failed, "requests": doc["traffic"]["requests"]},
            )
        )
    age = doc["age"]
    if age["max_days"] is not None and age["days"] > age["max_days"]:
        alerts.append(
            Alert(
                "age",
                f"version {doc['version']} is {age['days']:.0f} days old (max {age['max_days']})",
                {"days": age["days"], "max_days": age["max_days"], "packaged": age["packaged"]},
            )
        )
    return alerts
