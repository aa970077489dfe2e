"""The prediction log's blocks: the one being filled (`OpenBlock`) and a closed one, ready to be
written as one JSON line and its index arrays (`ClosedBlock`)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from itertools import chain
from operator import itemgetter
from typing import Any

from cpmai.predlog.entry import FIELDS, ID_TYPE_SET, ROW_START, ROWS, WANT_PROBA, Entry, log_id

Batch = tuple[dict[str, list[Any]], Any, Any]
"""A model call's columns, labels and probabilities (None unless asked for)."""
_GET_ROWS, _GET_WANT = itemgetter(ROWS), itemgetter(WANT_PROBA)


class OpenBlock:
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
        self.entries: list[Entry] = []
        self.labels: list[Any] = []  # the outputs, a run of rows at a time (arrays or lists)
        self.probabilities: list[Any] | None = None
        self.refused: list[dict[str, Any]] = []
        self.rows = 0  # rows of the batches handed over (what `BLOCK_ROWS` counts)
        self.served = 0  # rows logged
        self._discover = names is None
        self._sample_rate = sample_rate

    def add(self, batch: Batch, entries: list[Entry]) -> None:
        source, labels, probabilities = batch
        size = len(labels)
        self.rows += size
        if len(entries) == 1:  # at concurrency 1, every batch: this runs once a request
            only = entries[0]
            every = only[ROWS] == size and not only[WANT_PROBA]
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
            start, rows, want = request[ROW_START], request[ROWS], request[WANT_PROBA]
            if start == high and want is proba and high:
                high += rows
                continue
            if high:
                self._run(source, labels, probabilities, low, high, proba)
            low, high, proba = start, start + rows, want
        if high:
            self._run(source, labels, probabilities, low, high, proba)

    def refusal(self, entry: Entry, inputs: dict[str, list[Any]] | None) -> None:
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


class ClosedBlock:
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

    def __init__(self, filled: OpenBlock) -> None:
        import numpy as np

        from cpmai.predlog.index import packed

        fields = list(zip(*filled.entries, strict=True)) or [()] * len(FIELDS)
        (t, starts, elapsed, self.endpoint, self.status, self.rows, ids, self.warnings,
         self.error, _, _, origins) = fields  # fmt: skip
        self.origin = None if origins.count(None) == len(origins) else origins
        seconds = packed(elapsed, "d")  # once, for the times and the latencies
        self.times = _times(t, starts, seconds)
        self.latency = np.round(seconds * 1000, 4)  # to 0.1 µs (`round` a request: 2,000 instr.)
        self.ids = ids if ID_TYPE_SET.issuperset(map(type, ids)) else list(map(log_id, ids))
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
    from cpmai.predlog.index import packed

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
