"""Reading an environment's prediction log and resource samples into numpy columns.

The prediction log (`cpmai.serving.predlog`) is one file per server process and day, one JSON
line per block of requests (a second's worth), in columns: numpy takes each column in one call.
Parsing is still what costs (9–13 µs a request of 30 inputs on the 2-core machine), so large
logs are cut at line boundaries into pieces of `PIECE_BYTES` that worker processes parse in
parallel; each piece comes back as numpy arrays, never as millions of Python objects. Inputs are
kept only for the version under study (`focus`): drift and data quality compare that version's
traffic with its own reference data. A line that cannot be read (damaged, or not a block) is
counted, with where it is and why (`Traffic.unreadable_at`): the reader goes on, and the caller
decides (`cpmai monitor` refuses to call such a period within bounds). A blank line is not a
block and is skipped; a line still being written is left for the next read.

Free text is kept only when asked (`FeatureSpec.keep`), coded like a category (each distinct text
once in the vocabulary): the server's index holds no text, so the focus version's blocks are then
parsed from JSON.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpmai.clock import epoch
from cpmai.serving.logindex import encode, hashable, merge_coded, read_records
from cpmai.serving.predlog import LOST

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
    """"numeric" (float64, NaN for missing), "categorical" (codes), or "text"."""
    categories: frozenset[Any] = frozenset()
    keep: bool = False
    """"text": keep the values (codes into a vocabulary of the distinct texts, like a category).
    Not kept unless asked: reading them means parsing the focus version's JSON lines."""

    @property
    def kept(self) -> bool:
        return self.kind != "text" or self.keep


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
    origin: np.ndarray
    """Index into `origins` (the source of synthetic traffic), -1 for real traffic."""
    origins: list[str]
    row_time: np.ndarray
    """Per row of the focus version: its request's time."""
    row_synthetic: np.ndarray
    """Per row of the focus version: whether its request was synthetic."""
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
    unreadable_at: list[tuple[str, int, str]] = field(default_factory=list)
    """The first `UNREADABLE_NAMED` unreadable lines: (file, byte offset, why)."""
    synthetic: dict[str, int] = field(default_factory=dict)
    """Synthetic requests in the period by source (weighted by 1/sample rate), whether or not
    they are counted in (`set_apart`)."""
    synthetic_included: bool = True
    """Whether the synthetic requests are among the requests and rows above."""
    lost: list[tuple[float, float, int, str]] = field(default_factory=list)
    """Requests answered but not logged (a full disk, a log that fell behind): (since, until,
    requests, reason) as the server recorded them (`predlog.LOST`)."""
    synthetic_spans: list[tuple[float, float]] = field(default_factory=list)
    """When synthetic requests were being answered: (first, last) of each run of them with no
    gap over `SPAN_GAP_S` (resource samples then measure the load test, not customers)."""

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


