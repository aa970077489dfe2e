"""Prometheus metrics of one server process (text format 0.0.4 on GET /metrics).

Names follow Prometheus conventions: the `cpmai_` prefix, base units (`_seconds`), `_total` on
counters, and only bounded label values (endpoint names and status codes, never request ids).
Latency buckets start at 100 µs: the client library's defaults start at 5 ms, coarser than a
whole ONNX request.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# `_created` series double the output and no dashboard reads them
disable_created_metrics()  # type: ignore[no-untyped-call]


class ServerMetrics:
    def __init__(self, name: str, version: str, runtime: str) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, ..._memory_bytes
        self.requests = Counter(
            "cpmai_requests",
            "HTTP requests by endpoint and status code.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cpmai_request_duration_seconds",
            "Time from request to response, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "cpmai_batch_rows",
            "Rows per model call (after micro-batching).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.rows = Counter(
            "cpmai_predicted_rows",
            "Rows scored.",
            registry=self.registry,
        )
        self.out_of_range = Counter(
            "cpmai_input_out_of_range",
            "Values outside the reference data's range, by input.",
            ["input"],
            registry=self.registry,
        )
        info = Gauge(
            "cpmai_model_info",
            "The model this process serves (value 1).",
            ["name", "version", "runtime"],
            registry=self.registry,
        )
        info.labels(name, version, runtime).set(1)
        self._children: dict[tuple[str, int], Any] = {}
        self._latency_children: dict[str, Any] = {}

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one request (label children cached: no label lookup per request)."""
        child = self._children.get((endpoint, status))
        if child is None:
            child = self._children[(endpoint, status)] = self.requests.labels(endpoint, str(status))
        child.inc()
        latency = self._latency_children.get(endpoint)
        if latency is None:
            latency = self._latency_children[endpoint] = self.latency.labels(endpoint)
        latency.observe(seconds)

    def render(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data
