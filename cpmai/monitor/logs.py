"""Reading an environment's prediction log and resource samples into numpy columns.

The prediction log (`cpmai.serving.predlog`) is one file per server process and day, one JSON
line per block of requests (a second's worth), in columns: numpy takes each column in one call.
Parsing is still what costs (about 4 µs a request of 30 inputs on the 2-core machine), so large
logs are cut at line boundaries into pieces of `PIECE_BYTES` that worker processes parse in
parallel; each piece comes back as numpy arrays, never as millions of Python objects. Inputs are
kept only for the version under study (`focus`): drift and data quality compare that version's
traffic with its own reference data. A line that cannot be read (damaged, or not a block) is
counted, never fatal; a line still being written is left for the next read.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpmai.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

PIECE_BYTES = 16 << 20
PARALLEL_BYTES = 48 << 20
"""Below this much log, one process parses it all (starting workers would cost more)."""
_DAY = re.compile(r"-(\d{4}-\d{2}-\d{2})-\d+\.jsonl$")


@dataclass
class FeatureSpec:
    """What the reader needs to know of one input: its name and how to store it."""

    name: str
    kind: str
    """"numeric" (float64, NaN for missing), "categorical" (codes), or "text" (not kept)."""
    categories: frozenset[Any] = frozenset()


@dataclass
class Traffic:
    """The requests of a period (one entry per logged request) and the rows of the focus version
    (one entry per scored row)."""

    time: np.ndarray
    """Request time, seconds since the epoch (float64)."""
    status: np.ndarray
    latency_ms: np.ndarray
    rows: np.ndarray
    weight: np.ndarray
    """1 / sample_rate: how many requests a logged one stands for."""
    version: np.ndarray
    """Index into `versions`."""
    versions: list[str]
    endpoint: np.ndarray
    endpoints: list[str]
    row_time: np.ndarray
    """Per row of the focus version: its request's time."""
    features: dict[str, np.ndarray]
    """Per row of the focus version: float64 values, or int32 codes into `vocab[name]` (-1 for
    a missing value)."""
    vocab: dict[str, list[Any]]
    outputs: np.ndarray
    """Per row of the focus version: the prediction (float64 or codes into vocab["__output__"])."""
    ids: list[Any] | None
    """Per row of the focus version: (request id, row index within the request), when asked."""
    unseen: dict[str, Counter[str]]
    """Per categorical input: values refused as unknown categories (from error lines)."""
    refused_rows: int
    unreadable: int
    files: int
    bytes: int

    @property
    def requests(self) -> int:
        return int(self.time.shape[0])


@dataclass
class _Piece:
    path: str
    start: int
    end: int


def log_folder(home: Path, name: str, env: str) -> Path:
    return home / "logs" / name / env


def log_files(folder: Path, kind: str, since: float | None, until: float | None) -> list[Path]:
    """`kind`-DAY-PID.jsonl files whose day can hold a line in [since, until]."""
    if not folder.is_dir():
        return []
    first = _day(since) if since is not None else None
    last = _day(until) if until is not None else None
    out = []
    for path in sorted(folder.glob(f"{kind}-*.jsonl")):
        match = _DAY.search(path.name)
        if match is None:
            continue
        day = match.group(1)
        if (first is None or day >= first) and (last is None or day <= last):
            out.append(path)
    return out


