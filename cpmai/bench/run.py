"""`cpmai bench`: run the load levels, summarise them, check SLOs, compare with a baseline, save.

A run is a list of *levels* (one concurrency, rate or batch size each). Every level has a
warm-up that is not counted, then lasts at least `duration_s` and at least `min_requests`
requests (capped by `max_duration_s`, and said so when the cap cut it short). Each level is cut
into one-second windows; it is "stable" when throughput and p99 of the last three full windows
are each within 10% (max/min), as Triton's perf_analyzer requires.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cpmai.bench import MAX_CONCURRENCY, MAX_RATE
from cpmai.bench.recorder import LoadResult
from cpmai.bench.result import (
    SCHEMA,
    BenchResult,
    BenchTarget,
    Capacity,
    HistogramData,
    LevelResult,
    Percentiles,
    Settings,
    SloResult,
    Window,
    load_result,
)
from cpmai.clock import iso
from cpmai.errors import UsageError
from cpmai.home import Home

if TYPE_CHECKING:
    from cpmai.bench.histogram import Histogram

__all__ = ["SCHEMA", "Level", "Request", "Settings", "Subject", "benchmark", "load_result"]
STABLE_WINDOWS = 3
STABLE_SPREAD = 1.10
Progress = Callable[[str], None]


@dataclass
class Level:
    mode: str
    """closed | open | inprocess."""
    concurrency: int
    rate: float | None = None
    batch_size: int = 1

    @property
    def key(self) -> str:
        return f"{self.mode}:c={self.concurrency}:r={self.rate}:b={self.batch_size}"

    @property
    def label(self) -> str:
        if self.mode == "open":
            return f"rate {self.rate:g}/s"
        text = f"c={self.concurrency}"
        return text + (f" batch={self.batch_size}" if self.batch_size != 1 else "")


@dataclass
class Subject:
    """What is measured: an in-process call, or an HTTP endpoint."""

    kind: str
    """inprocess | http."""
    name: str | None = None
    version: str | None = None
    url: str | None = None
    path: str | None = None
    protocol: str | None = None
    pid: int | None = None
    run_level: Callable[[Level, Settings], LoadResult] | None = field(default=None, repr=False)

    def to_target(self) -> BenchTarget:
        """The subject as the result names it."""
        return BenchTarget.model_validate(
            {"kind": self.kind, "name": self.name, "version": self.version, "url": self.url,
             "path": self.path, "protocol": self.protocol, "pid": self.pid}
        )  # fmt: skip


def summarise(level: Level, result: LoadResult, settings: Settings) -> LevelResult:
    """A level's figures (the result's `levels[]`)."""
    requests = result.requests
    seconds = result.measured_s or settings.duration_s
    full = [i for i in sorted(result.windows) if i + 1 <= seconds]  # drop the partial last one
    windows = []
    for index in full:
        window = result.windows[index]
        latency = window["latency"]
        p50, p99 = latency.percentile(50), latency.percentile(99)
        windows.append(
            Window(
                index=index,
                requests=window["count"],
                errors=window["errors"],
                throughput_rps=float(window["count"]),
                p50_ms=None if p50 is None else round(p50 / 1e6, 6),
                p99_ms=None if p99 is None else round(p99 / 1e6, 6),
            )
        )
    stable, note = _stability(windows)
    return LevelResult(
        key=level.key,
        label=level.label,
        mode=level.mode,
        concurrency=level.concurrency,
        rate=level.rate,
        batch_size=level.batch_size,
        requests=requests,
        ok=result.ok,
        not_sent=result.not_sent,
        errors=dict(result.errors),
        error_rate=round(sum(result.errors.values()) / requests, 6) if requests else 0.0,
        measured_s=round(seconds, 3),
        throughput_rps=round(requests / seconds, 2) if seconds else 0.0,
        rows_per_s=round(requests * level.batch_size / seconds, 2) if seconds else 0.0,
        latency_ms=Percentiles(**result.latency.summary_ms()),
        uncorrected_ms=Percentiles(**result.uncorrected.summary_ms())
        if result.uncorrected
        else None,
        lag_ms=Percentiles(**result.lag.summary_ms()) if result.lag else None,
        min_requests_met=requests >= settings.min_requests,
        stable=stable,
        stability=note,
        windows=windows,
        histogram=HistogramData(**result.latency.to_dict()),
    )


def _percentiles(histogram: Histogram | None) -> Percentiles | None:
    return Percentiles(**histogram.summary_ms()) if histogram is not None else None


def _stability(windows: list[Window]) -> tuple[bool, str]:
    last = windows[-STABLE_WINDOWS:]
    if len(last) < STABLE_WINDOWS:
        return False, f"unstable: fewer than {STABLE_WINDOWS} full one-second windows"
    spreads = {}
    for metric in ("throughput_rps", "p99_ms"):
        values = [v for w in last if (v := getattr(w, metric))]
        if len(values) < STABLE_WINDOWS:
            return False, f"unstable: {metric} missing in the last windows"
        spreads[metric] = max(values) / min(values)
    worst = max(spreads, key=lambda k: spreads[k])
    if spreads[worst] > STABLE_SPREAD:
        return False, (
            f"unstable: {worst} varied {spreads[worst]:.2f}× over the last {STABLE_WINDOWS} windows"
        )
    return True, "stable: throughput and p99 within 10% over the last 3 windows"


def warnings_for(level: LevelResult) -> list[str]:
    """What a reader of the level's figures should know: too few requests, unstable, arrivals
    left unsent, a queue the uncorrected figure hides."""
    out = []
    if not level.min_requests_met:
        out.append(f"{level.label}: fewer requests than --min-requests before --max-duration")
    if not level.stable:
        out.append(f"{level.label}: {level.stability}")
    if level.not_sent:
        out.append(
            f"{level.label}: {level.not_sent} arrivals were still waiting for a free "
            "connection when the level ended (the server did not keep up, or add --concurrency)"
        )
    corrected, raw = level.latency_ms.p99_ms, level.uncorrected_ms
    if raw and corrected and raw.p99_ms:
        slack = (level.lag_ms.p99_ms if level.lag_ms else None) or 0.0
        if corrected > 1.5 * raw.p99_ms + slack:
            out.append(
                f"{level.label}: p99 from the intended send time is "
                f"{corrected:.2f} ms but {raw.p99_ms:.2f} ms from the actual send: "
                "requests queued behind slow ones (the server stalled or is saturated at this rate)"
            )
    return out


def run_levels(
    subject: Subject,
    levels: list[Level],
    settings: Settings,
    progress: Progress,
    *,
    until: Callable[[LevelResult], bool] | None = None,
) -> list[LevelResult]:
    """Measure each level in turn; `until(summary)` true stops the sweep early."""
    assert subject.run_level is not None
    out = []
    for i, level in enumerate(levels, start=1):
        progress(f"level {i}/{len(levels)}: {level.label}")
        summary = summarise(level, subject.run_level(level, settings), settings)
        out.append(summary)
        if until is not None and until(summary):
            break
    return out


def meets(level: LevelResult, slo: dict[str, float]) -> bool:
    """Whether the level met every bound of the SLO."""
    from cpmai.bench.verdicts import check_slo

    return all(c.passed for c in check_slo([level], slo))


def find_capacity(
    subject: Subject,
    mode: str,
    start: float,
    settings: Settings,
    slo: dict[str, float],
    progress: Progress,
    *,
    batch_size: int = 1,
    connections: int = 64,
    limit: float | None = None,
) -> tuple[list[LevelResult], Capacity]:
    """The highest concurrency (closed loop, doubling) or rate (open loop: doubling, then three
    bisections) that meets the SLO."""
    assert subject.run_level is not None
    measured: list[LevelResult] = []

    def probe(value: float) -> LevelResult:
        level = (
            Level("open", connections, rate=round(value, 1), batch_size=batch_size)
            if mode == "open"
            else Level(mode, int(value), batch_size=batch_size)
        )
        progress(f"capacity: trying {level.label}")
        assert subject.run_level is not None
        summary = summarise(level, subject.run_level(level, settings), settings)
        summary.meets_slo = meets(summary, slo)
        measured.append(summary)
        return summary

    good: LevelResult | None = None
    bad: LevelResult | None = None
    if limit is None:
        limit = MAX_RATE if mode == "open" else MAX_CONCURRENCY
    if start > limit:
        raise UsageError(f"capacity search: the start ({start:g}) is above the limit ({limit:g})")
    value = start
    while value <= limit:
        summary = probe(value)
        if not summary.meets_slo:
            bad = summary
            break
        if good is not None and mode != "open":
            gain = summary.throughput_rps / max(good.throughput_rps, 1e-9)
            if gain < 1.05:  # more in flight adds only queueing from here
                good = summary
                break
        good = summary
        value *= 2
    if mode == "open" and good is not None and bad is not None:
        low, high = float(good.rate or 0.0), float(bad.rate or 0.0)
        for _ in range(3):
            middle = (low + high) / 2
            summary = probe(middle)
            if summary.meets_slo:
                good, low = summary, middle
            else:
                high = middle
    capacity = Capacity(
        mode=mode,
        slo=slo,
        found=good is not None,
        level=good.label if good else None,
        concurrency=good.concurrency if good else None,
        rate=good.rate if good else None,
        throughput_rps=good.throughput_rps if good else None,
        first_breach=bad.label if bad else None,
        note=""
        if good
        else f"even {measured[0].label} breaches the SLO"
        if measured
        else "nothing measured",
    )
    return measured, capacity


# --- saving and baselines -------------------------------------------------------------------------


def bench_dir(home: Path, subject: Subject) -> Path:
    """Where runs of `subject` are saved (and found as baselines)."""
    if subject.name:
        return Home(home).bench(subject.name, subject.version or "")
    from urllib.parse import urlsplit

    parts = urlsplit(subject.url or "")
    return Home(home).bench_url(str(parts.hostname), parts.port)


def save(home: Path, subject: Subject, result: BenchResult) -> Path:
    """Keep `result` as a file under the subject's folder (a baseline for later runs)."""
    from cpmai.fsutil import write_atomic

    folder = bench_dir(home, subject)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = result.time.replace(":", "").replace("-", "")
    path = folder / f"{stamp}-{os.getpid()}.json"
    write_atomic(path, json.dumps(result.to_json(), indent=1).encode())
    return path


