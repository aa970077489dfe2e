"""The prediction log's columnar index: the same blocks as numpy arrays, written by the server.

Reading JSON is what costs (docs/performance.md, "What the log costs"), so a day of traffic
takes seconds to parse. The server already holds each block's values in lists when it writes
the JSON line, so it also turns them into numpy arrays there (on the server's event loop) and,
every `INDEX_SECONDS` or `INDEX_MAX_REQUESTS`, appends one *record* of the blocks gathered
(10,000 requests at most, so that writing one never holds the interpreter long) to
`predictions-DAY-PID.jsonl.VERSION.idx` (`cpmai.predlog.format.index_file`). The JSON log stays
the record of truth: each index record names the byte ranges of the JSON lines it covers, and a
reader parses from JSON whatever no intact record covers (blocks not indexed yet, a record torn
by a crash, blocks whose values could not be put in arrays).

A record: b"CPMI", the header's length (4 bytes, little endian), the header (JSON), then the
arrays, each padded to 8 bytes. The header holds the version, the sample rate, the covered
`blocks` ([offset, length] in the JSON file), each array's name, dtype, count and position,
the vocabularies of coded columns, and the refused requests' inputs. An `origin` array (codes of
the synthetic-traffic source, -1 for real requests) only in records that hold synthetic traffic.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from cpmai.predlog.format import INDEX_FORMAT, INDEX_MAGIC

INDEX_SECONDS = 60.0
INDEX_MAX_REQUESTS = 10_000
MAX_VOCABULARY = 10_000
"""Values a writer's vocabulary holds (kept from block to block) before it starts over."""


class Unindexable(Exception):
    """A block whose values do not fit the signature's columns (left to the JSON reader)."""


def block_arrays(
    block: Any,
    kinds: dict[str, str],
    output_kind: str,
    vocab: dict[str, dict[Any, int]] | None = None,
) -> dict[str, Any]:
    """One block's columns as arrays (codes + vocabulary for categories). `vocab` (value → code
    for each input, "__output__" and "__endpoint__"; the writer's, grown here with values not
    seen before) keeps codes the same from block to block, so records share vocabularies and
    readers need not map codes."""
    vocab = vocab if vocab is not None else {}
    served = len(block.outputs)
    out: dict[str, Any] = {
        "t": _per_request(block.times, "d"),
        "status": _per_request(block.status, "h"),
        "latency_ms": _per_request(block.latency, "d"),
        "rows": _per_request(block.rows, "i"),
        "endpoint": _coded(block.endpoint, vocab.setdefault("__endpoint__", {}), constant=True),
        "refused": block.refused,
        "features": {},
    }
    origins = getattr(block, "origin", None)
    if origins is not None:  # only blocks that hold synthetic traffic (codes; -1: real)
        out["origin"] = _coded(origins, vocab.setdefault("__origin__", {}))
    if int(out["rows"][out["status"] < 400].sum()) != served:
        raise Unindexable("rows do not add up")
    for name, kind in kinds.items():
        if kind == "text":
            continue
        values = block.inputs.get(name, [] if not served else None)
        if values is None or len(values) != served:
            raise Unindexable(f"input {name} does not match the rows served")
        out["features"][name] = (
            _numbers(values) if kind == "numeric" else _coded(values, vocab.setdefault(name, {}))
        )
    labels = getattr(block, "output_array", None)
    if output_kind == "numeric":
        out["outputs"] = _numbers(block.outputs if labels is None else labels)
    else:
        numbers = labels if labels is not None and labels.dtype.kind in "biuf" else None
        out["outputs"] = _coded(block.outputs, vocab.setdefault("__output__", {}), array=numbers)
    return out


def _per_request(values: Any, code: str) -> Any:
    """A block's numbers, one per request: the writer's arrays as they are; a column of one
    value throughout (statuses, rows) without packing each (a C-level count)."""
    if isinstance(values, np.ndarray):
        return values.astype(code, copy=False)
    if values and type(values[0]) is int and values.count(values[0]) == len(values):
        return np.full(len(values), values[0], dtype=code)
    return packed(values, code)


def packed(values: Any, code: str) -> Any:
    """Numbers to an array through `struct` (a third of numpy's cost from a list of Python
    numbers); None, text and the like raise `struct.error`."""
    return np.frombuffer(struct.pack(f"{len(values)}{code}", *values), dtype=np.dtype(code))


def _numbers(values: Any) -> Any:
    if isinstance(values, np.ndarray):
        try:
            return values.astype(np.float64)
        except (TypeError, ValueError):
            raise Unindexable("a value that is not a number") from None
    try:
        return packed(values, "d")
    except (struct.error, TypeError, OverflowError):
        pass
    try:
        return np.array(values, dtype=np.float64)  # None becomes NaN
    except (TypeError, ValueError):
        raise Unindexable("a value that is not a number") from None


def _coded(
    values: Any, index: dict[Any, int], *, constant: bool = False, array: Any = None
) -> tuple[Any, list[Any]]:
    """`constant`: the column is likely one value throughout (the endpoint): then one lookup,
    not one a value. `array`: the same values as an array of numbers (a classifier's labels),
    coded in numpy, each distinct value looked up once."""
    if len(index) > MAX_VOCABULARY:  # a column of ever new values: start over (readers map codes)
        index.clear()
    if array is not None:
        distinct, inverse = np.unique(array, return_inverse=True)
        codes = [index.setdefault(value, len(index)) for value in distinct.tolist()]
        return np.array(codes, dtype=np.int32)[inverse.reshape(-1)], list(index)
    first = values[0] if constant and len(values) else None
    if type(first) is str and values.count(first) == len(values):
        code = index.setdefault(first, len(index))
        return np.full(len(values), code, dtype=np.int32), list(index)
    return encode(values, index), list(index)


