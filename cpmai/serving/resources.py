"""The serving process's own resource samples, written beside the prediction log.

A thread wakes every `monitoring.sample_interval_s` (5 s by default) and appends one JSON line
to `logs/NAME/ENV/resources-YYYY-MM-DD-PID.jsonl`: time, pid, live version, CPU % since the last
sample (100 = one core), cumulative CPU seconds, RSS bytes, threads. One psutil read per sample
(what that costs: docs/performance.md, benchmarks/sampler.py). They are what `cpmai monitor`
and `cpmai cost` read (`cpmai.predlog.reader.read_resources`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from cpmai.clock import iso
from cpmai.predlog.format import RESOURCES, today_file


class ResourceLog:
    """The sampler of one server process, writing beside its prediction log."""

    def __init__(self, folder: Path, interval_s: float, version: Callable[[], str | None]) -> None:
        import psutil

        self.folder = folder
        self.interval_s = interval_s
        self.version = version
        self.process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpmai-resources", daemon=True)
        self._last: tuple[float, float] | None = None
        self.written = 0

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._last = (time.monotonic(), self._cpu_seconds())
        self._thread.start()

    def _cpu_seconds(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def sample(self) -> dict[str, object]:
        now, cpu = time.monotonic(), self._cpu_seconds()
        last_time, last_cpu = self._last or (now, cpu)
        elapsed = now - last_time
        self._last = (now, cpu)
        with self.process.oneshot():
            rss = self.process.memory_info().rss
            threads = self.process.num_threads()
        return {
            "time": iso(timespec="milliseconds"),
            "pid": os.getpid(),
            "version": self.version(),
            "cpu_percent": round(100 * (cpu - last_cpu) / elapsed, 2) if elapsed > 0 else 0.0,
            "cpu_seconds": round(cpu, 3),
            "rss_bytes": rss,
            "threads": threads,
        }

    def write(self) -> None:
        line = orjson.dumps(self.sample()) + b"\n"
        path = today_file(self.folder, RESOURCES)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        self.written += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.write()
            except Exception:  # a full disk or a vanished folder must not hurt serving
                continue

    def close(self) -> None:
        """Stop, with a last sample (so even a short run leaves one)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        try:
            self.write()
        except Exception:
            return
