"""The reader's cache: what was parsed of each log file, kept as numpy arrays with the byte
offset it reaches, so the next read parses only what was appended since (log files only grow).
Under `Home.env(name, env).log_cache`; safe to delete (rebuilt when needed)."""

from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpmai.predlog.format import CACHE_FORMAT

if TYPE_CHECKING:
    from cpmai.predlog.reader import FeatureSpec


def schema_key(
    focus: str | None, specs: list[FeatureSpec], output_kind: str, outputs: list[Any] | None
) -> str:
    import hashlib
    import json

    described: list[Any] = [CACHE_FORMAT, focus, output_kind, [str(v) for v in outputs or []]]
    described += [[s.name, s.kind, sorted(map(str, s.categories)), s.kept] for s in specs]
    return hashlib.sha256(json.dumps(described).encode()).hexdigest()


def cache_file(cache: Path, log: Path, schema: str) -> Path:
    """One per log file and signature (monitoring two versions does not overwrite each other)."""
    return cache / f"{log.name}.{schema[:16]}.npz"


def drop_stale(cache: Path, folder: Path) -> None:
    """Cached parses of log files that are gone (deleted, rotated away)."""
    if not cache.is_dir():
        return
    for item in cache.glob("*.npz"):
        log = item.name.rsplit(".", 2)[0]
        if not (folder / log).exists():
            item.unlink(missing_ok=True)


_ARRAYS = ("time", "status", "latency", "rows", "weight", "version", "endpoint", "origin",
           "row_time", "row_synthetic", "outputs")  # fmt: skip


def save_cached(target: Path, log: Path, schema: str, part: dict[str, Any], np: Any) -> None:
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


def load_cached(target: Path, log: Path, schema: str) -> dict[str, Any] | None:
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
