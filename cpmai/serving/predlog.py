"""The prediction log: every served request (or a sample of the successful ones) under
`logs/NAME/ENV/`, written off the request path, in columns.

On the request path a request costs the log one tuple of scalars (`ENTRY`: the server builds
it and appends it to a list; the garbage collector soon stops tracking it), and a batch one
call: when the model has scored a batch and all its requests were answered, the server hands
the log the batch (the model call's columns, labels and probabilities) with its requests'
entries, and the log extends the open block's columns with the batch's lists whole, a few
C-level extends while the values are still in the core's caches (request by request only when
some were refused after the model call, not sampled, or asked for probabilities). Every
`BLOCK_ROWS` rows, and at least once a second, the block is closed and appended to
`predictions-YYYY-MM-DD-PID.jsonl` as one JSON line, so `cpmai monitor` sees what was served a
second ago; one file per process and day, so workers never interleave. In the server, the
event loop itself turns a closed block into its line and index arrays, in steps between
requests, and a thread only writes them to disk; without a loop (`cpmai predict`) the thread
does all of it. Request times are taken on the `perf_counter` clock the server already reads,
and made epoch seconds once a block.

Why columns: reading is what costs. A JSON line per request made the reader build a dict and a
list per input per request (about 29 µs a request of 30 inputs on the 2-core machine); a block
of columns loads as flat lists that numpy takes in one call (9–13 µs a request, the same day).
The file is still JSON lines (`jq '.inputs.tenure_months'` works).

A line (format "cpmai-predlog/2"):

    {"format": "cpmai-predlog/2", "model": ..., "version": ..., "pid": ..., "sample_rate": ...,
     "requests": {"t": [epoch seconds], "endpoint": [...], "status": [...],
                  "latency_ms": [...], "rows": [...], "id": [...],
                  "warnings": [null | [...]], "error": [null | "..."],
                  "origin": [null | "source"]},
     "inputs": {name: [one value per served row]}, "outputs": [one per served row],
     "probabilities": null | [null | [p, ...] per served row],
     "refused": [{"request": i, "inputs": {name: [...]}}]}

`origin`, present only in a block that holds synthetic traffic (`cpmai.serving.origin`): null
for a real request, the source named for a synthetic one ("" when none was named).

Served rows are those of successful requests (status < 400), in the order of `requests` (a
batch's requests together, once all were answered: a refusal meanwhile may come first); `rows`
says how many each request carried (0 for a refused one). `refused` keeps the inputs of refused
requests that had parseable, small inputs (what unseen categories are counted from).

Given the artifact's signature, the writer also indexes the blocks it wrote in columns
(`cpmai.serving.logindex`): what `cpmai monitor` reads instead of parsing JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson

_chain = chain.from_iterable
_APPENDING = threading.Lock()
_ID_TYPES = (str, int, float, type(None))
_ID_TYPE_SET = frozenset(_ID_TYPES)
FORMAT = "cpmai-predlog/2"
LOST = "lost"
"""A line `{"format", "model", "version", "pid", "lost": {"requests", "since", "until",
"reason"}}`: requests that were answered but could not be logged (a full disk, a log that fell
behind), written with the next block that could be."""
FLUSH_SECONDS = 1.0
BLOCK_ROWS = 1_000
"""Rows a block holds before it is closed and written, not at the end of the second. The server's
event loop prepares it in three steps, and a request that arrives meanwhile waits for one: for
1,000 rows of the churn example, 0.5–0.7 ms each in a busy server here."""
MAX_BUFFER = 200_000
"""Requests a block may hold before the disk is considered to be falling behind (then new ones
are dropped, and counted)."""
MAX_LINES = MAX_BUFFER // BLOCK_ROWS
"""Lines the event loop prepared that may wait for the writer thread's disk."""


ENTRY = (
    "t", "start", "elapsed", "endpoint", "status", "rows", "id", "warnings", "error",
    "want_proba", "row_start", "origin",
)  # fmt: skip
"""A request's log entry, a tuple of scalars in this order: `t` its time in epoch seconds, or
None for `start` + `elapsed` on the `time.perf_counter` clock (the server's); `elapsed` seconds
to its answer; `id` its id (the writer makes it a JSON scalar with `log_id`); `warnings` a
list or None; `error` a message or None; `want_proba` whether it asked for probabilities (and
the batch has them); `row_start` where its rows start in its batch; `origin` None for real
traffic, the source of synthetic traffic (`cpmai.serving.origin`)."""
_ELAPSED, _ROWS, _WANT, _ROW_START = 2, 5, 9, 10
_GET_ROWS, _GET_WANT = itemgetter(_ROWS), itemgetter(_WANT)


