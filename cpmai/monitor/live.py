"""The data behind `cpmai monitor --watch`: the log tailed as it grows.

Each `poll()` reads only the bytes appended since the last one (whole lines), keeps the last
`horizon_s` seconds of requests and at most `max_rows` rows for drift, and returns a snapshot:
requests/s and p99 per `bucket_s` bucket (sparklines), error rate and percentiles over the last
minute, CPU and memory from the newest resource samples, drift per feature over the horizon,
SLO bounds and the live version (a `Snapshot`). Rendering is the CLI's business.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cpmai.monitor.result import FeatureDrift
from cpmai.monitor.run import drift_all
from cpmai.monitor.subject import (
    Profiles,
    Subject,
    choose_version,
    load_subject,
    newest_logged_version,
    reference_profiles,
)
from cpmai.predlog.accumulate import Piece, parse_piece
from cpmai.predlog.format import log_files
from cpmai.predlog.parts import join_parts
from cpmai.predlog.reader import as_traffic, read_resources, set_apart
from cpmai.stats import nearest_rank

FIRST_READ_BYTES = 32 << 20
"""On start, read at most this much of each file's end: the view is about the last minutes."""


@dataclass(frozen=True)
class LastMinute:
    """Real traffic of the last minute: requests, error rate and latency percentiles (None:
    nothing answered)."""

    requests: int
    requests_per_s: float
    error_rate: float | None
    p50_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class LiveResources:
    """CPU (100 = one core) and RSS of the serving processes, from each one's newest sample."""

    processes: int
    cpu_percent: float
    rss_mb: float


@dataclass(frozen=True)
class Snapshot:
    """What `cpmai monitor --watch` shows at one moment."""

    time: float
    name: str
    env: str
    live_version: str | None
    version: str | None
    """The version whose rows are read (the live one, else the newest logged)."""
    rps: list[float]
    """Requests/s per bucket, oldest first."""
    p99_ms: list[float]
    """p99 latency per bucket (0: nothing answered in it), oldest first."""
    minute: LastMinute
    slo: dict[str, float]
    """The manifest's SLO bounds (metric → bound)."""
    resources: LiveResources | None
    """None: no sample in the last 30 s."""
    drift: list[FeatureDrift]
    """Each feature's drift over the horizon against the reference data."""
    synthetic: dict[str, int]
    """Synthetic requests (load tests) over the horizon by source, left out of the rest."""
    horizon_s: float


