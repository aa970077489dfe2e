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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

Columns = dict[str, Any]
Outcome = tuple[Any, Any]


class Batcher:
    def __init__(
        self,
        run: Callable[[Columns, bool], Outcome],
        *,
        max_rows: int,
        max_latency_s: float,
        inline: bool,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.run = run
        self.max_rows = max_rows
        self.max_latency_s = max_latency_s
        self.inline = inline
        self.on_batch = on_batch
        self._pending: list[tuple[Columns, int, bool, asyncio.Future[Outcome]]] = []
        self._busy = False
        self._executor = None if inline else ThreadPoolExecutor(1, "cpmai-model")

    async def submit(self, columns: Columns, rows: int, want_proba: bool) -> Outcome:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._pending.append((columns, rows, want_proba, future))
        if not self._busy:
            self._busy = True
            if self.max_latency_s > 0:
                loop.call_later(self.max_latency_s, self._dispatch)
            else:
                loop.call_soon(self._dispatch)
        return await future

    def _take(self) -> list[tuple[Columns, int, bool, asyncio.Future[Outcome]]]:
        taken: list[tuple[Columns, int, bool, asyncio.Future[Outcome]]] = []
        rows = 0
        while self._pending:
            item = self._pending[0]
            if taken and rows + item[1] > self.max_rows:
                break
            taken.append(self._pending.pop(0))
            rows += item[1]
        return taken

    def _dispatch(self) -> None:
        items = [item for item in self._take() if not item[3].cancelled()]
        if not items:
            if self._pending:
                self._dispatch()
            else:
                self._busy = False
            return
        merged = _merge([item[0] for item in items])
        want_proba = any(item[2] for item in items)
        if self.on_batch is not None:
            self.on_batch(sum(item[1] for item in items))
        if self._executor is None:
            try:
                outcome = self.run(merged, want_proba)
            except Exception as exc:
                self._failed(items, exc)
            else:
                self._deliver(items, outcome)
            self._next()
            return
        loop = asyncio.get_running_loop()
        call = loop.run_in_executor(self._executor, self.run, merged, want_proba)
        call.add_done_callback(lambda done: self._finished(done, items))

    def _finished(
        self,
        done: asyncio.Future[Outcome],
        items: list[tuple[Columns, int, bool, asyncio.Future[Outcome]]],
    ) -> None:
        exc = done.exception()
        if exc is not None:
            self._failed(items, exc)
        else:
            self._deliver(items, done.result())
        self._next()

    def _next(self) -> None:
        if self._pending:
            asyncio.get_running_loop().call_soon(self._dispatch)
        else:
            self._busy = False

    def _deliver(
        self, items: list[tuple[Columns, int, bool, asyncio.Future[Outcome]]], outcome: Outcome
    ) -> None:
        labels, probabilities = outcome
        start = 0
        for _, rows, want_proba, future in items:
            end = start + rows
            if not future.done():
                probs = (
                    probabilities[start:end] if want_proba and probabilities is not None else None
                )
                future.set_result((labels[start:end], probs))
            start = end

    def _failed(
        self, items: list[tuple[Columns, int, bool, asyncio.Future[Outcome]]], exc: BaseException
    ) -> None:
        """One bad request must not fail its batch-mates: retry each alone."""
        if len(items) == 1:
            if not items[0][3].done():
                items[0][3].set_exception(exc)
            return
        for columns, _, want_proba, future in items:
            if future.done():
                continue
            try:
                future.set_result(self.run(columns, want_proba))
            except Exception as single:
                future.set_exception(single)

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
