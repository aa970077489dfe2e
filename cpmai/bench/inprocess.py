"""The in-process benchmark: the model's predict path alone (no HTTP), closed loop.

`concurrency` threads each call the predictor on `batch_size` rows at a time, back to back. The
timing around each call is two `perf_counter_ns` reads and a list append (measured by
`timing_overhead_ns`: well under the 2 µs budget), folded into histograms once a second.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from cpmai.bench.recorder import LoadResult, Recorder


def make_batches(rows: list[dict[str, Any]], batch_size: int, limit: int = 64) -> list[Any]:
    """Column dicts of `batch_size` rows each, cycling through `rows` (at most `limit`)."""
    names = list(rows[0])
    batches = []
    for start in range(0, max(limit, 1) * batch_size, batch_size):
        chunk = [rows[(start + i) % len(rows)] for i in range(batch_size)]
        batches.append({n: [row[n] for row in chunk] for n in names})
        if len(batches) >= limit:
            break
    return batches


def run_inprocess(
    call: Any,
    batches: list[Any],
    *,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    min_requests: int = 0,
    max_duration_s: float = 60.0,
) -> LoadResult:
    """Call `call(batch)` from `concurrency` threads; returns what was measured."""
    start = time.perf_counter_ns()
    measure_from = start + int(warmup_s * 1e9)
    measure_until = measure_from + int(duration_s * 1e9)
    hard_stop = measure_from + int(max_duration_s * 1e9)
    recorders = [Recorder(measure_from) for _ in range(concurrency)]
    counted = [0] * concurrency
    stop = threading.Event()

    def worker(index: int) -> None:
        recorder = recorders[index]
        samples_append = recorder.samples.append
        clock = time.perf_counter_ns
        n = len(batches)
        i = index
        while not stop.is_set():
            batch = batches[i % n]
            i += 1
            begin = clock()
            try:
                call(batch)
                ok = True
            except Exception:  # a failing call is an error outcome, not a crash of the run
                ok = False
            end = clock()
            if begin < measure_from:
                continue
            if (end - measure_from) // 1_000_000_000 != recorder.window:
                recorder.tick(end)
                samples_append = recorder.samples.append  # fold() made a new list
            samples_append(end - begin)
            recorder.outcome(ok, "exception")
            counted[index] += 1
            if end >= hard_stop or (end >= measure_until and sum(counted) >= min_requests):
                stop.set()
        recorder.fold()
        recorder.result.measured_s = (clock() - measure_from) / 1e9

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    merged = recorders[0].result
    for other in recorders[1:]:
        merged.merge(other.result)
    return merged


def timing_overhead_ns(calls: int = 200_000) -> float:
    """What the timing itself costs per call: the benchmark loop around a call that does
    nothing, in nanoseconds (median of 5 runs)."""
    import statistics

    recorder = Recorder(0)
    runs = []
    for _ in range(5):
        samples_append = recorder.samples.append
        clock = time.perf_counter_ns
        begin_all = clock()
        for _ in range(calls):
            begin = clock()
            end = clock()
            samples_append(end - begin)
        runs.append((clock() - begin_all) / calls)
        recorder.samples.clear()
    return float(statistics.median(runs))
