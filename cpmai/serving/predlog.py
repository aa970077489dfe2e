"""The prediction log: every served request (or a sample of the successful ones) under
`logs/NAME/ENV/`, written off the request path, in columns.

On the request path the server appends one tuple of scalars a request to a deque (atomic: no
lock; a tuple of scalars is soon untracked by the garbage collector). A request's input values
and outputs are not copied there: the entry says where its rows start in its batch, the model
call's (columns, labels, probabilities), which the log keeps by reference, once per batch. A
background thread takes what is queued at least once a second, gathers each batch's rows with
C-level slices and extends (a run of consecutive requests of one batch at a time), and appends
the block to `predictions-YYYY-MM-DD-PID.jsonl` as one JSON line, so `cpmai monitor` sees what
was served a second ago; one file per process and day, so workers never interleave.

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
from collections import deque
from datetime import UTC, datetime
from itertools import chain, repeat, starmap
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
    """What the writer takes from the queue at once, in columns (one JSON line)."""

    __slots__ = (
        "endpoint",
        "error",
        "ids",
        "inputs",
        "last",
        "latency",
        "outputs",
        "probabilities",
        "refused",
        "rows",
        "status",
        "times",
        "warnings",
    )

    def __init__(
        self,
        fields: list[tuple[Any, ...]],
        batches: list[Any],
        names: tuple[str, ...] | None,
        carried: Any,
    ) -> None:
        """`fields`: the entries' fields, transposed; `batches`: those they start; `carried`:
        the batch of the previous block's last entries (the first ones may continue it)."""
        (self.times, self.endpoint, self.status, latency, self.rows, self.ids, self.warnings,
         self.error, fresh, starts, probabilities) = fields  # fmt: skip
        self.latency = _milliseconds(latency)
        self.refused: list[dict[str, Any]] = []
        if None in fresh:  # refused requests
            self.refused = [
                {"request": i, "inputs": batch}
                for i, (new, batch) in enumerate(zip(fresh, starts, strict=True))
                if new is None and batch is not None
            ]  # a refused request's entry holds its inputs where a batch's holds `start`
        if names is None:  # no signature: every name seen, in order of appearance
            seen = [carried, *batches] if carried is not None else batches
            names = tuple(dict.fromkeys(_chain(columns for columns, _, _ in seen)))
        gather = _Gather(names)
        pending = iter(batches)
        batch, low, high, proba = carried, 0, 0, False
        for new, start, rows, want in zip(fresh, starts, self.rows, probabilities, strict=True):
            if new is None:  # refused: no rows
                continue
            if not new and start == high and want is proba and high:
                high += rows  # the next request of the same batch
                continue
            if high:
                gather.add(batch, low, high, proba)
            if new:
                batch = next(pending)
            low, high, proba = start, start + rows, want
        if high:
            gather.add(batch, low, high, proba)
        self.last = batch
        self.inputs = dict(zip(names, gather.columns, strict=True))
        self.outputs = gather.outputs
        self.probabilities = gather.probabilities


def _milliseconds(seconds: tuple[float, ...]) -> list[float]:
    """Rounded to 0.1 µs, off the request path (`round` costs a request 2,000 instructions)."""
    import numpy as np

    from cpmai.serving.logindex import packed

    return np.round(packed(seconds, "d") * 1000, 4).tolist()  # type: ignore[no-any-return]


