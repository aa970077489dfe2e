"""The prediction log's writer: every served request (or a sample of the successful ones) under
`logs/NAME/ENV/`, written off the request path, in columns (`cpmai.predlog.format`).

On the request path a request costs the log one `Entry` (`cpmai.predlog.entry`: a tuple of
scalars the server builds), and a batch one call: when the model has scored a batch and all its
requests were answered, the batcher hands the log the batch (the model call's columns, labels
and probabilities) with its requests' entries (`PredictionLog.served`), and the log extends the
open block's columns with the batch's lists whole, a few C-level extends while the values are
still in the core's caches (request by request only when some were refused after the model
call, not sampled, or asked for probabilities). Every `BLOCK_ROWS` rows, and at least once a
second, the block is closed and appended to `predictions-YYYY-MM-DD-PID.jsonl` as one JSON
line, so `cpmai monitor` sees what was served a second ago; one file per process and day, so
workers never interleave. Request times are taken on the `perf_counter` clock the server
already reads, and made epoch seconds once a block.

Who does the CPU work is the log's `mode`, chosen by whoever makes it: "loop" (the server) has
the event loop turn a closed block into its line and index arrays, in steps between requests,
and leaves only the disk to a thread; "thread" (`cpmai predict`, batch scoring) has the thread
do all of it.

Why columns: reading is what costs. A JSON line per request made the reader build a dict and a
list per input per request; a block of columns loads as flat lists that numpy takes in one call
(the figures: docs/performance.md, "What the log costs").

Given the artifact's signature, the writer also indexes the blocks it wrote in columns
(`cpmai.predlog.index`): what `cpmai monitor` reads instead of parsing JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson

from cpmai.predlog.block import Batch, ClosedBlock, OpenBlock
from cpmai.predlog.collector import collector_paused
from cpmai.predlog.entry import Entry, log_id
from cpmai.predlog.format import FORMAT, LOST, PREDICTIONS, feature_kind, index_file, today_file

if TYPE_CHECKING:
    from cpmai.runtime.signature import Signature

Mode = Literal["loop", "thread"]
"""Where the log's CPU work runs: on the event loop, between requests ("loop", the server's), or
on the writer thread ("thread", without an event loop)."""
_APPENDING = threading.Lock()
FLUSH_SECONDS = 1.0
BLOCK_ROWS = 1_000
"""Rows a block holds before it is closed and written, not at the end of the second. In "loop"
mode the event loop prepares it in three steps, and a request that arrives meanwhile waits for
one (how long: docs/performance.md, "What the log costs")."""
MAX_BUFFER = 200_000
"""Requests a block may hold before the disk is considered to be falling behind (then new ones
are dropped, and counted)."""
MAX_LINES = MAX_BUFFER // BLOCK_ROWS
"""Lines the event loop prepared that may wait for the writer thread's disk."""