CACHE_FORMAT = 4
UNREADABLE_NAMED = 5


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
    output_categories: list[Any] | None = None,
    cache: Path | None = None,
    include_synthetic: bool = False,
) -> Traffic:
    """Every logged request in [since, until); the focus version's rows as columns. Synthetic
    requests (`cpmai.serving.origin`) are counted apart and left out unless `include_synthetic`.

    With `cache` (a folder), what was parsed of each log file is kept there as numpy arrays
    with the byte offset it reaches: the next read parses only what was appended since (log
    files only grow). A cache that does not match the file (replaced, shrunk) or the signature
    is ignored and rewritten. Reads that need request ids (label joins) bypass it."""
    import numpy as np

    files = log_files(folder, "predictions", since, until)
    indexed: dict[str, tuple[list[dict[str, Any]], list[tuple[int, int]]]] = {}
    if not with_ids:  # the index holds no request ids
        for path in files:
            found, covered = _indexed(path, focus, specs, output_kind)
            if found:
                indexed[str(path)] = (found, _gaps(covered, path.stat().st_size))
    use_cache = cache is not None and not with_ids
    schema = _schema_key(focus, specs, output_kind, output_categories)
    starts: dict[str, int] = {}
    cached: dict[str, dict[str, Any]] = {}
    if use_cache:
        assert cache is not None
        _drop_stale(cache, folder)
        for path in files:
            if str(path) in indexed:
                continue
            part = _load_cached(_cache_file(cache, path, schema), path, schema)
            if part is not None:
                cached[str(path)] = part
                starts[str(path)] = int(part["offset"])
    pieces: list[_Piece] = []
    for path in files:
        if str(path) in indexed:
            for low, high in indexed[str(path)][1]:
                pieces += _pieces_between(path, low, high)
        else:
            pieces += _pieces([path], starts)
    total = sum(p.end - p.start for p in pieces)
    # parse without the time filter when caching: the cache holds whole files
    window = (None, None) if use_cache else (since, until)
    job = (focus, specs, output_kind, *window, with_ids, output_categories)
    cpus = workers or os.cpu_count() or 1
    if total >= PARALLEL_BYTES and cpus > 1 and len(pieces) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(
            max_workers=min(cpus, len(pieces)), mp_context=multiprocessing.get_context(method)
        ) as pool:
            parsed = list(pool.map(_parse_piece, pieces, [job] * len(pieces)))
    else:
        parsed = [_parse_piece(piece, job) for piece in pieces]
    per_file: dict[str, list[dict[str, Any]]] = {}
    for piece, part in zip(pieces, parsed, strict=True):
        per_file.setdefault(piece.path, []).append(part)
    parts = []
    for path in files:
        key = str(path)
        new = per_file.get(key, [])
        if key in indexed:
            parts += indexed[key][0] + new
            continue
        if not use_cache:
            parts += new
            continue
        assert cache is not None
        old = [cached[key]] if key in cached else []
        if not new and old:
            parts.append(old[0])
            continue
        whole = _join_parts(old + new, specs, output_kind, False)
        whole["offset"] = max([int(p["consumed"]) for p in new] + [starts.get(key, 0)])
        _save_cached(_cache_file(cache, path, schema), path, schema, whole, np)
        parts.append(whole)
    filtered = [_filter_part(part, since, until, np) for part in parts]
    joined = _traffic(_join_parts(filtered, specs, output_kind, with_ids), len(files), total)
    return set_apart(joined, include=include_synthetic)


def synthetic_by_source(traffic: Traffic, mask: np.ndarray) -> dict[str, int]:
    """The synthetic requests among those `mask` selects, by source (weighted by 1/sample
    rate)."""
    import numpy as np

    chosen = mask & (traffic.origin >= 0)
    counts = np.bincount(
        traffic.origin[chosen], traffic.weight[chosen], minlength=len(traffic.origins)
    )
    return {
        source: round(float(count))
        for source, count in zip(traffic.origins, counts.tolist(), strict=True)
        if count
    }


SPAN_GAP_S = 1.0


def spans(times: np.ndarray, gap: float = SPAN_GAP_S) -> list[tuple[float, float]]:
    """Runs of moments with no gap over `gap` seconds, as (first, last)."""
    import numpy as np

    if not len(times):
        return []
    ordered = np.sort(times)
    breaks = np.nonzero(np.diff(ordered) > gap)[0]
    firsts = np.concatenate((ordered[:1], ordered[breaks + 1]))
    lasts = np.concatenate((ordered[breaks], ordered[-1:]))
    return list(zip(firsts.tolist(), lasts.tolist(), strict=True))


def set_apart(traffic: Traffic, *, include: bool) -> Traffic:
    """`traffic` with its synthetic requests counted by source (`Traffic.synthetic`) and their
    time spans noted (`Traffic.synthetic_spans`) and, unless `include`, left out with their
    rows."""
    synthetic = traffic.origin >= 0
    by_source = synthetic_by_source(traffic, synthetic)
    if include or not by_source:
        return replace(
            traffic,
            synthetic=by_source,
            synthetic_included=include,
            synthetic_spans=spans(traffic.time[synthetic]),
        )
    real, rows = ~synthetic, ~traffic.row_synthetic
    return replace(
        traffic,
        time=traffic.time[real],
        status=traffic.status[real],
        latency_ms=traffic.latency_ms[real],
        rows=traffic.rows[real],
        weight=traffic.weight[real],
        version=traffic.version[real],
        endpoint=traffic.endpoint[real],
        origin=traffic.origin[real],
        row_time=traffic.row_time[rows],
        row_synthetic=traffic.row_synthetic[rows],
        features={name: values[rows] for name, values in traffic.features.items()},
        outputs=traffic.outputs[rows],
        ids=None
        if traffic.ids is None
        else [item for item, keep in zip(traffic.ids, rows.tolist(), strict=True) if keep],
        synthetic=by_source,
        synthetic_included=False,
        synthetic_spans=spans(traffic.time[synthetic]),
    )


