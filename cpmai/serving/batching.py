"""Adaptive micro-batching: requests that arrive while the model is busy go into one call.

An idle batcher dispatches on the next turn of the event loop (requests parsed in the same turn
join), or after `max_latency_s` if that is set; a busy one queues. When a call finishes, the
queue — up to `max_rows` rows, and at least one request however many rows it carries — becomes
the next call. So at concurrency 1 a request waits for nothing, and under load batches grow by
themselves to what arrives during one model call.

ONNX models run on the event loop's thread (a call takes tens of microseconds; a thread hop would
cost as much). Other runtimes run in one worker thread so the server keeps answering health
checks and accepting requests during a long call.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cpmai.predlog.entry import Entry

Columns = dict[str, Any]
Outcome = tuple[Any, Any]
"""A model call's labels and probabilities (None unless asked for)."""
Batch = tuple[Columns, Any, Any]
"""A model call's columns, labels and probabilities (None unless asked for)."""
Scored = tuple[Batch, int]
"""What a request's `done` gets: its batch, and where its rows start in it (they are `rows`
long). The whole batch rather than a slice: the prediction log keeps a reference to the batch
instead of copying each request's values."""
Done = Callable[[Scored | None, BaseException | None], "Entry | None"]
"""Called once per request, with its batch (`Scored`) or with the exception; returns the
request's prediction-log entry when it was answered from the batch and is to be logged."""
Log = Callable[[Batch, list["Entry"]], None]
"""What takes a batch and its requests' log entries (`PredictionLog.served`, `cpmai.predlog`)."""


class _Item:
    __slots__ = ("columns", "done", "rows", "want_proba")

    def __init__(self, columns: Columns, rows: int, want_proba: bool, done: Done) -> None:
        self.columns = columns
        self.rows = rows
        self.want_proba = want_proba
        self.done = done


class Batcher:
    def __init__(
        self,
        run: Callable[[Columns, bool], Outcome],
        *,
        max_rows: int,
        max_latency_s: float,
        inline: bool,
        on_batch: Callable[[int], None] | None = None,
        log: Log | None = None,
    ) -> None:
        """`on_batch(rows)` before each model call; `log(batch, entries)` once all the call's
        requests have had their `done`, with the entries their `done` returned (none: not
        called)."""
        self.run = run
        self.max_rows = max_rows
        self.max_latency_s = max_latency_s
        self.inline = inline
        self.on_batch = on_batch
        self.log = log
        self._pending: deque[_Item] = deque()
        self._busy = False
        self._executor = None if inline else ThreadPoolExecutor(1, "cpmai-model")

    async def submit(self, columns: Columns, rows: int, want_proba: bool) -> Outcome:
        """Queue one request's rows; returns its labels and probabilities."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

        def done(scored: Scored | None, exc: BaseException | None) -> None:
            if future.done():
                return
            if exc is not None or scored is None:
                future.set_exception(exc or RuntimeError("no outcome"))
                return
            (_, labels, probabilities), start = scored
            end = start + rows
            probs = probabilities[start:end] if want_proba and probabilities is not None else None
            future.set_result((labels[start:end], probs))

        self._queue(_Item(columns, rows, want_proba, done))
        return await future

    def submit_callback(self, columns: Columns, rows: int, want_proba: bool, done: Done) -> None:
        """Queue one request's rows; `done` is called on the event loop's thread once the model
        has run (or failed) on them. Must be called from the event loop's thread."""
        self._queue(_Item(columns, rows, want_proba, done))

    def _queue(self, item: _Item) -> None:
        self._pending.append(item)
        if not self._busy:
            self._busy = True
            loop = asyncio.get_running_loop()
            if self.max_latency_s > 0:
                loop.call_later(self.max_latency_s, self._dispatch)
            else:
                loop.call_soon(self._dispatch)

    def _take(self) -> list[_Item]:
        taken: list[_Item] = []
        rows = 0
        pending = self._pending
        while pending:
            item = pending[0]
            if taken and rows + item.rows > self.max_rows:
                break
            taken.append(pending.popleft())
            rows += item.rows
        return taken

    def _dispatch(self) -> None:
        items = self._take()
        if not items:
            self._busy = False
            return
        merged = _merge([item.columns for item in items])
        want_proba = any(item.want_proba for item in items)
        if self.on_batch is not None:
            self.on_batch(sum(item.rows for item in items))
        if self._executor is None:
            try:
                outcome = self.run(merged, want_proba)
            except Exception as exc:
                self._failed(items, exc)
            else:
                self._deliver(items, merged, outcome)
            self._next()
            return
        loop = asyncio.get_running_loop()
        call = loop.run_in_executor(self._executor, self.run, merged, want_proba)
        call.add_done_callback(lambda finished: self._finished(finished, items, merged))

    def _finished(
        self, finished: asyncio.Future[Outcome], items: list[_Item], merged: Columns
    ) -> None:
        exc = finished.exception()
        if exc is not None:
            self._failed(items, exc)
        else:
            self._deliver(items, merged, finished.result())
        self._next()

    def _next(self) -> None:
        if self._pending:
            asyncio.get_running_loop().call_soon(self._dispatch)
        else:
            self._busy = False

    def _deliver(self, items: list[_Item], merged: Columns, outcome: Outcome) -> None:
        batch = (merged, *outcome)
        start = 0
        entries: list[Entry] = []
        try:
            for item in items:
                entry = item.done((batch, start), None)
                if entry is not None:
                    entries.append(entry)
                start += item.rows
        finally:  # whatever happened, what was answered is this batch's
            if entries and self.log is not None:
                self.log(batch, entries)

    def _failed(self, items: list[_Item], exc: BaseException) -> None:
        """One bad request must not fail its batch-mates: retry each alone."""
        if len(items) == 1:
            items[0].done(None, exc)
            return
        for item in items:
            try:
                labels, probabilities = self.run(item.columns, item.want_proba)
            except Exception as single:
                item.done(None, single)
            else:
                self._deliver([item], item.columns, (labels, probabilities))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)


def _merge(parts: list[Columns]) -> Columns:
    if len(parts) == 1:
        return parts[0]
    merged: Columns = {}
    for name in parts[0]:
        values: list[Any] = []
        for part in parts:
            values += part[name]
        merged[name] = values
    return merged
