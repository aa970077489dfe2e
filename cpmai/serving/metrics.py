"""Prometheus metrics of one server process (text format 0.0.4 on GET /metrics).

Names follow Prometheus conventions: the `cpmai_` prefix, base units (`_seconds`), `_total` on
counters, and only bounded label values (endpoint names and status codes, never request ids).
Latency buckets start at 100 µs: the client library's defaults start at 5 ms, coarser than a
whole ONNX request.

The request path only bumps plain integers (the event loop is the only writer, so no lock is
needed); prometheus_client turns them into the exposition format when /metrics is scraped, and
adds its standard process metrics (`process_cpu_seconds_total`,
`process_resident_memory_bytes`, ...), and the watcher's gauges of the environment
(`WatchGauges`).
"""

from __future__ import annotations

import os
import re
import stat
from bisect import bisect_left
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from cpmai.serving.origin import REAL

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Histogram:
    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf only)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append((_le(bound), float(running)))
        out.append(("+Inf", float(self.count)))
        return out


def _le(bound: float) -> str:
    return repr(float(bound))


class ServerMetrics:
    def __init__(self, name: str, version: str, runtime: str) -> None:
        self.info = (name, version, runtime)
        self.requests: dict[tuple[str, int, str], int] = {}
        """By (endpoint, status, origin label)."""
        self.latency: dict[tuple[str, str], _Histogram] = {}
        """By (endpoint, origin label)."""
        self.batch_rows = _Histogram(tuple(float(b) for b in BATCH_BUCKETS))
        self.rows = 0
        self.out_of_range: dict[str, int] = {}
        self.log_dropped: Callable[[], int] = lambda: 0
        self.gauges: WatchGauges | None = None
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.registry.register(self)

    def add_gauges(self, path: Path) -> None:
        """Append the watcher's gauges file (`watch/NAME/ENV/gauges.prom`) to /metrics."""
        self.gauges = WatchGauges(path, {family.name for family in self.collect()})
        self.registry.register(self.gauges)

    def observe(self, endpoint: str, status: int, seconds: float, origin: str = REAL) -> None:
        """One answered request; `origin` is its label (`cpmai.serving.origin.label`)."""
        key = (endpoint, status, origin)
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.latency.get((endpoint, origin))
        if histogram is None:
            histogram = self.latency[endpoint, origin] = _Histogram(LATENCY_BUCKETS)
        histogram.observe(seconds)

    def observe_batch(self, rows: int) -> None:
        self.batch_rows.observe(rows)
        self.rows += rows

    def out_of_range_value(self, input_name: str) -> None:
        self.out_of_range[input_name] = self.out_of_range.get(input_name, 0) + 1

    def collect(self) -> Iterator[Any]:
        """prometheus_client's collector protocol: called on each scrape."""
        requests = CounterMetricFamily(
            "cpmai_requests",
            "HTTP requests by endpoint, status code and origin (real, or synthetic: marked "
            "X-Cpmai-Traffic as load tests are).",
            labels=["endpoint", "status", "origin"],
        )
        for (endpoint, status, origin), count in sorted(self.requests.items()):
            requests.add_metric([endpoint, str(status), origin], count)
        yield requests
        latency = HistogramMetricFamily(
            "cpmai_request_duration_seconds",
            "Time from request to response, by endpoint and origin.",
            labels=["endpoint", "origin"],
        )
        for (endpoint, origin), histogram in sorted(self.latency.items()):
            latency.add_metric([endpoint, origin], histogram.buckets(), histogram.total)
        yield latency
        batches = HistogramMetricFamily(
            "cpmai_batch_rows",
            "Rows per model call (after micro-batching).",
        )
        batches.add_metric([], self.batch_rows.buckets(), self.batch_rows.total)
        yield batches
        yield CounterMetricFamily("cpmai_predicted_rows", "Rows scored.", value=self.rows)
        ranges = CounterMetricFamily(
            "cpmai_input_out_of_range",
            "Values outside the reference data's range, by input.",
            labels=["input"],
        )
        for input_name, count in sorted(self.out_of_range.items()):
            ranges.add_metric([input_name], count)
        yield ranges
        yield CounterMetricFamily(
            "cpmai_prediction_log_dropped",
            "Log lines dropped because the disk fell behind.",
            value=self.log_dropped(),
        )
        info = GaugeMetricFamily(
            "cpmai_model_info",
            "The model this process serves (value 1).",
            labels=["name", "version", "runtime"],
        )
        info.add_metric(list(self.info), 1)
        yield info

    def render(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data


def merged_registry(sources: Callable[[], list[tuple[str, ServerMetrics]]]) -> CollectorRegistry:
    """A registry exposing the metrics of several versions served by one process, each sample
    labelled with its `version`, plus the process metrics once."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    registry.register(_Merged(sources))
    return registry


class _Merged:
    def __init__(self, sources: Callable[[], list[tuple[str, ServerMetrics]]]) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Any]:
        from prometheus_client.metrics_core import Metric

        merged: dict[str, Any] = {}
        for version, metrics in self.sources():
            for family in metrics.collect():
                target = merged.get(family.name)
                if target is None:
                    target = merged[family.name] = Metric(
                        family.name, family.documentation, family.type
                    )
                for sample in family.samples:
                    labels = sample.labels
                    if "version" not in labels:
                        labels = {**labels, "version": version}
                    target.add_sample(sample.name, labels, sample.value)
        yield from merged.values()
        gauges = next((m.gauges for _, m in self.sources() if m.gauges is not None), None)
        if gauges is not None:  # one file per environment: once, not once per version
            yield from gauges.collect()


GAUGES_MAX_BYTES = 4 * 1024 * 1024
"""A larger gauges file is not appended (the watcher writes a few kilobytes)."""
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_VALUE = r"[-+]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|Inf|NaN)"
_SAMPLE = re.compile(
    rf"({_NAME})(?:\{{(?:{_LABEL}(?:,{_LABEL})*,?)?\}})?[ \t]+{_VALUE}(?:[ \t]+-?[0-9]+)?[ \t]*"
)
_META = re.compile(rf"#[ \t]+(?:HELP[ \t]+({_NAME})(?:[ \t].*)?|TYPE[ \t]+({_NAME})[ \t]+"
                   r"(?:counter|gauge|histogram|summary|untyped))[ \t]*")  # fmt: skip


class WatchGauges:
    """The watcher's gauges (`watch/NAME/ENV/gauges.prom`, written by `cpmai.monitor.gauges`),
    appended to /metrics: a collector whose families are read again only when the file changed
    (inode, mtime, size: one stat call per scrape otherwise).

    A missing file adds nothing; so does one that is not a regular file, cannot be read, is
    larger than GAUGES_MAX_BYTES, is not UTF-8, has a line that is not exposition text (a
    sample, a HELP or TYPE line, a comment or blank), repeats a series or a family, or names a
    series of the server's own (`reserved`, and `process_*`): whatever the file holds, /metrics
    still answers with the server's series."""

    def __init__(self, path: Path, reserved: set[str]) -> None:
        self.path = path
        self.reserved = reserved
        self.stamp: tuple[int, int, int] | None = None
        self.families: list[Any] = []

    def collect(self) -> Iterator[Any]:
        """prometheus_client's collector protocol: called on each scrape; never raises."""
        try:
            info = self.path.stat()
        except (OSError, ValueError):
            self.stamp, self.families = None, []
            return
        if (info.st_ino, info.st_mtime_ns, info.st_size) != self.stamp:
            try:
                self.stamp, self.families = self._read()
            except Exception:  # anything unexpected: nothing appended, /metrics still answers
                self.stamp, self.families = None, []
        yield from self.families

    def _read(self) -> tuple[tuple[int, int, int] | None, list[Any]]:
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(fd)
            stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
            if not stat.S_ISREG(info.st_mode) or info.st_size > GAUGES_MAX_BYTES:
                return stamp, []
            data = handle.read(GAUGES_MAX_BYTES + 1)
        if len(data) > GAUGES_MAX_BYTES:
            return stamp, []
        try:
            text = data.decode()
        except UnicodeDecodeError:
            return stamp, []
        return stamp, self._parse(text)

    def _parse(self, text: str) -> list[Any]:
        """The families of `text`, or none if any line is not what the module allows."""
        from prometheus_client.parser import text_string_to_metric_families

        for line in text.splitlines():
            if not line.strip():
                continue
            match = _SAMPLE.fullmatch(line)
            if match is None and line.startswith("#"):
                match = _META.fullmatch(line)
                if match is None and re.match(r"#[ \t]*(HELP|TYPE)\b", line):
                    return []
                if match is None:
                    continue  # a plain comment
            if match is None or self._clashes(match.group(1) or match.group(2)):
                return []
        families = list(text_string_to_metric_families(text))
        names = [family.name for family in families]
        series = [(s.name, tuple(sorted(s.labels.items()))) for f in families for s in f.samples]
        if len(set(names)) != len(names) or len(set(series)) != len(series):
            return []  # Prometheus would refuse the whole scrape
        return families

    def _clashes(self, name: str) -> bool:
        return name.startswith("process_") or any(
            name == own or name.startswith(f"{own}_") for own in self.reserved
        )