def _schema_key(
    focus: str | None, specs: list[FeatureSpec], output_kind: str, outputs: list[Any] | None
) -> str:
    import hashlib
    import json

    described: list[Any] = [CACHE_FORMAT, focus, output_kind, [str(v) for v in outputs or []]]
    described += [[s.name, s.kind, sorted(map(str, s.categories)), s.kept] for s in specs]
    return hashlib.sha256(json.dumps(described).encode()).hexdigest()


def _cache_file(cache: Path, log: Path, schema: str) -> Path:
    """One per log file and signature (monitoring two versions does not overwrite each other)."""
    return cache / f"{log.name}.{schema[:16]}.npz"


def _drop_stale(cache: Path, folder: Path) -> None:
    """Cached parses of log files that are gone (deleted, rotated away)."""
    if not cache.is_dir():
        return
    for item in cache.glob("*.npz"):
        log = item.name.rsplit(".", 2)[0]
        if not (folder / log).exists():
            item.unlink(missing_ok=True)


_ARRAYS = ("time", "status", "latency", "rows", "weight", "version", "endpoint", "origin",
           "row_time", "row_synthetic", "outputs")  # fmt: skip


def _save_cached(target: Path, log: Path, schema: str, part: dict[str, Any], np: Any) -> None:
    import json

    from cpmai.fsutil import write_atomic_with

    info = log.stat()
    meta = {
        "schema": schema,
        "inode": info.st_ino,
        "device": info.st_dev,
        "offset": part["offset"],
        "versions": part["versions"],
        "endpoints": part["endpoints"],
        "origins": part["origins"],
        "vocab": part["vocab"],
        "unseen": part["unseen"],
        "refused_rows": part["refused_rows"],
        "unreadable": part["unreadable"],
        "unreadable_at": part["unreadable_at"],
        "lost": part["lost"],
        "features": list(part["features"]),
    }
    arrays = {name: part[name] for name in _ARRAYS}
    arrays.update({f"feature:{n}": v for n, v in part["features"].items()})
    target.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # an unwritable cache only costs the next read time
        write_atomic_with(
            target, lambda handle: np.savez(handle, meta=np.array(json.dumps(meta)), **arrays)
        )


