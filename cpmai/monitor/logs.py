"""Reading an environment's prediction log and resource samples into numpy columns.

The prediction log is JSON lines (`cpmai.serving.predlog`), one file per server process and day.
Parsing JSON is what costs here (about 8 µs a line of 30 features on this machine), so large
logs are cut at line boundaries into pieces of `PIECE_BYTES` that worker processes parse in
parallel; each piece comes back as numpy arrays, never as millions of Python objects. Inputs are
kept only for the version under study (`focus`): drift and data quality compare that version's
traffic with its own reference data. A line that is not JSON (a torn write still in progress,
a damaged disk) is counted, never fatal.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
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


@dataclass
class _Parsed:
    time: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    weight: list[float] = field(default_factory=list)
    version: list[str] = field(default_factory=list)
    endpoint: list[str] = field(default_factory=list)


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
    import gc

    import numpy as np
    import orjson

    focus, specs, output_kind, since, until, with_ids = job
    with Path(piece.path).open("rb") as handle:
        handle.seek(piece.start)
        data = handle.read(piece.end - piece.start)
    lines = data.split(b"\n")
    lines.pop()  # b"" after the last newline, or a line still being written (read next time)
    consumed = piece.start + data.rfind(b"\n") + 1
    since_text = _iso(since) if since is not None else None
    until_text = _iso(until) if until is not None else None
    req = _Parsed()
    columns: dict[str, list[Any]] = {spec.name: [] for spec in specs if spec.kind != "text"}
    outputs: list[Any] = []
    row_time: list[float] = []
    ids: list[Any] = []
    unseen: dict[str, Counter[str]] = {}
    refused_rows = unreadable = 0
    enabled = gc.isenabled()
    gc.disable()  # millions of short-lived containers: the collector would only slow this down
    try:
        for line in lines:
            try:
                doc = orjson.loads(line)
                moment = doc["time"]
                if (since_text is not None and moment < since_text) or (
                    until_text is not None and moment >= until_text
                ):
                    continue
                stamp = _epoch(moment)
                status = int(doc["status"])
                rows = int(doc.get("rows") or 0)
                version = str(doc.get("version"))
                inputs = doc.get("inputs")
                rate = float(doc.get("sample_rate") or 1.0)
                latency = float(doc["latency_ms"])
            except (ValueError, KeyError, TypeError):
                unreadable += 1
                continue
            req.time.append(stamp)
            req.status.append(status)
            req.latency.append(latency)
            req.rows.append(rows)
            req.weight.append(1.0 / rate if rate > 0 else 1.0)
            req.version.append(version)
            req.endpoint.append(str(doc.get("endpoint")))
            if version != focus or not isinstance(inputs, dict):
                continue
            if status >= 400:
                refused_rows += _count_unseen(specs, inputs, unseen)
                continue
            got = doc.get("outputs")
            if not isinstance(got, list) or len(got) != rows:
                unreadable += 1
                continue
            try:
                for name, values in columns.items():
                    part = inputs[name]
                    if len(part) != rows:
                        raise ValueError
                    if rows == 1:
                        values.append(part[0])
                    else:
                        values.extend(part)
            except (KeyError, TypeError, ValueError):
                # undo this line's partial columns: every column must stay aligned
                size = len(outputs)
                for values in columns.values():
                    del values[size:]
                unreadable += 1
                continue
            outputs.extend(got)
            row_time.extend([stamp] * rows)
            if with_ids:
                rid = doc.get("id")
                ids.extend((rid, i) for i in range(rows))
    finally:
        if enabled:
            gc.enable()
    features: dict[str, Any] = {}
    vocab: dict[str, list[Any]] = {}
    for spec in specs:
        if spec.kind == "numeric":
            features[spec.name] = _floats(columns[spec.name], np)
        elif spec.kind == "categorical":
            features[spec.name], vocab[spec.name] = _codes(columns[spec.name], np)
    if output_kind == "numeric":
        out_values = _floats(outputs, np)
    else:
        out_values, vocab["__output__"] = _codes(outputs, np)
    return {
        "time": np.array(req.time, dtype=np.float64),
        "status": np.array(req.status, dtype=np.int16),
        "latency": np.array(req.latency, dtype=np.float64),
        "rows": np.array(req.rows, dtype=np.int64),
        "weight": np.array(req.weight, dtype=np.float64),
        "version": req.version,
        "endpoint": req.endpoint,
        "row_time": np.array(row_time, dtype=np.float64),
        "features": features,
        "vocab": vocab,
        "outputs": out_values,
        "ids": ids if with_ids else None,
        "unseen": unseen,
        "refused_rows": refused_rows,
        "unreadable": unreadable,
        "consumed": consumed,
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


def _codes(values: list[Any], np: Any) -> tuple[Any, list[Any]]:
    """Integer codes (-1 for None) and the values they stand for, in order of appearance."""
    index: dict[Any, int] = {}
    codes = np.fromiter(
        (-1 if v is None else index.setdefault(_hashable(v), len(index)) for v in values),
        dtype=np.int32,
        count=len(values),
    )
    return codes, list(index)


def _hashable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) else repr(value)


def _count_unseen(specs: list[FeatureSpec], inputs: dict[str, Any], into: dict[str, Any]) -> int:
    rows = 0
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

    versions: list[str] = []
    endpoints: list[str] = []
    version_codes = _relabel([p["version"] for p in parts], versions, np)
    endpoint_codes = _relabel([p["endpoint"] for p in parts], endpoints, np)
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


def _relabel(lists: list[list[str]], names: list[str], np: Any) -> Any:
    index: dict[str, int] = {}
    out = []
    for values in lists:
        out.append(
            np.fromiter(
                (index.setdefault(v, len(index)) for v in values), dtype=np.int16, count=len(values)
            )
        )
    names.extend(index)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int16)


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


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