def _day(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d")


def read_traffic(
    folder: Path,
    *,
    focus: str | None,
    specs: list[FeatureSpec],
    output_kind: str,
    since: float | None = None,
    until: float | None = None,
    with_ids: bool = False,
    workers: int | None = None,
) -> Traffic:
    """Every logged request in [since, until); the focus version's rows as columns."""
    files = log_files(folder, "predictions", since, until)
    pieces = list(_pieces(files))
    total = sum(p.end - p.start for p in pieces)
    job = (focus, specs, output_kind, since, until, with_ids)
    cpus = workers or os.cpu_count() or 1
    if total >= PARALLEL_BYTES and cpus > 1 and len(pieces) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(
            max_workers=min(cpus, len(pieces)), mp_context=multiprocessing.get_context(method)
        ) as pool:
            parts = list(pool.map(_parse_piece, pieces, [job] * len(pieces)))
    else:
        parts = [_parse_piece(piece, job) for piece in pieces]
    return _join(parts, specs, output_kind, with_ids, len(files), total)


def _pieces(files: list[Path]) -> Any:
    for path in files:
        size = path.stat().st_size
        start = 0
        with path.open("rb") as handle:
            while start < size:
                end = min(start + PIECE_BYTES, size)
                if end < size:
                    handle.seek(end)
                    handle.readline()  # finish the line the cut fell in
                    end = min(handle.tell(), size)
                yield _Piece(str(path), start, end)
                start = end


def _parse_piece(piece: _Piece, job: tuple[Any, ...]) -> dict[str, Any]:
    """Parse one piece of a log file into arrays (runs in a worker process for large logs)."""
    import numpy as np
    import orjson

    focus, specs, output_kind, since, until, with_ids = job
    with Path(piece.path).open("rb") as handle:
        handle.seek(piece.start)
        data = handle.read(piece.end - piece.start)
    lines = data.split(b"\n")
    lines.pop()  # b"" after the last newline, or a line still being written (read next time)
    consumed = piece.start + data.rfind(b"\n") + 1
    acc = _Accumulator(specs, output_kind, with_ids)
    for line in lines:
        try:
            block = orjson.loads(line)
            acc.add(block, focus, since, until, np)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            acc.unreadable += 1
    return acc.result(np) | {"consumed": consumed}


class _Accumulator:
    """Blocks of one piece, filtered by time, as lists of numpy arrays."""

    def __init__(self, specs: list[FeatureSpec], output_kind: str, with_ids: bool) -> None:
        self.specs = specs
        self.output_kind = output_kind
        self.with_ids = with_ids
        self.requests: dict[str, list[Any]] = {
            k: [] for k in ("time", "status", "latency", "rows", "weight")
        }
        self.version: list[Any] = []
        self.version_index: dict[str, int] = {}
        self.endpoint: list[Any] = []
        self.endpoint_index: dict[str, int] = {}
        self.row_time: list[Any] = []
        self.features: dict[str, list[Any]] = {s.name: [] for s in specs if s.kind != "text"}
        self.vocab: dict[str, dict[Any, int]] = {
            s.name: {v: i for i, v in enumerate(sorted(s.categories, key=str))}
            for s in specs
            if s.kind == "categorical"
        }
        self.vocab["__output__"] = {}
        self.outputs: list[Any] = []
        self.ids: list[Any] = []
        self.unseen: dict[str, Counter[str]] = {}
        self.refused_rows = 0
        self.unreadable = 0

    def add(
        self, block: dict[str, Any], focus: str | None, since: Any, until: Any, np: Any
    ) -> None:
        req = block["requests"]
        times = np.asarray(req["t"], dtype=np.float64)
        count = len(times)
        status = np.asarray(req["status"], dtype=np.int16)
        latency = np.asarray(req["latency_ms"], dtype=np.float64)
        rows = np.asarray(req["rows"], dtype=np.int64)
        if not (len(status) == len(latency) == len(rows) == count):
            raise ValueError("columns of unequal length")
        keep = np.ones(count, dtype=bool)
        if since is not None:
            keep &= times >= since
        if until is not None:
            keep &= times < until
        rate = float(block.get("sample_rate") or 1.0)
        version = str(block["version"])
        if keep.any():
            self.requests["time"].append(times[keep])
            self.requests["status"].append(status[keep])
            self.requests["latency"].append(latency[keep])
            self.requests["rows"].append(rows[keep])
            weight = np.where(status[keep] < 400, 1.0 / rate if rate > 0 else 1.0, 1.0)
            self.requests["weight"].append(weight)
            kept = int(keep.sum())
            code = self.version_index.setdefault(version, len(self.version_index))
            self.version.append(np.full(kept, code, dtype=np.int16))
            index = self.endpoint_index
            codes = [index.setdefault(e, len(index)) for e in req["endpoint"]]
            if len(codes) != count:
                raise ValueError("columns of unequal length")
            self.endpoint.append(np.array(codes, dtype=np.int16)[keep])
        if version != focus:
            return
        for refused in block.get("refused") or []:
            if keep[int(refused["request"])]:
                self.refused_rows += _count_unseen(self.specs, refused["inputs"], self.unseen)
        served = np.where(status < 400, rows, 0)
        total = int(served.sum())
        outputs = block["outputs"]
        if len(outputs) != total:
            raise ValueError("outputs do not match the rows served")
        row_keep = np.repeat(keep, served)
        if not row_keep.any():
            return
        everything = bool(row_keep.all())
        self.row_time.append(np.repeat(times, served)[row_keep])
        inputs = block["inputs"]
        for spec in self.specs:
            if spec.kind == "text":
                continue
            values = inputs[spec.name]
            if len(values) != total:
                raise ValueError(f"input {spec.name} does not match the rows served")
            if spec.kind == "numeric":
                column = _floats(values, np)
            else:
                column = _codes(values, self.vocab[spec.name], np)
            self.features[spec.name].append(column if everything else column[row_keep])
        if self.output_kind == "numeric":
            out = _floats(outputs, np)
        else:
            out = _codes(outputs, self.vocab["__output__"], np)
        self.outputs.append(out if everything else out[row_keep])
        if self.with_ids:
            ids = req["id"]
            for index in np.flatnonzero(keep & (served > 0)).tolist():
                self.ids.extend((ids[index], r) for r in range(int(served[index])))

    def result(self, np: Any) -> dict[str, Any]:
        def cat(parts: list[Any], dtype: Any) -> Any:
            return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

        features: dict[str, Any] = {}
        for spec in self.specs:
            if spec.kind == "numeric":
                features[spec.name] = cat(self.features[spec.name], np.float64)
            elif spec.kind == "categorical":
                features[spec.name] = cat(self.features[spec.name], np.int32)
        return {
            "time": cat(self.requests["time"], np.float64),
            "status": cat(self.requests["status"], np.int16),
            "latency": cat(self.requests["latency"], np.float64),
            "rows": cat(self.requests["rows"], np.int64),
            "weight": cat(self.requests["weight"], np.float64),
            "version": cat(self.version, np.int16),
            "versions": list(self.version_index),
            "endpoint": cat(self.endpoint, np.int16),
            "endpoints": list(self.endpoint_index),
            "row_time": cat(self.row_time, np.float64),
            "features": features,
            "vocab": {name: list(index) for name, index in self.vocab.items()},
            "outputs": cat(self.outputs, np.float64 if self.output_kind == "numeric" else np.int32),
            "ids": self.ids if self.with_ids else None,
            "unseen": self.unseen,
            "refused_rows": self.refused_rows,
            "unreadable": self.unreadable,
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


def _codes(values: list[Any], index: dict[Any, int], np: Any) -> Any:
    """Integer codes into `index` (grown with values not seen before); -1 for None."""
    lookup = index.get
    codes = [lookup(v, -2) if type(v) is str else -2 for v in values]
    if -2 in codes:  # a value not indexed yet, a None, or a number/bool category
        for i, value in enumerate(values):
            if codes[i] == -2:
                if value is None:
                    codes[i] = -1
                else:
                    key = _hashable(value)
                    codes[i] = index.setdefault(key, len(index))
    return np.array(codes, dtype=np.int32)


def _hashable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) else repr(value)


def _count_unseen(specs: list[FeatureSpec], inputs: Any, into: dict[str, Any]) -> int:
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
            if value is not None and _hashable(value) not in spec.categories:
                into.setdefault(spec.name, Counter())[str(value)[:60]] += 1
    return rows


def _join(
    parts: list[dict[str, Any]],
    specs: list[FeatureSpec],
    output_kind: str,
    with_ids: bool,
    files: int,
    total: int,
) -> Traffic:
    import numpy as np

    def cat(key: str, dtype: Any) -> Any:
        arrays = [p[key] for p in parts]
        return np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype)

    version_codes, versions = _recode(parts, "version", "versions", np)
    endpoint_codes, endpoints = _recode(parts, "endpoint", "endpoints", np)
    features: dict[str, Any] = {}
    vocab: dict[str, list[Any]] = {}
    for spec in specs:
        if spec.kind == "numeric":
            features[spec.name] = np.concatenate(
                [p["features"][spec.name] for p in parts] or [np.zeros(0)]
            )
        elif spec.kind == "categorical":
            features[spec.name], vocab[spec.name] = _merge_codes(parts, spec.name, np)
    if output_kind == "numeric":
        outputs = np.concatenate([p["outputs"] for p in parts] or [np.zeros(0)])
    else:
        outputs, vocab["__output__"] = _merge_codes(parts, "__output__", np, key="outputs")
    unseen: dict[str, Counter[str]] = {}
    for part in parts:
        for name, counts in part["unseen"].items():
            unseen.setdefault(name, Counter()).update(counts)
    ids: list[Any] | None = None
    if with_ids:
        ids = [item for p in parts for item in (p["ids"] or [])]
    return Traffic(
        time=cat("time", np.float64),
        status=cat("status", np.int16),
        latency_ms=cat("latency", np.float64),
        rows=cat("rows", np.int64),
        weight=cat("weight", np.float64),
        version=version_codes,
        versions=versions,
        endpoint=endpoint_codes,
        endpoints=endpoints,
        row_time=cat("row_time", np.float64),
        features=features,
        vocab=vocab,
        outputs=outputs,
        ids=ids,
        unseen=unseen,
        refused_rows=sum(p["refused_rows"] for p in parts),
        unreadable=sum(p["unreadable"] for p in parts),
        files=files,
        bytes=total,
    )


