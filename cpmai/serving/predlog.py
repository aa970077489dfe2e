"""The prediction log: every served request (or a sample of the successful ones), as JSON lines
under `logs/NAME/ENV/`, written off the request path.

The request path serializes its line at once (orjson, a few microseconds) and appends the bytes
to a list: holding bytes rather than thousands of live dicts keeps the garbage collector from
pausing the server. A background thread swaps the list out at least once a second and appends it
to `predictions-YYYY-MM-DD-PID.jsonl` in one write, so `cpmai monitor` sees what was served a
second ago. One file per process and day: with several workers no two processes append to the
same file.

A line: {"model", "version", "endpoint", "status", "sample_rate", "time", "latency_ms", "rows",
"id", "inputs": {name: [values]}, "outputs": [...], "probabilities", "warnings", "error"} —
`null` where a field does not apply.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

FLUSH_SECONDS = 1.0
MAX_BUFFER = 200_000


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
        self._buffer: deque[bytes] = deque()
        self._heads: dict[tuple[str, int], bytes] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._second = -1
        self._prefix = ""
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
        """Called on the request path: about a microsecond — the constant fields are
        pre-serialized, orjson writes the variable ones, a deque takes the line (no lock)."""
        if status < 400 and self.sample_rate < 1.0 and random.random() >= self.sample_rate:
            return
        try:
            variable = orjson.dumps(
                {
                    "id": request_id,
                    "inputs": inputs,
                    "outputs": outputs,
                    "probabilities": probabilities,
                    "warnings": warnings or None,
                    "error": error,
                }
            )
        except TypeError:  # something orjson cannot write (an odd client id): keep the line
            variable = orjson.dumps({"id": repr(request_id), "outputs": outputs, "error": error})
        head = self._heads.get((endpoint, status))
        if head is None:
            head = self._heads[(endpoint, status)] = orjson.dumps(
                {
                    "model": self.model,
                    "version": self.version,
                    "endpoint": endpoint,
                    "status": status,
                    "sample_rate": self.sample_rate if status < 400 else 1.0,
                }
            )[:-1]
        line = b'%s,"time":"%s","latency_ms":%.4f,"rows":%d,%s\n' % (
            head,
            self._now().encode(),
            latency_s * 1000,
            rows,
            variable[1:],
        )
        if len(self._buffer) >= MAX_BUFFER:  # the disk cannot keep up: count, never block
            self.dropped += 1
            return
        self._buffer.append(line)

    def _now(self) -> str:
        moment = time.time()
        second = int(moment)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((moment - second) * 1_000_000):06d}Z"

    def flush(self) -> int:
        """Write what is buffered; returns the number of lines written."""
        buffer = self._buffer
        chunks = [buffer.popleft() for _ in range(len(buffer))]  # deque pops: thread-safe
        if not chunks:
            return 0
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        path = self.folder / f"predictions-{day}-{os.getpid()}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, b"".join(chunks))
        finally:
            os.close(fd)
        self.written += len(chunks)
        return len(chunks)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            try:
                self.flush()
            except OSError:  # a full disk must not kill the server; the next second retries
                time.sleep(self.flush_seconds)

    def close(self) -> None:
        """Stop the thread and write what is left (on shutdown)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()
