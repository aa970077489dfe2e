"""Prometheus metrics of one server process (text format 0.0.4 on GET /metrics).

Names follow Prometheus conventions: the `cpmai_` prefix, base units (`_seconds`), `_total` on
counters, and only bounded label values (endpoint names and status codes, never request ids).
Latency buckets start at 100 µs: the client library's defaults start at 5 ms, coarser than a
whole ONNX request.

The request path only bumps plain integers (the event loop is the only writer, so no lock is
needed); prometheus_client turns them into the exposition format when /metrics is scraped, and
adds its standard process metrics (`process_cpu_seconds_total`,
`process_resident_memory_bytes`, ...).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
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
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.registry.register(self)

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
