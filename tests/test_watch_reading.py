"""The watcher's incremental read: what it remembers of the server's index (`IndexMemo`) gives
the same traffic as a fresh read, check after check, as the log grows and the window moves."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from test_predlog import SIGNATURE  # x: number, c: a or b; label 0 or 1

from cpmai.predlog import reader as logs
from cpmai.predlog.parts import IndexMemo
from cpmai.predlog.writer import PredictionLog

SPECS = [logs.FeatureSpec("x", "numeric"), logs.FeatureSpec("c", "categorical", frozenset("ab"))]


def _log(folder: Path, start: float, seconds: int, per_second: int) -> None:
    """`seconds` of one-row requests through the server's writer, a block a second (indexed)."""
    log = PredictionLog(folder, model="m", version="1", signature=SIGNATURE)
    moment = [start]
    log._clock = lambda: moment[0]  # type: ignore[method-assign]
    for second in range(seconds):
        for i in range(per_second):
            moment[0] = start + second + i / per_second
            log.record("infer", 200, 0.001, 1, {"x": [float(i)], "c": ["ab"[i % 2]]}, [i % 2])
        log.flush()
    log.close()


def _read(folder: Path, since: float, memo: IndexMemo | None = None) -> logs.Traffic:
    return logs.read_traffic(
        folder, focus="1", specs=SPECS, output_kind="categorical", since=since, memo=memo
    )


def _same(a: logs.Traffic, b: logs.Traffic) -> None:
    assert a.requests == b.requests
    for name in ("time", "latency_ms", "row_time", "outputs"):
        assert np.array_equal(np.sort(getattr(a, name)), np.sort(getattr(b, name))), name
    assert np.array_equal(np.sort(a.features["x"]), np.sort(b.features["x"]))


def test_a_remembered_index_reads_what_a_fresh_read_does(tmp_path: Path) -> None:
    start = time.time() - 3600
    _log(tmp_path, start, 120, 20)
    assert list(tmp_path.glob("*.idx")), "the writer indexes what it logs"
    memo = IndexMemo()
    since = start + 60
    first = _read(tmp_path, since, memo)
    _same(first, _read(tmp_path, since))
    assert first.requests == 60 * 20
    position = {k: v.position for k, v in memo.files.items()}

    _log(tmp_path, start + 120, 30, 20)  # the log grows: only the new records are read
    grown = _read(tmp_path, since, memo)
    _same(grown, _read(tmp_path, since))
    assert grown.requests == 90 * 20
    assert all(memo.files[k].position > p for k, p in position.items())

    later = start + 100  # the window moves on: what fell out of it is let go
    moved = _read(tmp_path, later, memo)
    _same(moved, _read(tmp_path, later))
    assert all(t >= later - 1 for f in memo.files.values() for t, _ in f.parts)

    index = sorted(tmp_path.glob("*.idx"))[0]
    with index.open("ab") as handle:  # a torn record at the end: read next time, never trusted
        handle.write(b"CPMI\x10\x00")
    _same(_read(tmp_path, later, memo), _read(tmp_path, later))


def test_a_replaced_index_is_read_again_from_its_start(tmp_path: Path) -> None:
    start = time.time() - 600
    _log(tmp_path, start, 30, 10)
    memo = IndexMemo()
    _read(tmp_path, start, memo)
    for path in tmp_path.iterdir():  # rotated away and written anew (another inode)
        path.rename(path.with_name(path.name + ".old"))
    for path in tmp_path.glob("*.old"):
        path.with_name(path.name[: -len(".old")]).write_bytes(path.read_bytes())
        path.unlink()
    _same(_read(tmp_path, start, memo), _read(tmp_path, start))


def test_an_indexed_file_wholly_before_since_is_not_parsed_again(tmp_path: Path) -> None:
    start = time.time() - 3600
    _log(tmp_path, start, 120, 20)
    after = _read(tmp_path, start + 500)  # every record is older than `since`
    assert after.requests == 0 and after.bytes == 0  # nothing parsed from JSON either
    memo = IndexMemo()
    assert _read(tmp_path, start + 500, memo).bytes == 0


def test_files_of_days_that_left_the_window_are_let_go(tmp_path: Path) -> None:
    old = time.time() - 3 * 86400
    _log(tmp_path, old, 10, 10)
    memo = IndexMemo()
    assert _read(tmp_path, old, memo).requests == 100
    assert memo.files
    now = time.time()
    _log(tmp_path, now - 30, 10, 10)
    assert _read(tmp_path, now - 60, memo).requests == 100
    kept = list(memo.files)
    assert kept and all(str(time.strftime("%Y-%m-%d", time.gmtime(old))) not in k for k in kept)
