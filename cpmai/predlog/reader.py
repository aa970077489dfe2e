"""Reading an environment's prediction log and resource samples into numpy columns.

The prediction log (`cpmai.predlog.format`) is one file per server process and day, one JSON
line per block of requests (a second's worth), in columns: numpy takes each column in one call.
What the server's index (`cpmai.predlog.index`) covers is read from it; parsing JSON is still
what costs (docs/performance.md, "What the log costs"), so large logs are cut at line
boundaries into pieces of `PIECE_BYTES` that worker processes parse in parallel; each piece
comes back as numpy arrays, never as millions of Python objects. Inputs are kept only for the
version under study (`focus`): drift and data quality compare that version's traffic with its
own reference data. A line that cannot be read (damaged, or not a block) is
counted, with where it is and why (`Traffic.unreadable_at`): the reader goes on, and the caller
decides (`cpmai monitor` refuses to call such a period within bounds). A blank line is not a
block and is skipped; a line still being written is left for the next read.

Free text is kept only when asked (`FeatureSpec.keep`), coded like a category (each distinct text
once in the vocabulary): the server's index holds no text, so the focus version's blocks are then
parsed from JSON.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpmai.clock import epoch
from cpmai.predlog.accumulate import Piece, parse_piece
from cpmai.predlog.cache import cache_file, drop_stale, load_cached, save_cached, schema_key
from cpmai.predlog.format import PREDICTIONS, RESOURCES, index_files, log_files
from cpmai.predlog.parts import IndexMemo, filter_part, gaps, index_parts, join_parts

if TYPE_CHECKING:
    import numpy as np

PIECE_BYTES = 16 << 20
PARALLEL_BYTES = 48 << 20
"""Below this much log, one process parses it all (starting workers would cost more)."""


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
    requests, reason) as the server recorded them (`cpmai.predlog.format.LOST`)."""
    synthetic_spans: list[tuple[float, float]] = field(default_factory=list)
    """When synthetic requests were being answered: (first, last) of each run of them with no
    gap over `SPAN_GAP_S` (resource samples then measure the load test, not customers)."""

    @property
    def requests(self) -> int:
        return int(self.time.shape[0])


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
    memo: IndexMemo | None = None,
) -> Traffic:
    """Every logged request in [since, until); the focus version's rows as columns. Synthetic
    requests (`cpmai.serving.origin`) are counted apart and left out unless `include_synthetic`.

    With `cache` (a folder), what was parsed of each log file is kept there as numpy arrays
    with the byte offset it reaches: the next read parses only what was appended since (log
    files only grow). A cache that does not match the file (replaced, shrunk) or the signature
    is ignored and rewritten. Reads that need request ids (label joins) bypass it.

    With `memo` (a long-running reader's: the watcher's), the server's index is read from where
    the last read stopped; `since` must then never move back."""
    import numpy as np

    files = log_files(folder, PREDICTIONS, since, until)
    schema = schema_key(focus, specs, output_kind, output_categories)
    if memo is not None and memo.key != schema:  # another version or signature: start again
        memo.files.clear()
        memo.key = schema
    if memo is not None:  # files of days that left the window: let go of what was kept
        current = {str(index) for path in files for index in index_files(path)}
        for gone in set(memo.files) - current:
            del memo.files[gone]
    indexed: dict[str, tuple[list[dict[str, Any]], list[tuple[int, int]]]] = {}
    if not with_ids:  # the index holds no request ids
        for path in files:
            found, covered = index_parts(path, focus, specs, output_kind, since=since, memo=memo)
            if found or covered:  # covered and all before `since`: nothing to parse there
                indexed[str(path)] = (found, gaps(covered, path.stat().st_size))
    use_cache = cache is not None and not with_ids
    starts: dict[str, int] = {}
    cached: dict[str, dict[str, Any]] = {}
    if use_cache:
        assert cache is not None
        drop_stale(cache, folder)
        for path in files:
            if str(path) in indexed:
                continue
            part = load_cached(cache_file(cache, path, schema), path, schema)
            if part is not None:
                cached[str(path)] = part
                starts[str(path)] = int(part["offset"])
    pieces: list[Piece] = []
    for path in files:
        if str(path) in indexed:
            for low, high in indexed[str(path)][1]:
                pieces += _pieces_between(path, low, high)
        else:
            pieces += pieces_of([path], starts)
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
            parsed = list(pool.map(parse_piece, pieces, [job] * len(pieces)))
    else:
        parsed = [parse_piece(piece, job) for piece in pieces]
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
        whole = join_parts(old + new, specs, output_kind, False)
        whole["offset"] = max([int(p["consumed"]) for p in new] + [starts.get(key, 0)])
        save_cached(cache_file(cache, path, schema), path, schema, whole, np)
        parts.append(whole)
    filtered = [filter_part(part, since, until, np) for part in parts]
    joined = as_traffic(join_parts(filtered, specs, output_kind, with_ids), len(files), total)
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


def as_traffic(part: dict[str, Any], files: int, total: int) -> Traffic:
    """A part (`cpmai.predlog.parts`) as `Traffic` (`files` read, `total` bytes parsed)."""
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


def pieces_of(files: list[Path], starts: dict[str, int] | None = None) -> Any:
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
            yield Piece(str(path), start, end)
            start = end


def read_resources(folder: Path, since: float | None, until: float | None) -> list[dict[str, Any]]:
    """The resource samples (`cpmai.serving.resources`) in [since, until), oldest first."""
    import orjson

    samples = []
    for path in log_files(folder, RESOURCES, since, until):
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
