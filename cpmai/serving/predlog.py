"""The prediction log: every served request (or a sample of the successful ones) under
`logs/NAME/ENV/`, written off the request path, in columns.

The request path appends the request's fields to the open block's column lists and its input
values, in the signature's order, to one flat list (one C-level `extend`), under an uncontended
lock; the writer rebuilds the input columns and rounds the latencies when it writes the block.
Floats and strings are not tracked by the garbage collector, so holding a second of traffic this
way does not make collections slower. A background thread swaps the block out at least once a
second and appends it to `predictions-YYYY-MM-DD-PID.jsonl` as one JSON line, so `cpmai monitor`
sees what was served a second ago; one file per process and day, so workers never interleave.

Why columns: reading is what costs. A JSON line per request made the reader build a dict and a
list per input per request (about 29 µs a request of 30 inputs on the 2-core machine); a block
of columns loads as flat lists that numpy takes in one call (9–13 µs a request, the same day).
The file is still JSON lines (`jq '.inputs.tenure_months'` works).

A line (format "cpmai-predlog/2"):

    {"format": "cpmai-predlog/2", "model": ..., "version": ..., "pid": ..., "sample_rate": ...,
     "requests": {"t": [epoch seconds], "endpoint": [...], "status": [...],
                  "latency_ms": [...], "rows": [...], "id": [...],
                  "warnings": [null | [...]], "error": [null | "..."]},
     "inputs": {name: [one value per served row]}, "outputs": [one per served row],
     "probabilities": null | [null | [p, ...] per served row],
     "refused": [{"request": i, "inputs": {name: [...]}}]}

Served rows are those of successful requests (status < 400), in request order; `rows` says how
many each request carried (0 for a refused one). `refused` keeps the inputs of refused requests
that had parseable, small inputs (what unseen categories are counted from).

Given the artifact's signature, the writer also indexes the blocks it wrote in columns
(`cpmai.serving.logindex`): what `cpmai monitor` reads instead of parsing JSON.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import Any

import orjson

_chain = chain.from_iterable
_ID_TYPES = (str, int, float, type(None))
FORMAT = "cpmai-predlog/2"
FLUSH_SECONDS = 1.0
BLOCK_ROWS = 1_000
"""A block this big is written at once, not at the end of the second: serializing a block holds
the interpreter, and requests wait for it (1.2 ms for 1,000 rows of 30 inputs here, full
precision floats)."""
MAX_BUFFER = 200_000
"""Requests held before the disk is considered to be falling behind (then new ones are dropped
and counted)."""


class _Block:
    __slots__ = (
        "endpoint",
        "error",
        "flat",
        "ids",
        "inputs",
        "latency",
        "outputs",
        "probabilities",
        "refused",
        "rows",
        "status",
        "times",
        "warnings",
    )

    def __init__(self) -> None:
        self.times: list[float] = []
        self.endpoint: list[str] = []
        self.status: list[int] = []
        self.latency: list[float] = []
        self.rows: list[int] = []
        self.ids: list[Any] = []
        self.warnings: list[Any] = []
        self.error: list[str | None] = []
        self.inputs: dict[str, list[Any]] = {}
        self.flat: list[Any] = []
        """With a signature: each served request's input values, its columns one after the
        other in the signature's order (one C-level `extend` a request; `inputs` is built from
        it when the block is written)."""
        self.outputs: list[Any] = []
        self.probabilities: list[Any] | None = None
        self.refused: list[dict[str, Any]] = []


class PredictionLog:
    def __init__(
        self,
        folder: Path,
        *,
        model: str,
        version: str,
        sample_rate: float = 1.0,
        flush_seconds: float = FLUSH_SECONDS,
        signature: dict[str, Any] | None = None,
    ) -> None:
        """With `signature` (the artifact's), blocks are also indexed in columns
        (`cpmai.serving.logindex`) for fast reading."""
        from cpmai.serving.logindex import feature_kind

        self._kinds: dict[str, str] | None = None
        self._names: tuple[str, ...] | None = None
        self._output_kind = "categorical"
        self._categories: dict[str, list[Any]] = {}
        if signature is not None:
            self._kinds = {s["name"]: feature_kind(s["type"]) for s in signature["inputs"]}
            self._names = tuple(s["name"] for s in signature["inputs"])
            outputs = signature.get("outputs") or [{}]
            self._output_kind = "numeric" if outputs[0].get("type") == "number" else "categorical"
            self._categories = {
                s["name"]: sorted(s.get("categories") or [], key=str) for s in signature["inputs"]
            }
            self._categories["__output__"] = list(outputs[0].get("categories") or [])
        self._pending: list[tuple[int, int, dict[str, Any]]] = []
        self._pending_path: Path | None = None
        self._pending_requests = 0
        self._pending_since = 0.0
        self.folder = folder
        self.model = model
        self.version = version
        self.sample_rate = sample_rate
        self.flush_seconds = flush_seconds
        self._block = _Block()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0
        self._clock = time.time

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
        """Called on the request path: appends to the open block's columns."""
        if status < 400 and self.sample_rate < 1.0 and random.random() >= self.sample_rate:
            return
        served = status < 400 and inputs is not None and outputs is not None
        if not isinstance(request_id, _ID_TYPES):
            request_id = repr(request_id)  # an odd client id must not break the block
        lock = self._lock
        lock.acquire()  # not `with`: 1,500 instructions less a request
        try:
            block = self._block
            if len(block.times) >= MAX_BUFFER:  # the disk cannot keep up: count, never block
                self.dropped += 1
                return
            block.times.append(self._clock())
            block.endpoint.append(endpoint)
            block.status.append(status)
            block.latency.append(latency_s)  # rounded to 0.1 µs when the block is written
            block.ids.append(request_id)
            block.warnings.append(warnings or None)
            block.error.append(error)
            if not served:
                block.rows.append(0)
                if inputs is not None:
                    block.refused.append({"request": len(block.times) - 1, "inputs": inputs})
                return
            assert inputs is not None and outputs is not None
            block.rows.append(len(outputs))
            names = self._names
            if names is not None:
                if tuple(inputs) == names:  # the validator's columns: the usual case
                    block.flat.extend(_chain(inputs.values()))
                else:
                    empty = [None] * len(outputs)
                    block.flat.extend(_chain(inputs.get(name, empty) for name in names))
            else:
                columns = block.inputs
                for name, values in inputs.items():
                    column = columns.get(name)
                    if column is None:
                        column = columns[name] = [None] * len(block.outputs)
                    column.extend(values)
            if probabilities is not None and block.probabilities is None:
                block.probabilities = [None] * len(block.outputs)
            block.outputs.extend(outputs)
            if block.probabilities is not None:
                block.probabilities.extend(probabilities or [None] * len(outputs))
            if len(block.outputs) >= BLOCK_ROWS and not self._wake.is_set():
                self._wake.set()
        finally:
            lock.release()

    def _finish(self, block: _Block) -> None:
        """Off the request path: the block's input columns and rounded latencies."""
        import numpy as np

        block.latency = np.round(np.array(block.latency) * 1000, 4).tolist()
        names = self._names
        if names is None:
            return
        width, flat = len(names), block.flat
        if max(block.rows, default=0) <= 1:  # one-row requests: every width-th value
            block.inputs = {name: flat[k::width] for k, name in enumerate(names)}
            return
        columns: list[list[Any]] = [[] for _ in names]
        start = 0
        for rows in block.rows:
            for k, column in enumerate(columns):
                column.extend(flat[start + k * rows : start + (k + 1) * rows])
            start += width * rows
        block.inputs = dict(zip(names, columns, strict=True))

    def flush(self) -> int:
        """Write what is buffered as one line; returns the number of requests written."""
        with self._lock:
            block, self._block = self._block, _Block()
        if not block.times:
            return 0
        self._finish(block)
        line = orjson.dumps(
            {
                "format": FORMAT,
                "model": self.model,
                "version": self.version,
                "pid": os.getpid(),
                "sample_rate": self.sample_rate,
                "requests": {
                    "t": block.times,
                    "endpoint": block.endpoint,
                    "status": block.status,
                    "latency_ms": block.latency,
                    "rows": block.rows,
                    "id": block.ids,
                    "warnings": block.warnings,
                    "error": block.error,
                },
                "inputs": block.inputs,
                "outputs": block.outputs,
                "probabilities": block.probabilities,
                "refused": block.refused,
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        path = self.folder / f"predictions-{day}-{os.getpid()}.jsonl"
        line += b"\n"
        with self._write_lock:  # the thread and close() may both flush at shutdown
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                try:
                    os.write(fd, line)
                    # O_APPEND moved this descriptor's offset to the end of *this* line, even
                    # if another writer (another version's log) appended meanwhile
                    offset = os.lseek(fd, 0, os.SEEK_CUR) - len(line)
                finally:
                    os.close(fd)
            except OSError:
                self.dropped += len(block.times)  # on /metrics: never silent
                raise
            self._index_block(path, offset, len(line), block)
        self.written += len(block.times)
        return len(block.times)

    def _index_block(self, path: Path, offset: int, length: int, block: _Block) -> None:
        """Add the block to the pending index record; write the record when it is due."""
        if self._kinds is None:
            return
        from cpmai.serving import logindex

        if self._pending and self._pending_path != path:  # a new day, a new file
            self._write_index()
        try:
            arrays = logindex.block_arrays(
                block, self._kinds, self._output_kind, self._categories, pause=_let_requests_run
            )
        except logindex.Unindexable:
            return  # the JSON line stays; readers parse it
        if not self._pending:
            self._pending_since = self._clock()
        self._pending.append((offset, length, arrays))
        self._pending_path = path
        self._pending_requests += len(block.times)
        if (
            self._pending_requests >= logindex.INDEX_MAX_REQUESTS
            or self._clock() - self._pending_since >= logindex.INDEX_SECONDS
            or self._stop.is_set()
        ):
            self._write_index()

    def _write_index(self) -> None:
        from cpmai.serving import logindex

        pending, self._pending, self._pending_requests = self._pending, [], 0
        if not pending or self._pending_path is None or self._kinds is None:
            return
        target = self._pending_path.with_name(f"{self._pending_path.name}.{self.version}.idx")
        with contextlib.suppress(OSError):  # the index only saves readers time
            logindex.write_record(
                target, pending, version=self.version, sample_rate=self.sample_rate,
                kinds=self._kinds, pause=_let_requests_run,
            )  # fmt: skip

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
        with self._write_lock:
            self._write_index()


def _let_requests_run() -> None:
    """Release the interpreter for a moment (the event loop takes it if it is waiting)."""
    time.sleep(0)