class LiveMonitor:
    """The log of one environment tailed: `poll()` reads what was appended and gives a
    `Snapshot`."""

    def __init__(
        self,
        home: Path,
        name: str,
        env: str,
        *,
        horizon_s: float = 300.0,
        bucket_s: float = 2.0,
        buckets: int = 60,
        max_rows: int = 200_000,
    ) -> None:
        from cpmai.home import Home

        self.home, self.name, self.env = home, name, env
        self.folder = Home(home).env(name, env).logs
        self.horizon_s, self.bucket_s, self.buckets = horizon_s, bucket_s, buckets
        self.max_rows = max_rows
        self.offsets: dict[str, int] = {}
        self.chunks: deque[dict[str, Any]] = deque()
        """What each poll read (parts joined by `cpmai.predlog.parts.join_parts`), oldest
        first."""
        self.subject: Subject | None = None
        self.profiles: Profiles = {}
        self.live_version: str | None = None

    def _ensure_subject(self) -> None:
        version, since, state = choose_version(self.home, self.name, self.env, None)
        self.live_version = version
        focus = version or newest_logged_version(self.folder)
        if focus is None or (self.subject and self.subject.artifact.version == focus):
            return
        self.subject = load_subject(self.home, self.name, focus, None, since, state)
        self.profiles, _, _ = reference_profiles(self.subject)
        self.chunks.clear()  # rows of another version: not this one's drift

    def poll(self, now: float | None = None) -> Snapshot:
        """Read what was appended since the last poll and return the view at `now`."""
        now = time.time() if now is None else now
        self._ensure_subject()
        if self.subject is not None:
            self._read_new(now)
        self._trim(now)
        return self._snapshot(now)

    def _read_new(self, now: float) -> None:
        assert self.subject is not None
        subject = self.subject
        job = (
            subject.artifact.version,
            subject.specs,
            subject.output_kind,
            None,
            None,
            False,
            subject.classes,
        )
        parts = []
        for path in log_files(self.folder, "predictions", now - self.horizon_s, now):
            key = str(path)
            size = path.stat().st_size
            start = self.offsets.get(key)
            if start is None:
                start = _line_start(path, max(0, size - FIRST_READ_BYTES))
            if size <= start:
                continue
            part = parse_piece(Piece(key, start, size), job)
            parts.append(part)
            self.offsets[key] = part["consumed"]
        if parts:
            self.chunks.append(join_parts(parts, subject.specs, subject.output_kind, False))

    def _trim(self, now: float) -> None:
        while self.chunks and (
            len(self.chunks[0]["time"]) == 0 or self.chunks[0]["time"].max() < now - self.horizon_s
        ):
            self.chunks.popleft()
        while len(self.chunks) > 1 and self._real_rows() > self.max_rows:
            self.chunks.popleft()

    def _real_rows(self) -> int:
        """Rows of real requests held (a load test must not push them out of the drift view)."""
        return sum(int((~c["row_synthetic"]).sum()) for c in self.chunks)

    def _snapshot(self, now: float) -> Snapshot:
        subject = self.subject
        traffic = (
            set_apart(
                as_traffic(
                    join_parts(list(self.chunks), subject.specs, subject.output_kind, False), 0, 0
                ),
                include=False,
            )
            if subject is not None and self.chunks
            else None
        )
        empty = np.zeros(0)
        times = traffic.time if traffic else empty
        status = traffic.status if traffic else empty
        latency = traffic.latency_ms if traffic else empty
        weight = traffic.weight if traffic else empty
        edges = now - self.bucket_s * np.arange(self.buckets, -1, -1)
        which = np.searchsorted(edges, times, side="right") - 1
        inside = (which >= 0) & (which < self.buckets)
        counts = np.bincount(which[inside], weights=weight[inside], minlength=self.buckets)
        rps = counts / self.bucket_s
        p99 = []
        for index in range(self.buckets):
            picked = np.sort(latency[inside & (which == index) & (status < 400)])
            p99.append(nearest_rank(picked, 99) or 0.0)
        minute = times >= now - 60
        ok = status[minute] < 400
        count = float(weight[minute].sum())
        recent = np.sort(latency[minute][ok])
        drift = []
        if subject is not None and traffic is not None:
            settings = subject.manifest.monitoring.drift
            drift = [
                f.document() for f in drift_all(traffic, subject, self.profiles, settings, [])[1]
            ]
        return Snapshot(
            time=now,
            name=self.name,
            env=self.env,
            live_version=self.live_version,
            version=subject.artifact.version if subject else None,
            rps=rps.round(3).tolist(),
            p99_ms=p99,
            minute=LastMinute(
                requests=round(count),
                requests_per_s=round(count / 60, 2),
                error_rate=round(float(weight[minute][~ok].sum()) / count, 4) if count else None,
                p50_ms=nearest_rank(recent, 50),
                p99_ms=nearest_rank(recent, 99),
            ),
            slo=subject.manifest.slo.model_dump(exclude_none=True) if subject else {},
            resources=self._resources(now),
            drift=drift,
            synthetic=traffic.synthetic if traffic else {},
            horizon_s=self.horizon_s,
        )

    def _resources(self, now: float) -> LiveResources | None:
        samples = read_resources(self.folder, now - 60, None)
        if not samples:
            return None
        newest: dict[Any, dict[str, Any]] = {}
        for sample in samples:
            newest[sample.get("pid")] = sample
        fresh = [s for s in newest.values() if s["t"] >= now - 30]
        if not fresh:
            return None
        return LiveResources(
            processes=len(fresh),
            cpu_percent=round(sum(float(s["cpu_percent"]) for s in fresh), 1),
            rss_mb=round(sum(float(s["rss_bytes"]) for s in fresh) / 2**20, 1),
        )


def _line_start(path: Path, offset: int) -> int:
    """The first line start at or after `offset`."""
    if offset == 0:
        return 0
    with path.open("rb") as handle:
        handle.seek(offset - 1)
        if handle.read(1) == b"\n":
            return offset
        handle.readline()
        return handle.tell()
