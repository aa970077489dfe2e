"""The prediction log: every served request (or a sample of the successful ones), as JSON lines
under `logs/NAME/ENV/`, written off the request path.

The request path only appends a tuple to a list. A background thread swaps the list out at least
once a second, serializes it (orjson) and appends it to `predictions-YYYY-MM-DD-PID.jsonl` in one
write, so `cpmai monitor` sees what was served a second ago. One file per process and day: with
several workers no two processes append to the same file.

A line: {"time", "id", "model", "version", "endpoint", "status", "latency_ms", "rows",
"sample_rate", "inputs": {name: [values]}, "outputs": [...], "probabilities"?, "warnings"?,
"error"?}.
"""

from __future__ import annotations

import os
import random
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

FLUSH_SECONDS = 1.0
MAX_BUFFER = 50_000


class PredictionLog:
    def __init__(
        self,
        folder: Path,
        *,
        model: str,
        version: str,
        sample_rate: float = 1.0,
        flush_seconds: float = FLUSH_SECONDS,
    ) -> None:
        self.folder = folder
        self.model = model
        self.version = version
        self.sample_rate = sample_rate
        self.flush_seconds = flush_seconds
        self._buffer: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="cpmai-predlog", daemon=True)
        self._thread.start()

    def record(
        self,
        endpoint: str,
        status: int,
        latency_s: float,
        rows: int,
        inputs: dict[str, list[Any]] | None,
        outputs: list[Any] | None,
        probabilities: list[Any] | None = None,
        warnings: list[str] | None = None,
        error: str | None = None,
        request_id: Any = None,
    ) -> None:
        """Called on the request path: O(1), no I/O, no serialization."""
        if status < 400 and self.sample_rate < 1.0 and random.random() >= self.sample_rate:
            return
        item = (
            time.time(),
            request_id,
            endpoint,
            status,
            latency_s,
            rows,
            inputs,
            outputs,
            probabilities,
            warnings,
            error,
        )
        with self._lock:
            if len(self._buffer) >= MAX_BUFFER:  # the disk cannot keep up: count, do not block
                self.dropped += 1
                return
            self._buffer.append(item)

    def flush(self) -> int:
        with self._lock:
            items, self._buffer = self._buffer, []
        if not items:
            return 0
        lines = bytearray()
        for item in items:
            lines += orjson.dumps(self._line(item), option=orjson.OPT_SERIALIZE_NUMPY)
            lines += b"\n"
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        path = self.folder / f"predictions-{day}-{os.getpid()}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, bytes(lines))
        finally:
            os.close(fd)
        self.written += len(items)
        return len(items)

    def _line(self, item: tuple[Any, ...]) -> dict[str, Any]:
        (
            moment,
            request_id,
            endpoint,
            status,
            latency,
            rows,
            inputs,
            outputs,
            probabilities,
            warnings,
            error,
        ) = item
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(moment, UTC)
            .isoformat(timespec="microseconds")
            .replace("+00:00", "Z"),
            "id": request_id,
            "model": self.model,
            "version": self.version,
            "endpoint": endpoint,
            "status": status,
            "latency_ms": round(latency * 1000, 4),
            "rows": rows,
            "sample_rate": self.sample_rate if status < 400 else 1.0,
        }
        if inputs is not None:
            line["inputs"] = inputs
        if outputs is not None:
            line["outputs"] = outputs
        if probabilities is not None:
            line["probabilities"] = probabilities
        if warnings:
            line["warnings"] = warnings
        if error is not None:
            line["error"] = error
        return line

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            try:
                self.flush()
            except OSError:  # a full disk must not kill the server; retry next second
                time.sleep(self.flush_seconds)

    def close(self) -> None:
        """Stop the thread and write what is left (on shutdown)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()