class _Gather:
    """A block's served rows, gathered a run of consecutive rows of one batch at a time (C-level
    slices and extends, about once per batch)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.columns: list[list[Any]] = [[] for _ in names]
        self.outputs: list[Any] = []
        self.probabilities: list[Any] | None = None

    def add(self, batch: Any, start: int, end: int, want_proba: bool) -> None:
        source, outputs, probabilities = batch
        rows = end - start
        for column, name in zip(self.columns, self.names, strict=True):
            values = source.get(name)
            if values is None:
                column += [None] * rows
            elif start == 0 and end == len(values):
                column += values
            else:
                column += values[start:end]
        if want_proba and self.probabilities is None:
            self.probabilities = [None] * len(self.outputs)
        whole = start == 0 and end == len(outputs)  # usually: numpy slices cost thousands
        self.outputs += _listed(outputs if whole else outputs[start:end])
        if self.probabilities is not None:
            if not want_proba or probabilities is None:
                self.probabilities += [None] * rows
            else:
                self.probabilities += _listed(probabilities if whole else probabilities[start:end])


def _listed(values: Any) -> list[Any]:
    if isinstance(values, list):
        return values
    return values.tolist() if hasattr(values, "tolist") else list(values)


def log_id(request_id: Any) -> Any:
    """A request id the log can hold: a JSON scalar as it is, anything else as its repr."""
    return request_id if isinstance(request_id, _ID_TYPES) else repr(request_id)


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
        self._vocab: dict[str, dict[Any, int]] = {"__endpoint__": {}}
        if signature is not None:
            self._kinds = {s["name"]: feature_kind(s["type"]) for s in signature["inputs"]}
            self._names = tuple(s["name"] for s in signature["inputs"])
            outputs = signature.get("outputs") or [{}]
            self._output_kind = "numeric" if outputs[0].get("type") == "number" else "categorical"
            for spec in signature["inputs"]:
                known = sorted(spec.get("categories") or [], key=str)
                self._vocab[spec["name"]] = {value: code for code, value in enumerate(known)}
            known = list(outputs[0].get("categories") or [])
            self._vocab["__output__"] = {value: code for code, value in enumerate(known)}
        self._pending: list[tuple[int, int, dict[str, Any]]] = []
        self._pending_path: Path | None = None
        self._pending_requests = 0
        self._pending_since = 0.0
        self.folder = folder
        self.model = model
        self.version = version
        self.sample_rate = sample_rate
        self.flush_seconds = flush_seconds
        self._queue: deque[tuple[Any, ...]] = deque()
        self._batches: deque[Any] = deque()
        self._batch: Any = None
        self._carried: Any = None
        self._rows = 0
        self._take_lock = threading.Lock()
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

    def served(
        self,
        endpoint: str,
        latency_s: float,
        rows: int,
        request_id: str | int | float | None,
        warnings: list[str] | None,
        batch: tuple[dict[str, list[Any]], Any, Any],
        start: int,
        want_proba: bool,
        status: int = 200,
    ) -> None:
        """A request served, on the server's request path. `batch` is the model call's
        (columns, labels, probabilities), kept by reference (nothing is copied here); the
        request's rows are `start` to `start + rows` of it; `want_proba`: whether it asked for
        probabilities. Nothing in `batch` may change afterwards. `request_id` must be a JSON
        scalar (`log_id`). The entry is a tuple of scalars (the garbage collector stops tracking
        it), appended to a deque (atomic: no lock)."""
        if self.sample_rate < 1.0 and random.random() >= self.sample_rate:
            return
        queue = self._queue
        if len(queue) >= MAX_BUFFER:  # the disk cannot keep up: count, never block
            self.dropped += 1
            return
        new = batch is not self._batch
        if new:
            self._batch = batch
            self._batches.append(batch)  # before its first entry: see _take
        queue.append((self._clock(), endpoint, status, latency_s, rows, request_id, warnings,
                      None, new, start, want_proba))  # fmt: skip
        self._rows += rows
        if self._rows >= BLOCK_ROWS and not self._wake.is_set():
            self._wake.set()

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
        """Any request: a refused one (`outputs` None; `inputs` its parsed inputs, if small,
        or None), or one served outside the server's batcher (`cpmai predict`'s chunks):
        `inputs` its columns, `outputs` one per row."""
        if status < 400 and inputs is not None and outputs is not None:
            self.served(endpoint, latency_s, len(outputs), log_id(request_id), warnings or None,
                        (inputs, outputs, probabilities), 0, probabilities is not None,
                        status)  # fmt: skip
            return
        queue = self._queue
        if len(queue) >= MAX_BUFFER:
            self.dropped += 1
            return
        queue.append((self._clock(), endpoint, status, latency_s, 0, log_id(request_id),
                      warnings or None, error, None, inputs, False))  # fmt: skip

    def _take(self) -> _Block | None:
        """Off the request path: what is queued, as one block. Entries are taken first, then
        as many batches as they start: `served` appends a batch before its first entry, so
        the batches taken are exactly those entries' (a batch appended meanwhile stays for
        the next block)."""
        with self._take_lock:  # the thread and close() may both flush at shutdown
            queue = self._queue
            # popleft n times in a C loop; appends meanwhile wait for the next block
            entries = list(starmap(queue.popleft, repeat((), len(queue))))
            self._rows = 0
            if not entries:
                return None
            fields = list(zip(*entries, strict=True))
            batches = list(starmap(self._batches.popleft, repeat((), fields[8].count(True))))
            block = _Block(fields, batches, self._names, self._carried)
            self._carried = block.last
        return block

    def flush(self) -> int:
        """Write what is queued as one line; returns the number of requests written."""
        block = self._take()
        if block is None:
            return 0
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
        with self._write_lock:
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
                block, self._kinds, self._output_kind, self._vocab, pause=_let_requests_run
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
