"""Parsing the prediction log's JSON lines into columns: one piece of a file at a time (in a
worker process for large logs), each coming back as numpy arrays, never as millions of Python
objects."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpmai.predlog.collector import collector_paused
from cpmai.predlog.format import LOST
from cpmai.predlog.index import encode, hashable

if TYPE_CHECKING:
    from cpmai.predlog.reader import FeatureSpec

UNREADABLE_NAMED = 5
"""Unreadable lines named (file, byte offset, why); the rest are only counted."""


@dataclass
class Piece:
    """[start, end) of one log file, both at line starts (or end at the file's end)."""

    path: str
    start: int
    end: int


def parse_piece(piece: Piece, job: tuple[Any, ...]) -> dict[str, Any]:
    """Parse one piece of a log file into arrays (runs in a worker process for large logs)."""
    import numpy as np
    import orjson

    focus, specs, output_kind, since, until, with_ids, output_categories = job
    with Path(piece.path).open("rb") as handle:
        handle.seek(piece.start)
        data = handle.read(piece.end - piece.start)
    lines = data.split(b"\n")
    lines.pop()  # b"" after the last newline, or a line still being written (read next time)
    consumed = piece.start + data.rfind(b"\n") + 1
    acc = _Accumulator(specs, output_kind, with_ids, output_categories)
    offset = piece.start
    with collector_paused():  # a piece is millions of short-lived objects
        for line in lines:
            at, offset = offset, offset + len(line) + 1
            try:
                block = orjson.loads(line)
                acc.add(block, focus, since, until)
            except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
                if not line.strip():
                    continue  # a blank line: not a block (how a damaged line is blanked out)
                acc.unreadable += 1
                if len(acc.unreadable_at) < UNREADABLE_NAMED:
                    acc.unreadable_at.append((Path(piece.path).name, at, _why(exc)))
    return acc.result(np) | {"consumed": consumed}


def _why(exc: Exception) -> str:
    """What was wrong with an unreadable line, in a few words."""
    if isinstance(exc, KeyError):
        text = f"no {exc.args[0]!r} field" if exc.args else "a field is missing"
    elif isinstance(exc, ValueError):  # orjson.JSONDecodeError is one
        text = f"not JSON: {exc}" if type(exc).__name__ == "JSONDecodeError" else str(exc)
    else:
        text = f"not a block ({type(exc).__name__}: {exc})"
    return text[:160]


class _Accumulator:
    """The blocks of one piece, filtered by time: Python lists extended block by block (a quiet
    server writes a block of a few requests every second, so per-block numpy calls would cost
    more than the data), turned into numpy arrays once at the end."""

    def __init__(
        self,
        specs: list[FeatureSpec],
        output_kind: str,
        with_ids: bool,
        output_categories: list[Any] | None = None,
    ) -> None:
        self.specs = [s for s in specs if s.kept]
        self.names = {s.name for s in self.specs}
        self.output_kind = output_kind
        self.with_ids = with_ids
        self.time: list[float] = []
        self.status: list[int] = []
        self.latency: list[float] = []
        self.rows: list[int] = []
        self.rate: list[float] = []
        self.version: list[int] = []
        self.version_index: dict[str, int] = {}
        self.endpoint: list[str] = []
        self.origin: list[Any] = []
        self.row_time: list[float] = []
        self.row_synthetic: list[bool] = []
        self.features: dict[str, list[Any]] = {s.name: [] for s in self.specs}
        self.vocab: dict[str, dict[Any, int]] = {
            s.name: {v: i for i, v in enumerate(sorted(s.categories, key=str))}
            for s in self.specs
            if s.kind != "numeric"
        }
        self.vocab["__output__"] = {v: i for i, v in enumerate(output_categories or [])}
        self.outputs: list[Any] = []
        self.ids: list[Any] = []
        self.unseen: dict[str, Counter[str]] = {}
        self.refused_rows = 0
        self.unreadable = 0
        self.unreadable_at: list[tuple[str, int, str]] = []
        self.lost: list[tuple[float, float, int, str]] = []

    def add(self, block: dict[str, Any], focus: str | None, since: Any, until: Any) -> None:
        if LOST in block and "requests" not in block:  # answered, not logged: counted
            lost = block[LOST]
            moment = float(lost["until"])
            if (since is None or moment >= since) and (until is None or moment < until):
                item = (float(lost["since"]), moment, int(lost["requests"]), str(lost["reason"]))
                self.lost.append(item)
            return
        req = block["requests"]
        times, status, latency = req["t"], req["status"], req["latency_ms"]
        rows, endpoint = req["rows"], req["endpoint"]
        count = len(times)
        origins = req.get("origin")  # only in blocks that hold synthetic traffic
        if not (len(status) == len(latency) == len(rows) == len(endpoint) == count) or (
            origins is not None and len(origins) != count
        ):
            raise ValueError("columns of unequal length")
        if not count:
            return
        first, last = min(times), max(times)
        if (since is not None and last < since) or (until is not None and first >= until):
            return
        partial = (since is not None and first < since) or (until is not None and last >= until)
        keep = (
            [(since is None or t >= since) and (until is None or t < until) for t in times]
            if partial
            else None
        )
        rate = float(block.get("sample_rate") or 1.0)
        version = str(block["version"])
        mine = version == focus
        if mine:  # check before anything is added: the columns must stay aligned
            refused = max(status) >= 400
            served = (
                [r if s < 400 else 0 for r, s in zip(rows, status, strict=True)]
                if refused
                else rows
            )
            total = sum(served)
            outputs = block["outputs"]
            inputs = block["inputs"]
            if len(outputs) != total:
                raise ValueError(f"{len(outputs)} outputs for {total} rows served")
            if total and not inputs.keys() >= self.names:
                missing = ", ".join(sorted(self.names - inputs.keys()))
                raise ValueError(f"no values for input(s) {missing}")
            if total and any(len(inputs[name]) != total for name in self.names):
                raise ValueError(f"inputs do not match the {total} rows served")
        code = self.version_index.setdefault(version, len(self.version_index))
        if keep is None:
            self.time.extend(times)
            self.status.extend(status)
            self.latency.extend(latency)
            self.rows.extend(rows)
            self.endpoint.extend(endpoint)
            self.origin.extend(origins or [None] * count)
            kept = count
        else:
            for column, values in (
                (self.time, times),
                (self.status, status),
                (self.latency, latency),
                (self.rows, rows),
                (self.endpoint, endpoint),
                (self.origin, origins or [None] * count),
            ):
                column.extend(v for v, k in zip(values, keep, strict=True) if k)
            kept = sum(keep)
        self.rate.extend([rate] * kept)
        self.version.extend([code] * kept)
        if not mine:
            return
        for refused in block.get("refused") or []:
            request = int(refused["request"])
            if origins is not None and origins[request] is not None:
                continue  # a load test's unseen values are not the data's (`set_apart`)
            if keep is None or keep[request]:
                self.refused_rows += count_unseen(self.specs, refused["inputs"], self.unseen)
        if not total:
            return
        if keep is None:
            self.outputs.extend(outputs)
            for spec in self.specs:
                self.features[spec.name].extend(inputs[spec.name])
            if total == count and not refused:  # one row per request (the usual case)
                self.row_time.extend(times)
                self.row_synthetic.extend(
                    [o is not None for o in origins] if origins else [False] * count
                )
                if self.with_ids:
                    self.ids.extend((rid, 0) for rid in req["id"])
                return
            rows_of: Iterable[int] = range(count)
        else:
            row_keep = [k for k, n in zip(keep, served, strict=True) for _ in range(n)]
            self.outputs.extend(v for v, k in zip(outputs, row_keep, strict=True) if k)
            for spec in self.specs:
                values = inputs[spec.name]
                self.features[spec.name].extend(
                    v for v, k in zip(values, row_keep, strict=True) if k
                )
            rows_of = [i for i in range(count) if keep[i]]
        for i in rows_of:
            n = served[i]
            if n:
                self.row_time.extend([times[i]] * n)
                self.row_synthetic.extend([origins is not None and origins[i] is not None] * n)
                if self.with_ids:
                    self.ids.extend((req["id"][i], r) for r in range(n))

    def result(self, np: Any) -> dict[str, Any]:
        status = np.array(self.status, dtype=np.int16)
        rate = np.array(self.rate, dtype=np.float64)
        weight = np.where((status < 400) & (rate > 0), 1.0 / np.where(rate > 0, rate, 1.0), 1.0)
        endpoint_index: dict[str, int] = {}
        endpoint = np.array(
            [endpoint_index.setdefault(e, len(endpoint_index)) for e in self.endpoint],
            dtype=np.int16,
        )
        origin_index: dict[str, int] = {}
        origin = np.array(
            [-1 if o is None else origin_index.setdefault(str(o), len(origin_index))
             for o in self.origin],
            dtype=np.int32,
        )  # fmt: skip
        features: dict[str, Any] = {}
        for spec in self.specs:
            values = self.features[spec.name]
            if spec.kind == "numeric":
                features[spec.name] = _floats(values, np)
            else:
                features[spec.name] = encode(values, self.vocab[spec.name])
        if self.output_kind == "numeric":
            outputs = _floats(self.outputs, np)
        else:
            outputs = encode(self.outputs, self.vocab["__output__"])
        return {
            "time": np.array(self.time, dtype=np.float64),
            "status": status,
            "latency": np.array(self.latency, dtype=np.float64),
            "rows": np.array(self.rows, dtype=np.int64),
            "weight": weight,
            "version": np.array(self.version, dtype=np.int16),
            "versions": list(self.version_index),
            "endpoint": endpoint,
            "endpoints": list(endpoint_index),
            "origin": origin,
            "origins": list(origin_index),
            "row_time": np.array(self.row_time, dtype=np.float64),
            "row_synthetic": np.array(self.row_synthetic, dtype=bool),
            "features": features,
            "vocab": {name: list(index) for name, index in self.vocab.items()},
            "outputs": outputs,
            "ids": self.ids if self.with_ids else None,
            "unseen": self.unseen,
            "refused_rows": self.refused_rows,
            "unreadable": self.unreadable,
            "unreadable_at": self.unreadable_at,
            "lost": self.lost,
        }


def _floats(values: list[Any], np: Any) -> Any:
    try:
        return np.array(values, dtype=np.float64)  # None becomes NaN
    except (TypeError, ValueError):
        return np.array([_float_or_nan(v) for v in values], dtype=np.float64)


def _float_or_nan(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def count_unseen(specs: list[FeatureSpec], inputs: Any, into: dict[str, Any]) -> int:
    rows = 0
    if not isinstance(inputs, dict):
        return 0
    for spec in specs:
        if spec.kind != "categorical" or not spec.categories:
            continue
        values = inputs.get(spec.name)
        if not isinstance(values, list):
            continue
        rows = max(rows, len(values))
        for value in values:
            if value is not None and hashable(value) not in spec.categories:
                into.setdefault(spec.name, Counter())[str(value)[:60]] += 1
    return rows
