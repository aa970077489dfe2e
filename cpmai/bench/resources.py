"""Resource use of the measured process (and its children) while a benchmark runs, and the
machine's fingerprint that decides whether two runs may be compared."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import threading
from pathlib import Path
from typing import Any

SAMPLE_SECONDS = 0.25


class Sampler:
    """Samples CPU (per process tree, and per core for the machine), RSS/USS, threads and open
    files every `interval` seconds in a thread. psutil's first `cpu_percent` call returns 0, so
    every process is primed before sampling starts."""

    def __init__(self, pid: int, interval: float = SAMPLE_SECONDS) -> None:
        import psutil

        self.interval = interval
        self.root = psutil.Process(pid)
        self.samples: list[dict[str, float]] = []
        self.per_core: list[list[float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpmai-sampler", daemon=True)
        self._known: dict[int, Any] = {}

    def _tree(self) -> list[Any]:
        import psutil

        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return []
        out = []
        for process in processes:
            known = self._known.get(process.pid)
            if known is None:
                try:
                    process.cpu_percent(None)  # prime
                except psutil.Error:
                    continue
                self._known[process.pid] = process
                continue
            out.append(known)
        return out

    def _run(self) -> None:
        import psutil

        psutil.cpu_percent(None, percpu=True)
        self._tree()
        uss_every = max(1, int(1.0 / self.interval))
        tick = 0
        while not self._stop.wait(self.interval):
            cpu = rss = uss = threads = files = 0.0
            have_uss = tick % uss_every == 0
            for process in self._tree():
                try:
                    with process.oneshot():
                        cpu += process.cpu_percent(None)
                        memory = process.memory_info()
                        rss += memory.rss
                        threads += process.num_threads()
                        files += process.num_fds()
                    if have_uss:
                        uss += process.memory_full_info().uss
                except psutil.Error:
                    continue
            sample = {"cpu_percent": cpu, "rss_bytes": rss, "threads": threads, "open_files": files}
            if have_uss:
                sample["uss_bytes"] = uss
            self.samples.append(sample)
            self.per_core.append(psutil.cpu_percent(None, percpu=True))
            tick += 1

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def summary(self) -> dict[str, Any]:
        """Mean and peak of each figure; CPU as % of one core (200% = two cores busy)."""
        if not self.samples:
            return {"samples": 0}

        def stats(key: str) -> dict[str, float] | None:
            values = [s[key] for s in self.samples if key in s]
            if not values:
                return None
            return {"mean": round(sum(values) / len(values), 2), "peak": round(max(values), 2)}

        cores = len(self.per_core[0]) if self.per_core else 0
        per_core_mean = [
            round(sum(sample[i] for sample in self.per_core) / len(self.per_core), 1)
            for i in range(cores)
        ]
        return {
            "pid": self.root.pid,
            "samples": len(self.samples),
            "interval_s": self.interval,
            "cpu_percent": stats("cpu_percent"),
            "rss_bytes": stats("rss_bytes"),
            "uss_bytes": stats("uss_bytes"),
            "threads": stats("threads"),
            "open_files": stats("open_files"),
            "machine_cpu_percent_per_core": per_core_mean,
        }


def pid_listening_on(port: int) -> int | None:
    """The process listening on a local TCP port (None when psutil may not tell)."""
    import psutil

    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return int(conn.pid) if conn.pid else None
    except (psutil.AccessDenied, OSError):
        return None
    return None


def machine() -> dict[str, Any]:
    """What the figures depend on: CPU model, cores, memory, governor, Python, packages.

    `fingerprint` hashes the hardware and Python version only: runs on the same machine compare
    even after a package upgrade (that is often what a comparison is for)."""
    from importlib import metadata

    import psutil

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    governor = None
    with contextlib.suppress(OSError):
        governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    frequency = psutil.cpu_freq()
    packages = {}
    for dist in ("cpmai", "numpy", "scikit-learn", "onnxruntime", "uvicorn", "pandas"):
        try:
            packages[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    info = {
        "cpu": model or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "frequency_governor": governor,
        "frequency_mhz": round(frequency.max or frequency.current) if frequency else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
    }
    basis = f"{info['cpu']}|{info['cores']}|{info['memory_gib']}|{info['python']}"
    info["fingerprint"] = hashlib.sha256(basis.encode()).hexdigest()[:16]
    return info
