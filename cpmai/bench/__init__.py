"""Benchmarking: the load generator, the in-process runner, histograms, verdicts, reports."""

MAX_CONCURRENCY = 1024
MAX_RATE = 1_000_000.0