class _Open:
    """The block being filled. Each batch's lists are extended into the block's columns when the
    batch is handed over (`PredictionLog.served`), on the thread that serves, while they are
    still in its caches: a handful of C-level extends a batch, request by request only for a
    batch some of whose requests are not logged (sampled out, refused after the model call) or
    asked for probabilities."""

    __slots__ = (
        "_discover",
        "_getter",
        "_lists",
        "_sample_rate",
        "columns",
        "entries",
        "labels",
        "probabilities",
        "refused",
        "rows",
        "served",
    )

    def __init__(self, names: tuple[str, ...] | None, sample_rate: float) -> None:
        """`names`: the signature's inputs; None: every name seen, in order of appearance."""
        self.columns: dict[str, list[Any]] = {name: [] for name in names or ()}
        self._lists = list(self.columns.values())
        self._getter = _columns_getter(names)
        self.entries: list[tuple[Any, ...]] = []
        self.labels: list[Any] = []  # the outputs, a run of rows at a time (arrays or lists)
        self.probabilities: list[Any] | None = None
        self.refused: list[dict[str, Any]] = []
        self.rows = 0  # rows of the batches handed over (what `BLOCK_ROWS` counts)
        self.served = 0  # rows logged
        self._discover = names is None
        self._sample_rate = sample_rate

    def add(self, batch: tuple[dict[str, list[Any]], Any, Any], entries: list[Any]) -> None:
        source, labels, probabilities = batch
        size = len(labels)
        self.rows += size
        if len(entries) == 1:  # at concurrency 1, every batch: this runs once a request
            only = entries[0]
            every = only[_ROWS] == size and not only[_WANT]
        else:
            every = (probabilities is None or not any(map(_GET_WANT, entries))) and sum(
                map(_GET_ROWS, entries)
            ) == size
        if every and self._sample_rate >= 1.0:  # the usual case: every row, no probabilities
            self.entries += entries
            try:
                parts = self._getter(source)  # the signature's columns, in C
            except KeyError:  # a column missing, or no signature: column by column
                self._run(source, labels, probabilities, 0, size, False)
                return
            for column, values in zip(self._lists, parts, strict=True):
                column += values
            self.labels.append(labels)
            if self.probabilities is not None:
                self.probabilities += [None] * size
            self.served += size
            return
        sampled, rate, chance = self._sample_rate < 1.0, self._sample_rate, random.random
        low, high, proba = 0, 0, False  # a run of consecutive rows, one wish for probabilities
        for request in entries:
            if sampled and chance() >= rate:
                continue
            self.entries.append(request)
            start, rows, want = request[_ROW_START], request[_ROWS], request[_WANT]
            if start == high and want is proba and high:
                high += rows
                continue
            if high:
                self._run(source, labels, probabilities, low, high, proba)
            low, high, proba = start, start + rows, want
        if high:
            self._run(source, labels, probabilities, low, high, proba)

    def refusal(self, entry: tuple[Any, ...], inputs: dict[str, list[Any]] | None) -> None:
        if inputs is not None:
            self.refused.append({"request": len(self.entries), "inputs": inputs})
        self.entries.append(entry)

    def _run(
        self, source: dict[str, list[Any]], labels: Any, probabilities: Any,
        start: int, end: int, want_proba: bool,
    ) -> None:  # fmt: skip
        rows = end - start
        if self._discover:
            for name in source:
                if name not in self.columns:
                    self.columns[name] = [None] * self.served
        for name, column in self.columns.items():
            values = source.get(name)
            if values is None:
                column += [None] * rows
            elif start == 0 and end == len(values):
                column += values
            else:
                column += values[start:end]
        whole = start == 0 and end == len(labels)  # usually: numpy slices cost thousands
        self.labels.append(labels if whole else labels[start:end])
        if want_proba and probabilities is not None and self.probabilities is None:
            self.probabilities = [None] * self.served
        if self.probabilities is not None:
            if not want_proba or probabilities is None:
                self.probabilities += [None] * rows
            else:
                self.probabilities += _listed(probabilities if whole else probabilities[start:end])
        self.served += rows


def _columns_getter(names: tuple[str, ...] | None) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """A function of a batch's columns that returns the signature's, in order (KeyError for one
    missing, or always without a signature)."""
    if not names:
        return _missing
    if len(names) == 1:
        (name,) = names
        return lambda source: (source[name],)
    return itemgetter(*names)


def _missing(source: dict[str, Any]) -> tuple[Any, ...]:
    raise KeyError("no signature")