def load_baseline(home: Path, subject: Subject, which: str) -> tuple[Path, BenchResult]:
    """`latest` (the newest saved run of this model, any version), an ENV (the newest run of
    the version live there: what a regression check in CI compares with), a VERSION, or a
    FILE."""
    candidate = Path(which)
    if which not in ("latest",) and candidate.suffix == ".json":
        if not candidate.is_file():
            raise UsageError(f"--baseline {which}: file not found")
        return candidate, _read_run(candidate)
    described = which
    if subject.name:
        root = Home(home).bench(subject.name)
        live = _live_in(home, subject.name, which)
        if live is not None:
            which, described = live, f"{which} (live there: {live})"
        folders = [root / which] if which != "latest" else [p for p in root.glob("*") if p.is_dir()]
    else:
        folders = [bench_dir(home, subject)]
    runs = sorted((p for folder in folders for p in folder.glob("*.json")), key=lambda p: p.name)
    if not runs:
        of = f" for {subject.name}" + ("" if which == "latest" else f" {which}")
        if subject.name and which not in ("latest",) and described == which:
            of += f" (nor is {which} an environment {subject.name} was deployed to)"
        raise UsageError(
            f"--baseline {described}: no saved benchmark run found" + (of if subject.name else ""),
            hint="run `cpmai bench` once to save one (runs are kept under .cpmai/bench/)",
        )
    return runs[-1], _read_run(runs[-1])


