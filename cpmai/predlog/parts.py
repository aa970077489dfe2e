"""Parts of an environment's log as the reader gathers them (dicts of numpy columns, one per
piece parsed, cached file or index record): taken from the server's index, filtered by time,
and joined into one (codes mapped onto one vocabulary)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpmai.predlog.accumulate import UNREADABLE_NAMED, count_unseen
from cpmai.predlog.format import index_files
from cpmai.predlog.index import merge_coded, read_records_from

if TYPE_CHECKING:
    from cpmai.predlog.reader import FeatureSpec


def filter_part(part: dict[str, Any], since: Any, until: Any, np: Any) -> dict[str, Any]:
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


def gaps(covered: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
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


@dataclass
class _Indexed:
    """What was read of one index file: where reading stopped, the parts still wanted (with
    their newest time) and the log's byte ranges every record read so far covers."""

    inode: tuple[int, int]
    position: int = 0
    parts: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    covered: list[tuple[int, int]] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)


@dataclass
class IndexMemo:
    """What a long-running reader (the watcher) has read of the server's index, so each read
    parses only the records appended since the last: kept in memory, for one signature and
    focus (`key`); parts older than the earliest time still asked for are let go."""

    key: str = ""
    files: dict[str, _Indexed] = field(default_factory=dict)


def index_parts(
    path: Path,
    focus: str | None,
    specs: list[FeatureSpec],
    output_kind: str,
    *,
    since: float | None = None,
    memo: IndexMemo | None = None,
) -> tuple[list[dict[str, Any]], list[tuple[int, int]]]:
    """The parts the server's index (`cpmai.predlog.index`) holds for a log file, and the
    JSON byte ranges they cover. A record that does not fit the reader's signature, or that
    names bytes the file does not have, is left out (its blocks are parsed from JSON).

    Records wholly before `since` are not turned into parts. With `memo`, an index file is read
    from where the last call stopped (from the start when it was replaced)."""
    import numpy as np

    size = path.stat().st_size
    parts: list[dict[str, Any]] = []
    covered: list[tuple[int, int]] = []
    earlier: list[set[int]] = []  # blocks two index files both claim are read once
    for index in index_files(path):
        try:
            info = index.stat()
        except OSError:
            continue
        inode = (info.st_dev, info.st_ino)
        known = memo.files.get(str(index)) if memo is not None else None
        if known is None or known.inode != inode or known.position > info.st_size:
            known = _Indexed(inode)
            if memo is not None:
                memo.files[str(index)] = known
        records, known.position = read_records_from(index, known.position)
        for record in records:
            blocks = record["blocks"]
            if any(
                o + n > size or o in known.seen or any(o in e for e in earlier) for o, n in blocks
            ):
                continue
            times = record["data"].get("t")
            newest = float(times.max()) if times is not None and len(times) else float("inf")
            if since is None or newest >= since:
                part = _record_part(record, focus, specs, output_kind, np)
                if part is None:
                    continue  # not covered: its blocks are parsed from JSON
                known.parts.append((newest, part))
            known.covered += [(int(o), int(n)) for o, n in blocks]
            known.seen.update(o for o, _ in blocks)
        earlier.append(known.seen)
        if since is not None:
            known.parts = [(t, p) for t, p in known.parts if t >= since]
        known.covered = _merged(known.covered)
        parts += [p for _, p in known.parts]
        covered += known.covered
    return parts, covered


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(offset, length) ranges, touching ones joined: a day of one-second blocks is one range."""
    out: list[tuple[int, int]] = []
    for offset, length in sorted(ranges):
        if out and offset <= out[-1][0] + out[-1][1]:
            last = out[-1]
            out[-1] = (last[0], max(last[0] + last[1], offset + length) - last[0])
        else:
            out.append((offset, length))
    return out


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
        part["refused_rows"] += count_unseen(specs, refused.get("inputs"), part["unseen"])
    part.update(
        row_time=row_time,
        row_synthetic=np.repeat(part["origin"] >= 0, served),
        features=features,
        outputs=outputs,
        vocab=vocab,
    )
    return part


def join_parts(
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