class _Block:
    """A block taken from the log, ready to write: one JSON line (and its index arrays)."""

    __slots__ = (
        "endpoint",
        "error",
        "ids",
        "inputs",
        "latency",
        "origin",
        "output_array",
        "outputs",
        "probabilities",
        "refused",
        "rows",
        "status",
        "times",
        "warnings",
    )

    def __init__(self, filled: _Open) -> None:
        import numpy as np

        fields = list(zip(*filled.entries, strict=True)) or [()] * len(ENTRY)
        (t, starts, elapsed, self.endpoint, self.status, self.rows, ids, self.warnings,
         self.error, _, _, origins) = fields  # fmt: skip
        self.origin = None if origins.count(None) == len(origins) else origins
        from cpmai.serving.logindex import packed

        seconds = packed(elapsed, "d")  # once, for the times and the latencies
        self.times = _times(t, starts, seconds)
        self.latency = np.round(seconds * 1000, 4)  # to 0.1 µs (`round` a request: 2,000 instr.)
        self.ids = ids if _ID_TYPE_SET.issuperset(map(type, ids)) else list(map(log_id, ids))
        self.inputs = filled.columns
        labels = filled.labels
        self.output_array: Any = None  # the outputs as one array: the index codes them in numpy
        if labels and set(map(type, labels)) == {np.ndarray}:
            self.output_array = np.concatenate(labels)
            self.outputs = self.output_array.tolist()
        else:
            self.outputs = list(chain.from_iterable(map(_listed, labels)))
        self.probabilities = filled.probabilities
        self.refused = filled.refused