def _live_in(home: Path, name: str, env: str) -> str | None:
    """The version of `name` live in `env`, when `env` is an environment the ledger knows for
    it (None otherwise: `env` is then a version); UsageError when nothing is live there."""
    from cpmai.ledger import Ledger
    from cpmai.replay import replay

    state = replay(Ledger(home).events())
    if env not in state.envs_of(name):
        return None
    live = state.env(name, env).live
    if live is None:
        raise UsageError(
            f"--baseline {env}: nothing of {name} is live in {env} now",
            hint="compare with a VERSION, `latest` or a result FILE instead",
        )
    return live.version


def _read_run(path: Path) -> BenchResult:
    try:
        return load_result(path)
    except UsageError as exc:
        raise UsageError(f"--baseline {exc.message}", hint=exc.hint) from None


@dataclass
class Request:
    """Everything `benchmark` needs besides the subject."""

    levels: list[Level]
    settings: Settings
    slo: dict[str, float] | None = None
    slo_source: str = ""
    capacity: tuple[str, float, int, int] | None = None
    """(mode, start, batch size, connections) to search for capacity instead of `levels`."""
    baseline: str | None = None
    threshold: float = 1.10
    force: bool = False
    save: bool = True


def benchmark(home: Path, subject: Subject, request: Request, progress: Progress) -> BenchResult:
    """Measure, check, compare and save; returns the result document (docs/bench.schema.json).
    `breached` on it (and its `exit_code`, 4) says an SLO was breached or a regression found."""
    from cpmai.bench.resources import Sampler, machine
    from cpmai.bench.result import Machine, Resources
    from cpmai.bench.verdicts import check_slo, compare

    baseline = None
    if request.baseline:  # read it first: a bad --baseline fails before minutes of load
        baseline = load_baseline(home, subject, request.baseline)
    sampler = Sampler(subject.pid) if subject.pid else None
    capacity = None
    started = time.perf_counter()
    if sampler is not None:
        sampler.__enter__()
    try:
        if request.capacity is not None:
            assert request.slo, "capacity search needs an SLO"
            mode, start, batch, connections = request.capacity
            levels, capacity = find_capacity(
                subject,
                mode,
                start,
                request.settings,
                request.slo,
                progress,
                batch_size=batch,
                connections=connections,
            )
        else:
            levels = run_levels(subject, request.levels, request.settings, progress)
    finally:
        if sampler is not None:
            sampler.__exit__()
    dead = [level for level in levels if level.requests and not level.ok]
    if dead:
        from cpmai.errors import TargetError

        kinds = ", ".join(f"{k} ×{n}" for k, n in dead[0].errors.items())
        where = subject.url or f"{subject.name} {subject.version}"
        raise TargetError(
            f"no request to {where} succeeded at {dead[0].label} ({kinds}): nothing to measure",
            hint="is the server running and is this its protocol (--protocol mlflow|oip)?",
        )
    result = BenchResult(
        time=iso(),
        seconds=round(time.perf_counter() - started, 3),
        target=subject.to_target(),
        machine=Machine(**machine()),
        settings=request.settings,
        levels=levels,
        resources=Resources(**sampler.summary()) if sampler else None,
        capacity=capacity,
        warnings=[w for level in levels for w in warnings_for(level)],
    )
    if request.slo:
        checked = levels
        if capacity is not None:  # the verdict is on the level found (or the first tried)
            chosen = [lv for lv in levels if lv.label == capacity.level] or levels[:1]
            checked = chosen
        checks = check_slo(checked, request.slo)
        result.slo = SloResult(source=request.slo_source, thresholds=request.slo, checks=checks,
                               passed=all(c.passed for c in checks))  # fmt: skip
    if subject.pid is None and subject.kind == "http":
        result.warnings.append(
            "no resource figures: the server's process was not found (pass --pid)"
        )
    if baseline is not None:
        path, data = baseline
        result.baseline = compare(
            result, data, threshold=request.threshold, force=request.force, file=str(path)
        )
    result.judge()
    if request.save:
        result.saved_to = str(save(home, subject, result))
    return result