def _load_cached(target: Path, log: Path, schema: str) -> dict[str, Any] | None:
    import json

    import numpy as np

    try:
        with np.load(target, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            info = log.stat()
            if (
                meta["schema"] != schema
                or meta["inode"] != info.st_ino
                or meta["device"] != info.st_dev
                or meta["offset"] > info.st_size
            ):
                return None
            part: dict[str, Any] = {name: data[name] for name in _ARRAYS}
            part["features"] = {n: data[f"feature:{n}"] for n in meta["features"]}
        if _repaired(log, meta["unreadable_at"]):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    part.update(
        versions=meta["versions"],
        endpoints=meta["endpoints"],
        origins=meta["origins"],
        vocab=meta["vocab"],
        unseen={k: Counter(v) for k, v in meta["unseen"].items()},
        refused_rows=meta["refused_rows"],
        unreadable=meta["unreadable"],
        unreadable_at=[tuple(item) for item in meta["unreadable_at"]],
        lost=[tuple(item) for item in meta["lost"]],
        offset=meta["offset"],
        ids=None,
    )
    return part


def _repaired(log: Path, unreadable_at: list[Any]) -> bool:
    """Whether a line the cache remembers as unreadable has since been blanked out in place (the
    repair `cpmai monitor` suggests: same size, same inode, so only this tells)."""
    if not unreadable_at:
        return False
    with log.open("rb") as handle:
        for _file, offset, _why in unreadable_at:
            handle.seek(int(offset))
            if not handle.readline().strip():
                return True
    return False


def _filter_part(part: dict[str, Any], since: Any, until: Any, np: Any) -> dict[str, Any]:
    if since is None and until is None:
        return part
    lost = [
        item
        for item in part["lost"]
        if (since is None or item[1] >= since) and (until is None or item[1] < until)
    ]
    keep = np.ones(len(part["time"]), dtype=bool)
    rows = np.ones(len(part["row_time"]), dtype=bool)
    if since is not None:
        keep &= part["time"] >= since
        rows &= part["row_time"] >= since
    if until is not None:
        keep &= part["time"] < until
        rows &= part["row_time"] < until
    if keep.all() and rows.all():
        return {**part, "lost": lost}
    out = dict(part, lost=lost)
    for name in ("time", "status", "latency", "rows", "weight", "version", "endpoint", "origin"):
        out[name] = part[name][keep]
    out["row_time"] = part["row_time"][rows]
    out["row_synthetic"] = part["row_synthetic"][rows]
    out["outputs"] = part["outputs"][rows]
    out["features"] = {n: v[rows] for n, v in part["features"].items()}
    return out


def _pieces(files: list[Path], starts: dict[str, int] | None = None) -> Any:
    for path in files:
        yield from _pieces_between(path, (starts or {}).get(str(path), 0), path.stat().st_size)


def _pieces_between(path: Path, start: int, stop: int) -> Any:
    """[start, stop) of a log file (both at line starts, or stop at its end) in pieces of about
    PIECE_BYTES, cut at line ends."""
    with path.open("rb") as handle:
        while start < stop:
            end = min(start + PIECE_BYTES, stop)
            if end < stop:
                handle.seek(end)
                handle.readline()  # finish the line the cut fell in
                end = min(handle.tell(), stop)
            yield _Piece(str(path), start, end)
            start = end


def _gaps(covered: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """The byte ranges of a log file that no (offset, length) in `covered` covers."""
    gaps = []
    position = 0
    for offset, length in sorted(covered):
        if offset > position:
            gaps.append((position, offset))
        position = max(position, offset + length)
    if position < size:
        gaps.append((position, size))
    return gaps


def _indexed(
    path: Path, focus: str | None, specs: list[FeatureSpec], output_kind: str
) -> tuple[list[dict[str, Any]], list[tuple[int, int]]]:
    """The parts the server's index (`cpmai.serving.logindex`) holds for a log file, and the
    JSON byte ranges they cover. A record that does not fit the reader's signature, or that
    names bytes the file does not have, is left out (its blocks are parsed from JSON)."""
    import glob

    import numpy as np

    size = path.stat().st_size
    parts: list[dict[str, Any]] = []
    covered: list[tuple[int, int]] = []
    seen: set[int] = set()
    for index_file in sorted(path.parent.glob(f"{glob.escape(path.name)}.*.idx")):
        for record in read_records(index_file):
            blocks = record["blocks"]
            if any(o + n > size or o in seen for o, n in blocks):
                continue
            part = _record_part(record, focus, specs, output_kind, np)
            if part is None:
                continue
            parts.append(part)
            covered += blocks
            seen.update(o for o, _ in blocks)
    return parts, covered


def _record_part(
    record: dict[str, Any], focus: str | None, specs: list[FeatureSpec], output_kind: str, np: Any
) -> dict[str, Any] | None:
    data, vocab_of = record["data"], record["vocab"]
    times = data["t"]
    count = len(times)
    status = data["status"].astype(np.int16)
    rows = data["rows"].astype(np.int64)
    rate = float(record.get("sample_rate") or 1.0)
    if not (len(status) == len(rows) == len(data["latency_ms"]) == len(data["endpoint"]) == count):
        return None
    if "origin" in data and len(data["origin"]) != count:
        return None
    part: dict[str, Any] = {
        "time": times,
        "status": status,
        "latency": data["latency_ms"],
        "rows": rows,
        "weight": np.where(status < 400, 1.0 / rate if rate > 0 else 1.0, 1.0),
        "version": np.zeros(count, dtype=np.int16),
        "versions": [str(record["version"])],
        "endpoint": data["endpoint"].astype(np.int16),
        "endpoints": list(vocab_of.get("endpoint", [])),
        "origin": data["origin"].astype(np.int32)
        if "origin" in data
        else np.full(count, -1, dtype=np.int32),
        "origins": [str(o) for o in vocab_of.get("origin", [])],
        "ids": None,
        "unseen": {},
        "refused_rows": 0,
        "unreadable": 0,
        "unreadable_at": [],
        "lost": [],
    }
    features: dict[str, Any] = {}
    vocab: dict[str, list[Any]] = {}
    if str(record["version"]) != focus:
        for spec in specs:
            if spec.kind == "numeric":
                features[spec.name] = np.zeros(0)
            elif spec.kept:
                features[spec.name], vocab[spec.name] = np.zeros(0, dtype=np.int32), []
        part.update(row_time=np.zeros(0), row_synthetic=np.zeros(0, dtype=bool), features=features)
        if output_kind == "numeric":
            part["outputs"] = np.zeros(0)
        else:
            part["outputs"], vocab["__output__"] = np.zeros(0, dtype=np.int32), []
        part["vocab"] = vocab
        return part
    if any(spec.kind == "text" and spec.keep for spec in specs):
        return None  # the index holds no text: the JSON reader keeps it
    served = np.where(status < 400, rows, 0)
    row_time = np.repeat(times, served)
    total = len(row_time)
    for spec in specs:
        if spec.kind == "text":
            continue
        values = data.get(f"feature:{spec.name}")
        wanted = "f" if spec.kind == "numeric" else "i"
        if values is None or values.dtype.kind != wanted or len(values) != total:
            return None  # written for another signature: the JSON reader decides
        features[spec.name] = values
        if spec.kind == "categorical":
            vocab[spec.name] = list(vocab_of.get(f"feature:{spec.name}", []))
    outputs = data.get("outputs")
    wanted = "f" if output_kind == "numeric" else "i"
    if outputs is None or outputs.dtype.kind != wanted or len(outputs) != total:
        return None
    if output_kind != "numeric":
        vocab["__output__"] = list(vocab_of.get("outputs", []))
    for refused in record.get("refused") or []:
        request = refused.get("request")
        if isinstance(request, int) and 0 <= request < count and part["origin"][request] >= 0:
            continue  # a load test's unseen values are not the data's (`set_apart`)
        part["refused_rows"] += _count_unseen(specs, refused.get("inputs"), part["unseen"])
    part.update(
        row_time=row_time,
        row_synthetic=np.repeat(part["origin"] >= 0, served),
        features=features,
        outputs=outputs,
        vocab=vocab,
    )
    return part


def _parse_piece(piece: _Piece, job: tuple[Any, ...]) -> dict[str, Any]:
    """Parse one piece of a log file into arrays (runs in a worker process for large logs)."""
    import gc

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
    enabled = gc.isenabled()
    gc.disable()  # a block is millions of short-lived objects: collections would only cost
    offset = piece.start
    try:
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
    finally:
        if enabled:
            gc.enable()
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
                self.refused_rows += _count_unseen(self.specs, refused["inputs"], self.unseen)
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
            if value is not None and hashable(value) not in spec.categories:
                into.setdefault(spec.name, Counter())[str(value)[:60]] += 1
    return rows


def _join_parts(
    parts: list[dict[str, Any]], specs: list[FeatureSpec], output_kind: str, with_ids: bool
) -> dict[str, Any]:
    """Parts parsed or cached separately, as one part (codes mapped onto one vocabulary)."""
    import numpy as np

    if len(parts) == 1 and (parts[0]["ids"] is not None or not with_ids):
        return parts[0]  # nothing to map: no copy of a million rows

    def cat(key: str, dtype: Any) -> Any:
        arrays = [p[key] for p in parts]
        return np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype)

    version_codes, versions = _recode(parts, "version", "versions", np)
    endpoint_codes, endpoints = _recode(parts, "endpoint", "endpoints", np)
    origin_codes, origins = _recode(parts, "origin", "origins", np)
    features: dict[str, Any] = {}
    vocab: dict[str, list[Any]] = {}
    for spec in specs:
        if spec.kind == "numeric":
            features[spec.name] = np.concatenate(
                [p["features"][spec.name] for p in parts] or [np.zeros(0)]
            )
        elif spec.kept:
            features[spec.name], vocab[spec.name] = _merge_codes(parts, spec.name, np)
    if output_kind == "numeric":
        outputs = np.concatenate([p["outputs"] for p in parts] or [np.zeros(0)])
    else:
        outputs, vocab["__output__"] = _merge_codes(parts, "__output__", np, key="outputs")
    unseen: dict[str, Counter[str]] = {}
    for part in parts:
        for name, counts in part["unseen"].items():
            unseen.setdefault(name, Counter()).update(counts)
    return {
        "time": cat("time", np.float64),
        "status": cat("status", np.int16),
        "latency": cat("latency", np.float64),
        "rows": cat("rows", np.int64),
        "weight": cat("weight", np.float64),
        "version": version_codes,
        "versions": versions,
        "endpoint": endpoint_codes,
        "endpoints": endpoints,
        "origin": origin_codes,
        "origins": origins,
        "row_time": cat("row_time", np.float64),
        "row_synthetic": cat("row_synthetic", bool),
        "features": features,
        "vocab": vocab,
        "outputs": outputs,
        "ids": [item for p in parts for item in (p["ids"] or [])] if with_ids else None,
        "unseen": unseen,
        "refused_rows": sum(p["refused_rows"] for p in parts),
        "unreadable": sum(p["unreadable"] for p in parts),
        "unreadable_at": sorted(item for p in parts for item in p["unreadable_at"])[
            :UNREADABLE_NAMED
        ],
        "lost": sorted(item for p in parts for item in p["lost"]),
    }


def _traffic(part: dict[str, Any], files: int, total: int) -> Traffic:
    return Traffic(
        time=part["time"],
        status=part["status"],
        latency_ms=part["latency"],
        rows=part["rows"],
        weight=part["weight"],
        version=part["version"],
        versions=part["versions"],
        endpoint=part["endpoint"],
        endpoints=part["endpoints"],
        origin=part["origin"],
        origins=part["origins"],
        row_time=part["row_time"],
        row_synthetic=part["row_synthetic"],
        features=part["features"],
        vocab=part["vocab"],
        outputs=part["outputs"],
        ids=part["ids"],
        unseen=part["unseen"],
        refused_rows=part["refused_rows"],
        unreadable=part["unreadable"],
        unreadable_at=list(part["unreadable_at"]),
        lost=list(part["lost"]),
        files=files,
        bytes=total,
    )


def _recode(
    parts: list[dict[str, Any]], key: str, names_key: str, np: Any
) -> tuple[Any, list[str]]:
    """Each piece numbered its names in its own order: map them onto one list (-1, no name,
    stays -1). Origins (sources clients name: unbounded) are int32, the rest int16."""
    dtype = np.int32 if key == "origin" else np.int16
    merged: dict[str, int] = {}
    out = []
    for part in parts:
        mapping = np.array([merged.setdefault(n, len(merged)) for n in part[names_key]] + [-1])
        out.append(mapping[part[key]].astype(dtype) if len(part[key]) else part[key])
    return (np.concatenate(out) if out else np.zeros(0, dtype=dtype)), list(merged)


def _merge_codes(
    parts: list[dict[str, Any]], name: str, np: Any, key: str = "features"
) -> tuple[Any, list[Any]]:
    """Each piece coded its values in its own order: map them onto one vocabulary."""
    return merge_coded(
        [(part[key] if key == "outputs" else part["features"][name], part["vocab"][name])
         for part in parts]
    )  # fmt: skip


def read_resources(folder: Path, since: float | None, until: float | None) -> list[dict[str, Any]]:
    """The resource samples (`cpmai.serving.resources`) in [since, until), oldest first."""
    import orjson

    samples = []
    for path in log_files(folder, "resources", since, until):
        for line in path.read_bytes().splitlines():
            try:
                doc = orjson.loads(line)
                moment = epoch(doc["time"])
                float(doc["cpu_percent"]), float(doc["rss_bytes"])
            except (ValueError, KeyError, TypeError):
                continue
            if (since is None or moment >= since) and (until is None or moment < until):
                doc["t"] = moment
                samples.append(doc)
    samples.sort(key=lambda d: d["t"])
    return samples