def encode(values: Any, index: dict[Any, int]) -> Any:
    """Integer codes into `index` (grown with values not seen before, in the order they first
    appear); -1 for None. A value that cannot be a dictionary key (a list) is coded by its
    repr."""
    try:  # itemgetter looks every value up in C (a third less than map(index.__getitem__));
        # in `index` itself while it holds only strings: a dict of str keys compares in C too
        codes = itemgetter(*values)(index) if len(values) > 1 else [index[v] for v in values]
        return packed(codes, "i").copy()
    except (KeyError, TypeError):  # a value not coded yet, None, or an unhashable one
        pass
    table = {**index, None: -1}
    codes = []
    for value in values:
        key = None if value is None else hashable(value)
        code = table.get(key)
        if code is None:
            code = table[key] = index.setdefault(key, len(index))
        codes.append(code)
    return np.array(codes, dtype=np.int32)


def hashable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) else repr(value)


def merge_coded(parts: list[tuple[Any, list[Any]]]) -> tuple[Any, list[Any]]:
    """Columns coded separately, each (codes, its vocabulary): mapped onto one vocabulary."""
    if not parts:
        return np.zeros(0, dtype=np.int32), []
    first = parts[0][1]
    if all(values == first for _, values in parts):  # the usual case: nothing to map
        return np.concatenate([codes for codes, _ in parts]), list(first)
    merged: dict[Any, int] = {}
    coded = []
    for codes, values in parts:
        mapping = np.array([merged.setdefault(v, len(merged)) for v in values] + [-1], np.int32)
        coded.append(mapping[codes])  # -1 (None) indexes the trailing -1
    return np.concatenate(coded), list(merged)


def write_record(
    path: Path,
    blocks: list[tuple[int, int, dict[str, Any]]],
    *,
    version: str,
    sample_rate: float,
    kinds: dict[str, str],
    pause: Callable[[], object] = lambda: None,
) -> None:
    """Append one record covering `blocks` ((offset, length, arrays) each) to `path`."""
    arrays: dict[str, Any] = {}
    vocab: dict[str, list[Any]] = {}
    for name in ("t", "status", "latency_ms", "rows"):
        arrays[name] = np.concatenate([b[2][name] for b in blocks])
    for name in ("endpoint", "outputs"):
        _join_column(name, [b[2][name] for b in blocks], arrays, vocab)
    if any("origin" in b[2] for b in blocks):
        real = np.int32(-1)
        _join_column(
            "origin",
            [b[2].get("origin") or (np.full(len(b[2]["t"]), real), []) for b in blocks],
            arrays,
            vocab,
        )
    for name, kind in kinds.items():
        if kind != "text":
            _join_column(f"feature:{name}", [b[2]["features"][name] for b in blocks], arrays, vocab)
            pause()
    refused: list[dict[str, Any]] = []
    first = 0
    for _, _, parts in blocks:
        refused += [{**r, "request": r["request"] + first} for r in parts["refused"]]
        first += len(parts["t"])
    buffers: list[Any] = []
    layout = []
    size = 0
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        layout.append([name, array.dtype.str, int(array.size), size])
        buffers.append(array.data.cast("B"))  # written as is: no copy
        size += array.nbytes
        if size % 8:
            buffers.append(b"\0" * (-size % 8))
            size += -size % 8
    header = json.dumps(
        {
            "format": INDEX_FORMAT,
            "version": version,
            "sample_rate": sample_rate,
            "blocks": [[offset, length] for offset, length, _ in blocks],
            "arrays": layout,
            "body": size,
            "vocab": vocab,
            "refused": refused,
        },
        default=repr,
    ).encode()
    header += b" " * (-(len(header) + 8) % 8)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        # one writev: the server's event loop waits for no copy of the arrays
        os.writev(fd, [INDEX_MAGIC + struct.pack("<I", len(header)) + header, *buffers])
    finally:
        os.close(fd)


def _join_column(
    name: str, parts: list[Any], arrays: dict[str, Any], vocab: dict[str, list[Any]]
) -> None:
    if parts and isinstance(parts[0], tuple):
        arrays[name], vocab[name] = merge_coded(parts)
    else:
        arrays[name] = np.concatenate(parts) if parts else np.zeros(0)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The intact records of an index file, in order; reading stops at the first damaged one
    (what follows is left to the JSON reader)."""
    return read_records_from(path, 0)[0]


def read_records_from(path: Path, begin: int) -> tuple[list[dict[str, Any]], int]:
    """The intact records of an index file from byte `begin` on, and the byte offset reached
    (where the next read starts: a record still being written is read next time)."""
    try:
        with path.open("rb") as handle:
            handle.seek(begin)
            data = handle.read()
    except OSError:
        return [], begin
    records = []
    position = 0
    while position + 8 <= len(data):
        if data[position : position + 4] != INDEX_MAGIC:
            break
        (size,) = struct.unpack_from("<I", data, position + 4)
        start = position + 8 + size
        try:
            header = orjson.loads(data[position + 8 : start])
            end = start + int(header["body"])
            if header.get("format") != INDEX_FORMAT or end > len(data):
                break  # another format, or a record still being written (or torn)
            arrays: dict[str, Any] = {}
            for name, dtype, count, where in header["arrays"]:
                kind = np.dtype(dtype)
                if where + kind.itemsize * count > end - start:
                    raise ValueError("an array beyond its record")
                arrays[name] = np.frombuffer(data, dtype=kind, count=count, offset=start + where)
        except (ValueError, KeyError, TypeError, struct.error):
            break
        header["data"] = arrays
        records.append(header)
        position = end
    return records, begin + position