def _recode(
    parts: list[dict[str, Any]], key: str, names_key: str, np: Any
) -> tuple[Any, list[str]]:
    """Each piece numbered its names in its own order: map them onto one list."""
    merged: dict[str, int] = {}
    out = []
    for part in parts:
        mapping = np.array([merged.setdefault(n, len(merged)) for n in part[names_key]] + [0])
        out.append(mapping[part[key]].astype(np.int16) if len(part[key]) else part[key])
    return (np.concatenate(out) if out else np.zeros(0, dtype=np.int16)), list(merged)


def _merge_codes(
    parts: list[dict[str, Any]], name: str, np: Any, key: str = "features"
) -> tuple[Any, list[Any]]:
    """Each piece coded its values in its own order: map them onto one vocabulary."""
    merged: dict[Any, int] = {}
    out = []
    for part in parts:
        codes = part[key] if key == "outputs" else part["features"][name]
        local = part["vocab"][name]
        mapping = np.array([merged.setdefault(v, len(merged)) for v in local] + [-1])
        out.append(mapping[codes] if len(codes) else codes)  # -1 indexes the trailing -1
    return (np.concatenate(out) if out else np.zeros(0, dtype=np.int32)), list(merged)


def _epoch(text: str) -> float:
    # "2026-11-26T05:00:00.123456Z": fromisoformat reads the Z since 3.11
    return datetime.fromisoformat(text).timestamp()