def _times(t: tuple[Any, ...], starts: tuple[Any, ...], elapsed: Any) -> Any:
    """Epoch seconds: given, or when answered on the perf_counter clock (`elapsed`: an array;
    one clock reading a block, not one a request)."""
    from cpmai.serving.logindex import packed

    if None not in t:
        return list(t)
    offset = time.time() - time.perf_counter()
    answered = packed(starts, "d") + elapsed + offset
    if t.count(None) == len(t):
        return answered
    computed = answered.tolist()
    return [given if given is not None else at for given, at in zip(t, computed, strict=True)]


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
        self._open = _Open(self._names, sample_rate)
        # `cpmai predict` hands over on its thread and the writer takes on its own
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._timer: asyncio.TimerHandle | None = None
        self._on_loop = False
        self._closed = False
        self._scheduled = False  # a `_prepare` is waiting for its turn on the loop
        self._steps: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._lines_lock = threading.Lock()
        self._lines: deque[tuple[bytes, int, dict[str, Any] | None]] = deque()
        self.written = 0
        self.dropped = 0
        self._lost_lock = threading.Lock()
        self._lost: dict[str, Any] | None = None
        """Requests not logged since the last line that could be written: written as a `lost`
        line before the next block (`LOST`), so readers count them; never silent."""
        self._clock = time.time

    def start(self) -> None:
        """Start the writer. Called on a running event loop (the server's), the log does its CPU
        work there, between requests, and leaves only the disk to the thread (see `_prepare`);
        otherwise (`cpmai predict`) the thread does all of it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        else:
            self._on_loop = True
            self._loop_thread = threading.get_ident()
            self._timer = self._loop.call_later(self.flush_seconds, self._tick)
        self._thread = threading.Thread(target=self._run, name="cpmai-predlog", daemon=True)
        self._thread.start()

    def served(self, batch: tuple[dict[str, list[Any]], Any, Any], entries: list[Any]) -> None:
        """A batch the model scored and the entries (`ENTRY`) of the requests it answered, on
        the server's request path, once a batch. `batch` is the model call's (columns, labels,
        probabilities): its columns' values are added to the block's lists here, its labels kept
        by reference (they must not change afterwards)."""
        with self._lock:
            filled = self._open
            if self._backed_up():
                self._note_lost(len(entries), "the disk fell behind (the log's buffer was full)")
                return
            filled.add(batch, entries)
        if self._closed:  # a request that outlived the server's shutdown: written at once
            self.flush()
        elif filled.rows >= BLOCK_ROWS:
            self._due()

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
        origin: str | None = None,
    ) -> None:
        """Any one request: a refused one (`outputs` None; `inputs` its parsed inputs, if small,
        or None), or one served outside the server's batcher (`cpmai predict`'s chunks):
        `inputs` its columns, `outputs` one per row. `origin`: the source of synthetic traffic
        (`cpmai.serving.origin`), None for real traffic."""
        served = status < 400 and inputs is not None and outputs is not None
        rows = len(outputs) if served and outputs is not None else 0
        entry = (self._clock(), 0.0, latency_s, endpoint, status, rows, log_id(request_id),
                 warnings or None, error, probabilities is not None, 0, origin)  # fmt: skip
        if served and inputs is not None:
            self.served((inputs, outputs, probabilities), [entry])
            return
        with self._lock:
            if self._backed_up():
                self._note_lost(1, "the disk fell behind (the log's buffer was full)")
                return
            self._open.refusal(entry, inputs)
        if self._closed:
            self.flush()

    def _note_lost(self, requests: int, reason: str) -> None:
        """Count requests that could not be logged (on /metrics at once, in the log as soon as
        a line can be written)."""
        now = time.time()
        self._merge_lost({"requests": requests, "since": now, "until": now, "reason": reason})

    def _merge_lost(self, more: dict[str, Any], *, new: bool = True) -> None:
        """Add `more` to what is owed to the log (`new`: requests not counted in `dropped` yet)."""
        with self._lost_lock:
            if new:
                self.dropped += more["requests"]
            lost = self._lost
            if lost is None:
                self._lost = dict(more)
                return
            lost["requests"] += more["requests"]
            lost["since"] = min(lost["since"], more["since"])
            lost["until"] = max(lost["until"], more["until"])
            if more["reason"] not in lost["reason"]:
                lost["reason"] = f"{lost['reason']}; {more['reason']}"

    def _take_lost(self) -> dict[str, Any] | None:
        with self._lost_lock:
            lost, self._lost = self._lost, None
        return lost

    def _lost_line(self, lost: dict[str, Any] | None) -> bytes:
        if lost is None:
            return b""
        return orjson.dumps(
            {"format": FORMAT, "model": self.model, "version": self.version, "pid": os.getpid(),
             LOST: lost},
            option=orjson.OPT_APPEND_NEWLINE,
        )  # fmt: skip

    def _backed_up(self) -> bool:
        """The disk cannot keep up (new requests are counted as dropped, never waited for)."""
        return len(self._open.entries) >= MAX_BUFFER or len(self._lines) >= MAX_LINES

    def _due(self) -> None:
        """A block's worth was handed over: have it written now, not at the end of the second."""
        loop = self._loop
        if loop is None:
            if not self._wake.is_set():
                self._wake.set()
        elif not self._scheduled:
            self._scheduled = True
            if threading.get_ident() == self._loop_thread:
                loop.call_soon(self._prepare)
            else:
                loop.call_soon_threadsafe(self._prepare)

    def _tick(self) -> None:
        """On the loop, every `flush_seconds`: what was served meanwhile goes to disk."""
        if self._loop is None:
            return
        if self._open.entries and not self._scheduled:
            self._scheduled = True
            self._prepare()
        self._timer = self._loop.call_later(self.flush_seconds, self._tick)

    def _prepare(self) -> None:
        """On the loop, in three steps, each on a later turn of the loop (requests that came
        meanwhile go first; none waits for more than one step, well under a millisecond for a
        1,000-row block here): the block, its JSON line, its index arrays; the thread writes
        them. On the loop, not in the thread, because there the values are still in this core's
        caches and no interpreter lock passes back and forth between threads: about half the
        CPU time the thread took for the same work, measured (docs/performance.md)."""
        self._scheduled = False
        with _collector_paused():
            block = self._take()
        if block is not None and block.rows:
            self._then(self._serialize, block)

    def _serialize(self, block: _Block) -> None:
        with _collector_paused():
            line = self._line(block)
        self._then(self._index_then_write, block, line)

    def _index_then_write(self, block: _Block, line: bytes) -> None:
        with _collector_paused():
            arrays = self._arrays(block)
        self._lines.append((line, len(block.times), arrays))
        self._wake.set()

    def _then(self, step: Callable[..., None], *args: Any) -> None:
        """The next step on a later turn of the loop (steps run in the order given), or now if
        the log was closed meanwhile."""
        if self._loop is None:
            step(*args)
            return
        self._steps.append((step, args))
        self._loop.call_soon(self._step)

    def _step(self) -> None:
        if self._steps:
            step, args = self._steps.popleft()
            step(*args)

    def _take(self) -> _Block | None:
        """The open block, closed (and a new one opened), or None if it holds nothing."""
        with self._lock:
            filled, self._open = self._open, _Open(self._names, self.sample_rate)
        return _Block(filled) if filled.entries else None

    def _line(self, block: _Block) -> bytes:
        requests = {
            "t": block.times,
            "endpoint": block.endpoint,
            "status": block.status,
            "latency_ms": block.latency,
            "rows": block.rows,
            "id": block.ids,
            "warnings": block.warnings,
            "error": block.error,
        }
        if block.origin is not None:
            requests["origin"] = block.origin
        return orjson.dumps(
            {
                "format": FORMAT,
                "model": self.model,
                "version": self.version,
                "pid": os.getpid(),
                "sample_rate": self.sample_rate,
                "requests": requests,
                "inputs": block.inputs,
                "outputs": block.outputs,
                "probabilities": block.probabilities,
                "refused": block.refused,
            },
            option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE,
        )

    def _arrays(self, block: _Block) -> dict[str, Any] | None:
        """The block's index arrays (`logindex.block_arrays`), or None: no signature, or values
        that do not fit it (the JSON line stays; readers parse it)."""
        if self._kinds is None:
            return None
        from cpmai.serving import logindex

        try:
            return logindex.block_arrays(block, self._kinds, self._output_kind, self._vocab)
        except logindex.Unindexable:
            return None

    def flush(self) -> int:
        """Write everything handed over so far, on the calling thread (in the server, the
        loop's), before returning; returns the number of requests written."""
        while self._steps:  # blocks on their way through the loop's steps, in order
            self._step()
        written = self._write_lines()
        with _collector_paused():
            block = self._take()
            if block is None or not block.rows:  # nothing, or nothing sampled
                return written
            line = self._line(block)
            arrays = self._arrays(block)
        return written + self._write(line, len(block.times), arrays)

    def _path(self) -> Path:
        """Today's file of this process."""
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        return self.folder / f"predictions-{day}-{os.getpid()}.jsonl"

    def _write(self, line: bytes, requests: int, arrays: dict[str, Any] | None) -> int:
        path = self._path()
        with self._write_lock:
            pending = self._take_lost()
            lost = self._lost_line(pending)  # what could not be written before goes first
            try:
                with _APPENDING:  # one process's logs share its file: never cut another's line
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                    try:
                        written = os.write(fd, lost + line)
                        if written != len(lost) + len(line):  # a full disk mid-line: never half
                            os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_CUR) - written)
                            raise OSError(errno.ENOSPC, "short write (no space left on device?)")
                        # O_APPEND moved this descriptor's offset to the end of *this* line
                        offset = os.lseek(fd, 0, os.SEEK_CUR) - len(line)
                    finally:
                        os.close(fd)
            except OSError as exc:
                if pending is not None:  # still owed: with the next line that can be written
                    self._merge_lost(pending, new=False)
                self._note_lost(requests, exc.strerror or str(exc))  # on /metrics and later
                raise
            if arrays is not None:
                with _collector_paused():
                    self._index_block(path, offset, len(line), requests, arrays)
        self.written += requests
        return requests

    def _index_block(
        self, path: Path, offset: int, length: int, requests: int, arrays: dict[str, Any]
    ) -> None:
        """Add the block to the pending index record; write the record when it is due."""
        if self._pending and self._pending_path != path:  # a new day, a new file
            self._write_index()
        if not self._pending:
            self._pending_since = self._clock()
        self._pending.append((offset, length, arrays))
        self._pending_path = path
        self._pending_requests += requests
        from cpmai.serving import logindex

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
                if self._on_loop:
                    self._write_lines()
                else:
                    self.flush()
            except OSError:  # a full disk must not kill the server; the next second retries
                time.sleep(self.flush_seconds)
        with contextlib.suppress(OSError):
            self._write_lines()

    def _write_lines(self) -> int:
        """The lines the loop prepared, in order; returns the number of requests written."""
        written = 0
        with self._lines_lock:  # the thread, or flush() on the loop's thread
            lines = self._lines
            while lines:
                line, requests, arrays = lines[0]
                try:
                    written += self._write(line, requests, arrays)
                finally:
                    lines.popleft()
        return written

    def close(self) -> None:
        """Stop the thread and write what is left (on shutdown), and what was lost."""
        if self._timer is not None:
            self._timer.cancel()
        self._loop = None  # from now on, steps run where they are called
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()
        with self._write_lock:
            self._write_index()
            if self._lost is not None:
                self._write_lost()

    def _write_lost(self) -> None:
        """The `lost` line alone (at shutdown, when no block followed it)."""
        path = self._path()
        pending = self._take_lost()
        line = self._lost_line(pending)
        try:
            with _APPENDING:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                try:
                    if os.write(fd, line) != len(line):
                        raise OSError(errno.ENOSPC, "short write")
                finally:
                    os.close(fd)
        except OSError:  # still nowhere to write: /metrics counted them (`dropped`)
            pass


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
