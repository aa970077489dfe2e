"""The prediction log: every served request (or a sample of the successful ones) under
`logs/NAME/ENV/`, written off the request path, in columns.

On the request path a request costs the log one tuple of scalars (`ENTRY`: the server builds
it and appends it to a list; the garbage collector soon stops tracking it), and a batch one
call: when the model has scored a batch and all its requests were answered, the server hands
the log the batch (the model call's columns, labels and probabilities, kept by reference:
nothing is copied) with its requests' entries, one append to a deque (atomic: no lock). A
background thread takes what is queued at least once a second (sooner past `BLOCK_ROWS` rows),
extends each column with each batch's lists whole (request by request only when some were
refused after the model call, not sampled, or asked for probabilities), and appends the block
to `predictions-YYYY-MM-DD-PID.jsonl` as one JSON line, so `cpmai monitor` sees what was served
a second ago; one file per process and day, so workers never interleave. Request times are
taken on the `perf_counter` clock the server already reads, and made epoch seconds once a
block.

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

Served rows are those of successful requests (status < 400), in the order of `requests` (a
batch's requests together, once all were answered: a refusal meanwhile may come first); `rows`
says how many each request carried (0 for a refused one). `refused` keeps the inputs of refused
requests that had parseable, small inputs (what unseen categories are counted from).

Given the artifact's signature, the writer also indexes the blocks it wrote in columns
(`cpmai.serving.logindex`): what `cpmai monitor` reads instead of parsing JSON.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
import threading
import time
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import chain, repeat, starmap
from pathlib import Path
from typing import Any

import orjson

_chain = chain.from_iterable
_ID_TYPES = (str, int, float, type(None))
_ID_TYPE_SET = frozenset(_ID_TYPES)
FORMAT = "cpmai-predlog/2"
FLUSH_SECONDS = 1.0
BLOCK_ROWS = 1_000
"""A block this big is written at once, not at the end of the second: serializing a block holds
the interpreter, and requests wait for it (1.2 ms for 1,000 rows of 30 inputs here, full
precision floats)."""
MAX_BUFFER = 200_000
"""Batches and refusals held before the disk is considered to be falling behind (then new ones
are dropped, and their requests counted)."""


ENTRY = (
    "t", "start", "elapsed", "endpoint", "status", "rows", "id", "warnings", "error",
    "want_proba", "row_start",
)  # fmt: skip
"""A request's log entry, a tuple of scalars in this order: `t` its time in epoch seconds, or
None for `start` + `elapsed` on the `time.perf_counter` clock (the server's); `elapsed` seconds
to its answer; `id` its id (the writer makes it a JSON scalar with `log_id`); `warnings` a
list or None; `error` a message or None; `want_proba` whether it asked for probabilities (and
the batch has them); `row_start` where its rows start in its batch."""
_ELAPSED, _ROWS, _WANT, _ROW_START = 2, 5, 9, 10


class _Refused:
    """A refused request's entry, and its inputs if they were parseable and small."""

    __slots__ = ("entry", "inputs")

    def __init__(self, entry: tuple[Any, ...], inputs: dict[str, list[Any]] | None) -> None:
        self.entry = entry
        self.inputs = inputs


class _Block:
    """What the writer takes from the queue at once, in columns (one JSON line)."""

    __slots__ = (
        "endpoint",
        "error",
        "ids",
        "inputs",
        "latency",
        "output_array",
        "outputs",
        "probabilities",
        "refused",
        "rows",
        "status",
        "times",
        "warnings",
    )

    def __init__(
        self, events: list[Any], names: tuple[str, ...] | None, sample_rate: float
    ) -> None:
        """`events`: batch events ((columns, labels, probabilities), [entry, ...]) and refusals,
        in the order they were queued."""
        if names is None:  # no signature: every name seen, in order of appearance
            names = tuple(dict.fromkeys(_chain(e[0][0] for e in events if type(e) is not _Refused)))
        gather = _Gather(names)
        entries: list[tuple[Any, ...]] = []
        self.refused: list[dict[str, Any]] = []
        batches = []
        for event in events:
            if type(event) is _Refused:
                self._refusal(event, entries)
                continue
            batches.append(event[0])
            entries += event[1]
        fields = list(zip(*entries, strict=True))
        whole = sum(fields[_ROWS]) == sum(len(batch[1]) for batch in batches)
        if whole and sample_rate >= 1.0 and not any(fields[_WANT]):
            for batch in batches:  # the usual case: every row of every batch, none with proba
                gather.add(batch, 0, len(batch[1]), False)
        else:
            entries = self._select(events, gather, sample_rate)
            fields = list(zip(*entries, strict=True)) or [()] * len(ENTRY)
        (t, starts, elapsed, self.endpoint, self.status, self.rows, ids, self.warnings,
         self.error, _, _) = fields  # fmt: skip
        self.times = _times(t, starts, elapsed)
        self.latency = _milliseconds(elapsed)
        self.ids = ids if _ID_TYPE_SET.issuperset(map(type, ids)) else list(map(log_id, ids))
        self.inputs = dict(zip(names, gather.columns, strict=True))
        self.outputs = gather.outputs
        self.output_array = gather.output_array()
        self.probabilities = gather.probabilities

    def _select(
        self, events: list[Any], gather: _Gather, sample_rate: float
    ) -> list[tuple[Any, ...]]:
        """Request by request: leaves out those not sampled; gathers runs of consecutive rows
        with the same wish for probabilities."""
        sampled = sample_rate < 1.0
        chance = random.random
        entries: list[tuple[Any, ...]] = []
        self.refused = []
        for event in events:
            if type(event) is _Refused:
                self._refusal(event, entries)
                continue
            batch, requests = event
            low, high, proba = 0, 0, False
            for request in requests:
                if sampled and chance() >= sample_rate:
                    continue
                entries.append(request)
                start, rows, want = request[_ROW_START], request[_ROWS], request[_WANT]
                if start == high and want is proba and high:
                    high += rows
                    continue
                if high:
                    gather.add(batch, low, high, proba)
                low, high, proba = start, start + rows, want
            if high:
                gather.add(batch, low, high, proba)
        return entries

    def _refusal(self, event: _Refused, entries: list[tuple[Any, ...]]) -> None:
        if event.inputs is not None:
            self.refused.append({"request": len(entries), "inputs": event.inputs})
        entries.append(event.entry)


def _times(t: tuple[Any, ...], starts: tuple[Any, ...], elapsed: tuple[Any, ...]) -> Any:
    """Epoch seconds: given, or when answered on the perf_counter clock (off the request path:
    one clock reading a block, not one a request)."""
    from cpmai.serving.logindex import packed

    if None not in t:
        return list(t)
    offset = time.time() - time.perf_counter()
    answered = packed(starts, "d") + packed(elapsed, "d") + offset
    if t.count(None) == len(t):
        return answered
    computed = answered.tolist()
    return [given if given is not None else at for given, at in zip(t, computed, strict=True)]


def _milliseconds(seconds: tuple[float, ...]) -> Any:
    """Rounded to 0.1 µs, off the request path (`round` costs a request 2,000 instructions)."""
    import numpy as np

    from cpmai.serving.logindex import packed

    return np.round(packed(seconds, "d") * 1000, 4)


class _Gather:
    """A block's served rows, gathered a run of consecutive rows of one batch at a time (C-level
    slices and extends, about once per batch)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.columns: list[list[Any]] = [[] for _ in names]
        self.outputs: list[Any] = []
        self.probabilities: list[Any] | None = None
        self._arrays: list[Any] | None = []  # the outputs as arrays, while they all are

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
        if want_proba and probabilities is not None and self.probabilities is None:
            self.probabilities = [None] * len(self.outputs)
        whole = start == 0 and end == len(outputs)  # usually: numpy slices cost thousands
        labels = outputs if whole else outputs[start:end]
        self.outputs += _listed(labels)
        if self._arrays is not None:
            if hasattr(labels, "dtype"):
                self._arrays.append(labels)
            else:
                self._arrays = None
        if self.probabilities is not None:
            if not want_proba or probabilities is None:
                self.probabilities += [None] * rows
            else:
                self.probabilities += _listed(probabilities if whole else probabilities[start:end])

    def output_array(self) -> Any:
        """The outputs as one array (the index codes them in numpy), or None."""
        if not self._arrays:
            return None
        import numpy as np

        return np.concatenate(self._arrays)


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
        self._queue: deque[Any] = deque()
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

    def served(self, batch: tuple[dict[str, list[Any]], Any, Any], entries: list[Any]) -> None:
        """A batch the model scored and the entries (`ENTRY`) of the requests it answered, on
        the server's request path, once a batch. `batch` is the model call's (columns, labels,
        probabilities), kept by reference: nothing in it may change afterwards. One append to a
        deque (atomic: no lock)."""
        queue = self._queue
        if len(queue) >= MAX_BUFFER:  # the disk cannot keep up: count, never block
            self.dropped += len(entries)
            return
        queue.append((batch, entries))
        self._rows += len(batch[1])
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
        """Any one request: a refused one (`outputs` None; `inputs` its parsed inputs, if small,
        or None), or one served outside the server's batcher (`cpmai predict`'s chunks):
        `inputs` its columns, `outputs` one per row."""
        if len(self._queue) >= MAX_BUFFER:
            self.dropped += 1
            return
        served = status < 400 and inputs is not None and outputs is not None
        rows = len(outputs) if served and outputs is not None else 0
        entry = (self._clock(), 0.0, latency_s, endpoint, status, rows, log_id(request_id),
                 warnings or None, error, probabilities is not None, 0)  # fmt: skip
        if served:
            self._queue.append(((inputs, outputs, probabilities), [entry]))
            self._rows += rows
        else:
            self._queue.append(_Refused(entry, inputs))

    def _take(self) -> _Block | None:
        """Off the request path: what is queued, as one block."""
        with self._take_lock:  # the thread and close() may both flush at shutdown
            queue = self._queue
            # popleft n times in a C loop; appends meanwhile wait for the next block
            events = list(starmap(queue.popleft, repeat((), len(queue))))
            self._rows = 0
        return _Block(events, self._names, self.sample_rate) if events else None

    def flush(self) -> int:
        """Write what is queued as one line; returns the number of requests written."""
        with _collector_paused():
            block = self._take()
            if block is None or not block.rows:  # nothing, or nothing sampled
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
                option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE,
            )
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        path = self.folder / f"predictions-{day}-{os.getpid()}.jsonl"
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
            with _collector_paused():
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


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No garbage collection meanwhile (process-wide): a block is thousands of short-lived
    lists and tuples that die by reference count, and a collection would only walk them (about
    a tenth of the log's cost, counted with callgrind). Around CPU work only, not the line's
    write: the event loop goes on allocating meanwhile."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _let_requests_run() -> None:
    """Release the interpreter for a moment (the event loop takes it if it is waiting)."""
    time.sleep(0)