class PredictionLog:
    """One process's prediction log of one model version in one folder (`Home.env().logs`)."""

    def __init__(
        self,
        folder: Path,
        *,
        model: str,
        version: str,
        mode: Mode = "thread",
        sample_rate: float = 1.0,
        flush_seconds: float = FLUSH_SECONDS,
        signature: Signature | None = None,
    ) -> None:
        """`mode`: "loop" when `start` is called on the event loop that serves (the server),
        "thread" otherwise (see `Mode`). With `signature` (the artifact's), blocks are also
        indexed in columns (`cpmai.predlog.index`) for fast reading."""
        if mode not in ("loop", "thread"):
            raise ValueError(f"mode {mode!r}: expected 'loop' or 'thread'")
        self.mode = mode
        self._kinds: dict[str, str] | None = None
        self._names: tuple[str, ...] | None = None
        self._output_kind = "categorical"
        self._vocab: dict[str, dict[Any, int]] = {"__endpoint__": {}}
        if signature is not None:
            self._kinds = {s.name: feature_kind(s.type) for s in signature.inputs}
            self._names = tuple(s.name for s in signature.inputs)
            label = signature.label
            numeric = label is not None and label.type == "number"
            self._output_kind = "numeric" if numeric else "categorical"
            for spec in signature.inputs:
                known = sorted(spec.categories or [], key=str)
                self._vocab[spec.name] = {value: code for code, value in enumerate(known)}
            labels = list(signature.classes or [])
            self._vocab["__output__"] = {value: code for code, value in enumerate(labels)}
        self._pending: list[tuple[int, int, dict[str, Any]]] = []
        self._pending_path: Path | None = None
        self._pending_requests = 0
        self._pending_since = 0.0
        self.folder = folder
        self.model = model
        self.version = version
        self.sample_rate = sample_rate
        self.flush_seconds = flush_seconds
        self._open = OpenBlock(self._names, sample_rate)
        # `cpmai predict` hands over on its thread and the writer takes on its own
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._timer: asyncio.TimerHandle | None = None
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
        """Start the writer. In "loop" mode, called on the running event loop that serves: the
        log does its CPU work there, between requests, and leaves only the disk to the thread
        (see `_prepare`); in "thread" mode the thread does all of it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.mode == "loop":
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError("a 'loop' log starts on a running event loop") from None
            self._loop_thread = threading.get_ident()
            self._timer = self._loop.call_later(self.flush_seconds, self._tick)
        self._thread = threading.Thread(target=self._run, name="cpmai-predlog", daemon=True)
        self._thread.start()

    def served(self, batch: Batch, entries: list[Entry]) -> None:
        """A batch the model scored and the entries (`Entry`) of the requests it answered, on
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
        entry: Entry = (self._clock(), 0.0, latency_s, endpoint, status, rows,
                        log_id(request_id), warnings or None, error, probabilities is not None,
                        0, origin)  # fmt: skip
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
        meanwhile go first; none waits for more than one step): the block, its JSON line, its
        index arrays; the thread writes them. On the loop, not in the thread, because there the
        values are still in this core's caches and no interpreter lock passes back and forth
        between threads: less CPU time than the thread took for the same work, measured
        (docs/performance.md, "What the log costs")."""
        self._scheduled = False
        with collector_paused():
            block = self._take()
        if block is not None and block.rows:
            self._then(self._serialize, block)

    def _serialize(self, block: ClosedBlock) -> None:
        with collector_paused():
            line = self._line(block)
        self._then(self._index_then_write, block, line)

    def _index_then_write(self, block: ClosedBlock, line: bytes) -> None:
        with collector_paused():
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

    def _take(self) -> ClosedBlock | None:
        """The open block, closed (and a new one opened), or None if it holds nothing."""
        with self._lock:
            filled, self._open = self._open, OpenBlock(self._names, self.sample_rate)
        return ClosedBlock(filled) if filled.entries else None

    def _line(self, block: ClosedBlock) -> bytes:
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

    def _arrays(self, block: ClosedBlock) -> dict[str, Any] | None:
        """The block's index arrays (`index.block_arrays`), or None: no signature, or values
        that do not fit it (the JSON line stays; readers parse it)."""
        if self._kinds is None:
            return None
        from cpmai.predlog import index

        try:
            return index.block_arrays(block, self._kinds, self._output_kind, self._vocab)
        except index.Unindexable:
            return None

    def flush(self) -> int:
        """Write everything handed over so far, on the calling thread (in the server, the
        loop's), before returning; returns the number of requests written."""
        while self._steps:  # blocks on their way through the loop's steps, in order
            self._step()
        written = self._write_lines()
        with collector_paused():
            block = self._take()
            if block is None or not block.rows:  # nothing, or nothing sampled
                return written
            line = self._line(block)
            arrays = self._arrays(block)
        return written + self._write(line, len(block.times), arrays)

    def _path(self) -> Path:
        """Today's file of this process."""
        return today_file(self.folder, PREDICTIONS)

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
                with collector_paused():
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
        from cpmai.predlog import index

        if (
            self._pending_requests >= index.INDEX_MAX_REQUESTS
            or self._clock() - self._pending_since >= index.INDEX_SECONDS
            or self._stop.is_set()
        ):
            self._write_index()

    def _write_index(self) -> None:
        from cpmai.predlog import index

        pending, self._pending, self._pending_requests = self._pending, [], 0
        if not pending or self._pending_path is None or self._kinds is None:
            return
        target = index_file(self._pending_path, self.version)
        with contextlib.suppress(OSError):  # the index only saves readers time
            index.write_record(
                target, pending, version=self.version, sample_rate=self.sample_rate,
                kinds=self._kinds, pause=_let_requests_run,
            )  # fmt: skip

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            try:
                if self.mode == "loop":
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


def _let_requests_run() -> None:
    """Release the interpreter for a moment (the event loop takes it if it is waiting)."""
    time.sleep(0)
