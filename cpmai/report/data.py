"""What `cpmai report` shows, gathered in one document (schema cpmai-report/1): the versions
and their journey from the ledger, latency per version from saved benchmarks, traffic, SLOs,
resources, drift and quality from the prediction logs (through `cpmai monitor`'s own code),
triggers, KPIs, and cost and ROI (through `cpmai cost`'s). The renderers only lay it out."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpmai.clock import iso
from cpmai.costs import measure
from cpmai.costs.estimate import estimate
from cpmai.costs.facts import DEFAULT_PERIOD_S, Facts
from cpmai.costs.roi import trend
from cpmai.errors import UsageError
from cpmai.ledger import Event as LedgerEvent
from cpmai.report.document import (
    Bench,
    BenchLevel,
    DriftBrief,
    DriftOverview,
    EnvStatus,
    Event,
    Kpi,
    Monitored,
    Report,
    ReportPeriod,
    Unmonitored,
    VersionEntry,
    VersionLatency,
    WindowPoint,
)

if TYPE_CHECKING:
    from cpmai.manifest import Manifest

JOURNEY = ("package", "gate", "approve", "approval-refused", "deploy", "promote", "rollback",
           "stop", "trigger", "trigger-run")  # fmt: skip
WINDOWS = (1, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)
MAX_POINTS = 60


def window_for(seconds: float) -> float:
    """The smallest round window that draws the period in at most MAX_POINTS points."""
    for window in WINDOWS:
        if seconds / window <= MAX_POINTS:
            return float(window)
    return float(WINDOWS[-1])


def build(
    home: Path,
    name: str,
    *,
    env: str | None = None,
    manifest: Manifest | None = None,
    since: float | None = None,
    until: float | None = None,
    now: float | None = None,
    progress: Callable[[str], None] | None = None,
    include_synthetic: bool = False,
) -> Report:
    """The report's document. Synthetic requests (load tests) are shown apart and counted in
    only with `include_synthetic`."""
    say = progress or (lambda _: None)
    now = time.time() if now is None else now
    end = min(until, now) if until is not None else now
    facts = Facts(
        home, name, manifest=manifest, now=now, progress=say, include_synthetic=include_synthetic
    )
    events, manifest, source, first = facts.events, facts.manifest, facts.source, facts.first
    start = since if since is not None else max(first or end - 3600, end - DEFAULT_PERIOD_S)
    if start >= end:
        if since is None:
            raise UsageError(
                f"--until {iso(end)} is before {name}'s first deployment ({iso(start)}): "
                "give --since too"
            )
        raise UsageError("--since must be before --until (and before now)")
    state = facts.state
    envs = _envs(state, name, env)
    window = window_for(end - start)
    say("costs")
    cost = estimate(home, name, env=env, since=start, until=end, now=now, facts=facts).document
    monitored: dict[str, Monitored | Unmonitored] = {}
    for env_name in envs:
        say(f"monitoring {env_name}")
        monitored[env_name] = _monitor(
            home, name, env_name, manifest, start, end, window, now, include_synthetic
        )
    say("cost and value over time")
    value_trend = trend(facts, start, end, window)
    return Report(
        name=name,
        description=manifest.description,
        owners=manifest.owners,
        currency=manifest.costs.currency,
        manifest=source,
        generated=iso(now),
        period=ReportPeriod(since=iso(start), until=iso(end), window_s=window),
        environments=_env_status(state, name, envs),
        versions=_versions(events, state, name),
        latency=_latency(home, name, state),
        monitoring=monitored,
        value_trend=value_trend,
        triggers=[
            _event(e) for e in events if e.name == name and e.action in ("trigger", "trigger-run")
        ],
        kpis=_kpis(events, name),
        cost=cost,
        slo=manifest.slo.model_dump(exclude_none=True),
    )


def _envs(state: Any, name: str, env: str | None) -> list[str]:
    known = [e for e in state.envs_of(name) if e != "batch"]
    if env is not None:
        if env not in known:
            raise UsageError(
                f"--env {env}: {name} was never deployed there "
                f"(known: {', '.join(known) or 'none'})"
            )
        return [env]
    return known


def _env_status(state: Any, name: str, envs: list[str]) -> list[EnvStatus]:
    out = []
    for env in envs:
        s = state.env(name, env)
        out.append(
            EnvStatus(
                env=env,
                live_version=s.live.version if s.live else None,
                since=s.live.time if s.live else None,
                url=s.live.details.get("url") if s.live else None,
                by=s.live.actor if s.live else None,
                versions_live_here=[r.version for r in s.history],
                last_event=s.last_event.action if s.last_event else None,
            )
        )
    return out


def _event(e: LedgerEvent) -> Event:
    details = e.details
    summary = ""
    if e.action == "gate":
        failed = [r["gate"] for r in details.get("results", []) if not r.get("passed")]
        summary = "passed" if details.get("passed") else "refused: " + ", ".join(failed)
    elif e.action in ("deploy", "promote", "rollback"):
        summary = str(details.get("result", ""))
        if details.get("reason"):
            summary += f" ({details['reason']})"
    elif e.action in ("approve", "approval-refused"):
        summary = str(details.get("note", ""))
    elif e.action == "trigger":
        summary = f"{details.get('kind', '')}: {details.get('message', '')}".strip(": ")
    elif e.action == "trigger-run":
        summary = f"exit {details.get('exit_code')}"
    elif e.action == "package":
        summary = str(details.get("digest", ""))[:19]
    return Event(
        seq=e.seq,
        time=e.time,
        actor=e.actor,
        action=e.action,
        version=e.version,
        env=e.env,
        summary=summary,
    )


def _versions(events: list[LedgerEvent], state: Any, name: str) -> list[VersionEntry]:
    live_in: dict[str, list[str]] = {}
    for env, s in state.envs_of(name).items():
        if s.live is not None:
            live_in.setdefault(s.live.version, []).append(env)
    out = []
    for record in state.versions_of(name):
        journey = [
            _event(e)
            for e in events
            if e.name == name and e.version == record.version and e.action in JOURNEY
        ]
        out.append(
            VersionEntry(
                version=record.version,
                digest=record.digest,
                packaged=record.time,
                by=record.actor,
                live_in=live_in.get(record.version, []),
                journey=journey,
            )
        )
    return out


def _latency(home: Path, name: str, state: Any) -> list[VersionLatency]:
    """Per version, the newest benchmark (a server's when there is one): each level's
    percentiles. Versions never benchmarked are listed with no levels."""
    out = []
    for record in state.versions_of(name):
        runs = measure.bench_runs(home, name, record.version)
        bench = None
        if runs:
            path, data = max(runs, key=lambda r: (r[1].target.kind == "http", r[0].name))
            bench = Bench(
                file=str(path),
                time=data.time,
                kind=data.target.kind,
                url=data.target.url,
                levels=[
                    BenchLevel(
                        label=lv.label,
                        throughput_rps=lv.throughput_rps,
                        error_rate=lv.error_rate,
                        p50_ms=lv.latency_ms.p50_ms,
                        p95_ms=lv.latency_ms.p95_ms,
                        p99_ms=lv.latency_ms.p99_ms,
                    )
                    for lv in data.levels
                ],
                slo_passed=data.slo.passed if data.slo else None,
            )
        out.append(VersionLatency(version=record.version, bench=bench))
    return out


def _monitor(
    home: Path,
    name: str,
    env: str,
    manifest: Manifest,
    start: float,
    end: float,
    window: float,
    now: float,
    include_synthetic: bool,
) -> Monitored | Unmonitored:
    from cpmai.monitor.run import monitor

    try:
        result = monitor(
            home,
            name,
            env,
            window_s=window,
            since=start,
            until=end,
            manifest=manifest,
            now=now,
            include_synthetic=include_synthetic,
        )
    except UsageError as exc:
        return Unmonitored(available=False, note=exc.message)
    return Monitored(
        available=True,
        version=result.version,
        traffic=result.traffic,
        synthetic=result.log.synthetic,
        lost=result.log.lost,
        slo=result.slo,
        windows=[
            WindowPoint(
                start=w.start,
                requests=w.requests,
                requests_per_s=w.requests_per_s,
                error_rate=w.error_rate,
                latency_ms=w.latency_ms,
                resources=w.resources,
                drift=w.drift.status,
                slo_passed=None
                if all(c.passed is None for c in w.slo)
                else all(c.passed is not False for c in w.slo),
            )
            for w in result.windows
        ],
        drift=DriftOverview(
            status=result.drift.status,
            reference_rows=result.drift.reference_rows,
            threshold=result.settings.drift.threshold,
            features=[
                DriftBrief(
                    feature=f.feature,
                    method=f.method,
                    statistic=f.statistic,
                    p_value=f.p_value,
                    psi=f.psi,
                    rows=f.rows,
                    status=f.status,
                )
                for f in result.drift.features
            ],
        ),
        data_quality=result.data_quality,
        alerts=result.alerts,
        age=result.age,
    )


def _kpis(events: list[LedgerEvent], name: str) -> dict[str, list[Kpi]]:
    from cpmai import kpi

    out: dict[str, list[Kpi]] = {}
    for record in kpi.read(events, name):
        out.setdefault(record.metric, []).append(Kpi(**record.to_dict()))
    return out