def read_resources(folder: Path, since: float | None, until: float | None) -> list[dict[str, Any]]:
    """The resource samples (`cpmai.serving.resources`) in [since, until), oldest first."""
    import orjson

    samples = []
    for path in log_files(folder, "resources", since, until):
        for line in path.read_bytes().splitlines():
            try:
                doc = orjson.loads(line)
                moment = _epoch(doc["time"])
                float(doc["cpu_percent"]), float(doc["rss_bytes"])
            except (ValueError, KeyError, TypeError):
                continue
            if (since is None or moment >= since) and (until is None or moment < until):
                doc["t"] = moment
                samples.append(doc)
    samples.sort(key=lambda d: d["t"])
    return samples


def parse_moment(text: str, *, now: float) -> float:
    """An ISO time (`2026-11-26T10:00`, `2026-11-26`) or an age (`90m`, `2h`, `7d`) → epoch."""
    text = text.strip()
    try:
        return now - parse_duration(text)
    except UsageError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"{text!r} is neither a time (2026-11-26T10:00) nor an age (30m, 2h, 7d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """`30s`, `5m`, `1h`, `7d` → seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise UsageError(f"{text!r} is not a duration (e.g. 30s, 5m, 1h, 7d)")
    return float(match.group(1)) * _UNITS[match.group(2)]
