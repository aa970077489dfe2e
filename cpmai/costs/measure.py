"""What the cost model is fed: when each environment was live, what its servers used, what they
served, how much a benchmark says they can carry, and which retraining runs triggers asked for."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cpmai.clock import parse_time
from cpmai.costs.document import Capacity
from cpmai.home import Home
from cpmai.ledger import Event
from cpmai.replay import LIVE_ACTIONS

if TYPE_CHECKING:
    from cpmai.bench.result import BenchResult, LevelResult
    from cpmai.predlog.reader import Traffic


@dataclass(frozen=True)
class Interval:
    """A version live in an environment from `start` to `end` (None: still live)."""

    version: str
    start: float
    end: float | None
    url: str | None

    def overlap(self, low: float, high: float) -> float:
        end = high if self.end is None else min(self.end, high)
        return max(0.0, end - max(self.start, low))


def live_intervals(events: Iterable[Event], name: str, env: str) -> list[Interval]:
    """Each stretch a version was live in `env`, oldest first, from the ledger."""
    out: list[Interval] = []
    current: tuple[str, float, str | None] | None = None
    for event in events:
        if event.name != name or event.env != env:
            continue
        moment = event.when.timestamp()
        if event.action in LIVE_ACTIONS and event.version and event.details.get("result") == "live":
            if current is not None:
                out.append(Interval(current[0], current[1], moment, current[2]))
            url = event.details.get("url")
            current = (event.version, moment, str(url) if url else None)
        elif event.action == "stop" and current is not None:
            out.append(Interval(current[0], current[1], moment, current[2]))
            current = None
    if current is not None:
        out.append(Interval(current[0], current[1], None, current[2]))
    return out


def live_seconds(
    intervals: list[Interval], low: float, high: float, version: str | None = None
) -> float:
    return sum(i.overlap(low, high) for i in intervals if version is None or i.version == version)


def triggered_runs(events: Iterable[Event], name: str, low: float, high: float) -> int:
    """Retraining runs triggers called for in [low, high): one per monitor check that fired any
    trigger (its `trigger` events share version, environment and the period judged)."""
    firings = {
        (e.version, e.env, json.dumps(e.details.get("period") or e.time[:19], sort_keys=True))
        for e in events
        if e.action == "trigger" and e.name == name and low <= e.when.timestamp() < high
    }
    return len(firings)


def first_live(events: Iterable[Event], name: str) -> float | None:
    for event in events:
        if (
            event.name == name
            and event.action in LIVE_ACTIONS
            and event.details.get("result") == "live"
        ):
            return parse_time(event.time).timestamp()
    return None


def bench_runs(home: Path, name: str, version: str) -> list[tuple[Path, BenchResult]]:
    """Saved `cpmai bench` results of a version, oldest first (unreadable ones skipped)."""
    from cpmai.bench.result import saved_runs

    return saved_runs(Home(home).bench(name, version))


def capacity(
    home: Path, name: str, version: str, url: str | None, slo: dict[str, float]
) -> Capacity | None:
    """The sustained predictions/s at the SLO from the newest benchmark of this version — of the
    environment's own server when one was benchmarked (same port), else of any server, else in
    process (the model alone: an upper bound, the server adds parsing and HTTP). None: never
    benchmarked."""
    from cpmai.stats import check_slo, slo_measures

    runs = bench_runs(home, name, version)
    if not runs:
        return None
    port = urlsplit(url).port if url else None

    def rank(run: tuple[Path, BenchResult]) -> tuple[int, str]:
        target = run[1].target
        same = target.url and port and urlsplit(target.url).port == port
        return (2 if same else 1 if target.kind == "http" else 0, run[0].name)

    path, data = max(runs, key=rank)
    target = data.target
    kind = "this environment's server" if rank((path, data))[0] == 2 else (
        "another server" if target.kind == "http" else "in process (the model alone)"
    )  # fmt: skip
    levels = [lv for lv in data.levels if lv.ok]
    found = data.capacity
    chosen: LevelResult | None = None
    note = ""
    if found is not None and found.found:
        chosen = next((lv for lv in levels if lv.label == found.level), None)
        note = "the capacity `cpmai bench --find-capacity` found"
    if chosen is None and levels:
        bounds = {k: v for k, v in slo.items() if k != "throughput_min"}
        passing = [
            lv
            for lv in levels
            if all(
                c.passed
                for c in check_slo(
                    slo_measures(lv.latency_ms.model_dump(), lv.error_rate, lv.throughput_rps),
                    bounds,
                )
            )
        ]
        if passing:
            chosen = max(passing, key=lambda lv: lv.rows_per_s)
            note = "the busiest level that met the SLO" if bounds else "the busiest level (no SLO)"
        else:
            note = "no benchmarked level met the SLO"
    return Capacity(
        file=str(path),
        time=data.time,
        source=kind,
        level=chosen.label if chosen else None,
        predictions_per_s=round(chosen.rows_per_s, 3) if chosen else None,
        requests_per_s=round(chosen.throughput_rps, 3) if chosen else None,
        p99_ms=chosen.latency_ms.p99_ms if chosen else None,
        note=note,
    )


def bench_windows(home: Path, name: str, urls: set[str]) -> list[tuple[float, float]]:
    """When `cpmai bench` loaded one of these servers: its requests are in the prediction log
    but are not business traffic."""
    ports = {urlsplit(u).port for u in urls}
    out = []
    folder = Home(home).bench(name)
    for version in sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []:
        for _, data in bench_runs(home, name, version):
            target = data.target
            if target.kind != "http" or urlsplit(str(target.url)).port not in ports:
                continue
            end = parse_time(data.time).timestamp() + 1  # the time is rounded down
            out.append((end - data.seconds - 1, end))
    return out


def excluded_seconds(windows: list[tuple[float, float]], low: float, high: float) -> float:
    return sum(max(0.0, min(b, high) - max(a, low)) for a, b in windows)


def served(traffic: Traffic, low: float, high: float, *, include_synthetic: bool) -> dict[str, Any]:
    """Requests and predictions (rows answered 200) in [low, high), weighted by 1/sample rate,
    per version too; synthetic requests (load tests) counted apart, and counted in only if
    `include_synthetic`."""
    from cpmai.monitor.summaries import synthetic_summary
    from cpmai.predlog.reader import synthetic_by_source

    mask = (traffic.time >= low) & (traffic.time < high)
    synthetic = synthetic_by_source(traffic, mask)
    if synthetic and not include_synthetic:
        mask &= traffic.origin < 0
    ok = mask & (traffic.status == 200)
    per_version: dict[str, int] = {}
    if traffic.requests:
        rows = traffic.rows * traffic.weight
        for index, version in enumerate(traffic.versions):
            count = float(rows[ok & (traffic.version == index)].sum())
            if count:
                per_version[version] = round(count)
    return {
        "requests": round(float(traffic.weight[mask].sum())) if traffic.requests else 0,
        "predictions": round(float((traffic.rows * traffic.weight)[ok].sum()))
        if traffic.requests
        else 0,
        "errors": round(float(traffic.weight[mask & (traffic.status != 200)].sum()))
        if traffic.requests
        else 0,
        "per_version": per_version,
        "synthetic": synthetic_summary(synthetic, include_synthetic),
    }
