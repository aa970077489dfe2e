"""The prediction log's writer: what the server hands it by reference comes out row for row."""

from __future__ import annotations

import asyncio
import random
import time
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from cpmai.predlog import entry as log_entry
from cpmai.predlog import writer
from cpmai.predlog.entry import ID, ROW_START, ROWS
from cpmai.predlog.index import read_records
from cpmai.predlog.writer import PredictionLog
from cpmai.runtime.signature import Signature
from cpmai.serving.batching import Batcher

SIGNATURE = Signature.model_validate({
    "inputs": [
        {"name": "x", "type": "number"},
        {"name": "c", "type": "category", "categories": ["a", "b"]},
    ],
    "outputs": [{"name": "label", "type": "integer", "categories": [0, 1]}],
})  # fmt: skip


def entry(
    request_id: str,
    rows: int,
    row_start: int,
    *,
    want: bool = False,
    start: float | None = None,
    origin: str | None = None,
) -> log_entry.Entry:
    """A served request's log entry as the server makes it (`cpmai.serving.app`)."""
    start = time.perf_counter() if start is None else start
    elapsed = time.perf_counter() - start
    return (None, start, elapsed, "invocations", 200, rows, request_id, None, None, want,
            row_start, origin)  # fmt: skip


def _lines(folder: Path) -> list[dict[str, Any]]:
    return [
        orjson.loads(line)
        for path in sorted(folder.glob("predictions-*.jsonl"))
        for line in path.read_bytes().splitlines()
    ]


def _feed(log: PredictionLog, chance: random.Random, expected: list[Any]) -> Iterator[None]:
    """Random batches as the server's batcher makes them, handed to `log`; yields after each.
    `expected` gets (id, rows as (x, c, label, probabilities or None)) for each request, in the
    order the log must write them (None for a refused one)."""
    number = 0
    for _ in range(300):
        sizes = [chance.randint(1, 3) for _ in range(chance.randint(1, 6))]
        total = sum(sizes)
        columns = {
            "x": [chance.random() for _ in range(total)],
            "c": [chance.choice("ab") for _ in range(total)],
        }
        labels = np.array([chance.randint(0, 1) for _ in range(total)])
        probabilities = np.array([[0.25, 0.75]] * total) if chance.random() < 0.3 else None
        batch = (columns, labels, probabilities)
        entries = []
        answered = []  # this batch's served requests: logged after its refusals
        start = 0
        for rows in sizes:
            number += 1
            want = probabilities is not None and chance.random() < 0.5
            arrived = time.perf_counter()
            if chance.random() < 0.1:
                log.record("invocations", 422, 0.001, 0, {"x": ["junk"]}, None, error="bad")
                expected.append((None, []))
            if chance.random() < 0.1:  # refused after scoring: its rows are not logged
                start += rows
                continue
            entries.append(entry(f"r{number}", rows, start, want=want, start=arrived))
            answered.append(
                (
                    f"r{number}",
                    [
                        (
                            columns["x"][k],
                            columns["c"][k],
                            int(labels[k]),
                            probabilities[k].tolist()
                            if want and probabilities is not None
                            else None,
                        )
                        for k in range(start, start + rows)
                    ],
                )
            )
            start += rows
        log.served(batch, entries)
        expected += answered
        yield


@pytest.mark.parametrize("on_loop", [False, True], ids=["thread", "loop"])
def test_batches_taken_by_reference_come_out_row_for_row(
    tmp_path: Path, monkeypatch: Any, on_loop: bool
) -> None:
    """Random batches as the server's batcher makes them: requests of several rows, some that
    never reach the log (a request refused after the model call), some asking for
    probabilities, refusals in between (logged when refused, so before the batch, which is
    logged once all its requests were answered). Without a loop (`cpmai predict`), blocks are
    cut at random between any two events. On a running loop (the server), the log prepares
    blocks in steps between the loop's other callbacks, every `BLOCK_ROWS` rows and every
    `flush_seconds`, and closing while blocks are on their way still writes them in order."""
    chance = random.Random(7)
    expected: list[Any] = []
    before = time.time()
    if on_loop:
        monkeypatch.setattr(writer, "BLOCK_ROWS", 40)

        async def serve() -> PredictionLog:
            log = PredictionLog(
                tmp_path, model="m", version="1", mode="loop", signature=SIGNATURE,
                flush_seconds=0.003,
            )  # fmt: skip
            log.start()
            for _ in _feed(log, chance, expected):
                if chance.random() < 0.5:
                    await asyncio.sleep(0 if chance.random() < 0.9 else 0.002)
            last = {"x": [float(i) for i in range(40)], "c": ["a"] * 40}
            log.served((last, np.zeros(40, dtype=int), None), [entry("last", 40, 0)])
            expected.append(("last", [(x, "a", 0, None) for x in last["x"]]))
            assert log._scheduled
            await asyncio.sleep(0)  # the block's first step, the others still to come
            assert log._steps
            log.close()  # closing with a block on its way: all of it is on disk when it returns
            late = {"x": [0.5], "c": ["b"]}  # and what comes after, at once
            log.served((late, np.ones(1, dtype=int), None), [entry("late", 1, 0)])
            expected.append(("late", [(0.5, "b", 1, None)]))
            return _lines(tmp_path)

        written = asyncio.run(serve())
        assert _lines(tmp_path) == written
    else:
        log = PredictionLog(tmp_path, model="m", version="1", signature=SIGNATURE)
        log.folder.mkdir(parents=True, exist_ok=True)
        for _ in _feed(log, chance, expected):
            if chance.random() < 0.2:
                log.flush()
        log.close()
    after = time.time()

    lines = _lines(tmp_path)
    assert len(lines) > 10
    assert any(line["probabilities"] is None for line in lines)  # the whole-batch way, too
    got: list[tuple[Any, ...]] = []
    for line in lines:
        requests = line["requests"]
        probabilities = line["probabilities"] or [None] * len(line["outputs"])
        served = zip(
            line["inputs"]["x"], line["inputs"]["c"], line["outputs"], probabilities, strict=True
        )
        for request_id, status, rows in zip(
            requests["id"], requests["status"], requests["rows"], strict=True
        ):
            got.append((request_id if status < 400 else None, [next(served) for _ in range(rows)]))
        assert next(served, None) is None
        assert all(before <= t <= after for t in requests["t"])
        assert all(
            0 < ms < 1000 if status == 200 else ms == 1.0
            for ms, status in zip(requests["latency_ms"], requests["status"], strict=True)
        )
    assert [(i, [tuple(r) for r in rows]) for i, rows in got] == expected
    refused = [r for line in lines for r in line["refused"]]
    assert len(refused) == sum(1 for i, _ in expected if i is None)
    assert all(r["inputs"] == {"x": ["junk"]} for r in refused)

    # the columnar index holds the same rows
    (index,) = tmp_path.glob("*.idx")
    arrays = [record["data"] for record in read_records(index)]
    served_x = [x for _, rows in expected for x, *_ in rows]
    assert np.concatenate([a["feature:x"] for a in arrays]).tolist() == served_x
    vocab = read_records(index)[-1]["vocab"]["feature:c"]
    codes = np.concatenate([a["feature:c"] for a in arrays]).tolist()
    assert [vocab[k] for k in codes] == [c for _, rows in expected for _, c, *_ in rows]
    labels = read_records(index)[-1]["vocab"]["outputs"]
    codes = np.concatenate([a["outputs"] for a in arrays]).tolist()
    assert [labels[k] for k in codes] == [y for _, rows in expected for _, _, y, _ in rows]
    assert np.concatenate([a["rows"] for a in arrays]).tolist() == [len(r) for _, r in expected]


def test_a_sample_rate_keeps_about_that_share_and_says_so(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, model="m", version="1", signature=SIGNATURE, sample_rate=0.25)
    log.folder.mkdir(parents=True, exist_ok=True)
    for i in range(1000):
        batch = ({"x": [float(j) for j in range(4)], "c": ["a"] * 4}, np.array([1] * 4), None)
        log.served(batch, [entry(f"r{i}-{j}", 1, j) for j in range(4)])
    log.close()
    lines = _lines(tmp_path)
    kept = sum(len(line["requests"]["t"]) for line in lines)
    assert 800 < kept < 1200
    assert {line["sample_rate"] for line in lines} == {0.25}
    for line in lines:  # each sampled request keeps its own row
        for request_id, x in zip(line["requests"]["id"], line["inputs"]["x"], strict=True):
            assert float(request_id.rsplit("-", 1)[1]) == x


def test_a_vocabulary_that_keeps_growing_starts_over_and_still_decodes(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The writer keeps each column's codes from block to block; a column of ever new values
    must not grow its vocabulary without end."""
    from cpmai.predlog import index

    monkeypatch.setattr(index, "MAX_VOCABULARY", 50)
    log = PredictionLog(tmp_path, model="m", version="1", signature=SIGNATURE)
    log.folder.mkdir(parents=True, exist_ok=True)
    sent = []
    for i in range(600):
        batch = ({"x": [float(i)], "c": [f"v{i}"]}, np.array([i % 2]), None)
        log.served(batch, [entry(f"r{i}", 1, 0)])
        sent.append(f"v{i}")
        if i % 40 == 39:
            log.flush()
    log.close()
    (index,) = tmp_path.glob("*.idx")
    records = read_records(index)
    decoded = [
        record["vocab"]["feature:c"][code]
        for record in records
        for code in record["data"]["feature:c"].tolist()
    ]
    assert decoded == sent
    assert log._vocab["c"] and len(log._vocab["c"]) <= 51 + 40


def test_a_block_handed_over_off_the_loop_is_prepared_on_it(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """In the server every batch comes on the event loop's thread; one handed over from another
    thread still has its block prepared on the loop (woken thread-safely), not left for the
    tick (here every 30 s)."""
    monkeypatch.setattr(writer, "BLOCK_ROWS", 10)

    async def serve() -> list[dict[str, Any]]:
        log = PredictionLog(
            tmp_path, model="m", version="1", mode="loop", signature=SIGNATURE, flush_seconds=30
        )
        log.start()
        batch = ({"x": [float(i) for i in range(10)], "c": ["a"] * 10}, np.zeros(10), None)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, log.served, batch, [entry("off", 10, 0)])
        for _ in range(500):  # 5 s at most
            await asyncio.sleep(0.01)
            if log.written:
                break
        written = _lines(tmp_path)
        log.close()
        return written

    (line,) = asyncio.run(serve())
    assert line["requests"]["id"] == ["off"]
    assert line["inputs"]["x"] == [float(i) for i in range(10)]


def test_without_a_signature_every_column_seen_is_named(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, model="m", version="1")
    log.folder.mkdir(parents=True, exist_ok=True)
    log.served(({"a": [1, 2], "b": ["x", "y"]}, [0, 1], None), [entry("r1", 2, 0)])
    log.served(({"b": ["z"], "d": [True]}, [1], None), [entry("r2", 1, 0)])
    log.close()
    (line,) = _lines(tmp_path)
    assert line["inputs"] == {"a": [1, 2, None], "b": ["x", "y", "z"], "d": [None, None, True]}
    assert line["outputs"] == [0, 1, 1]


def test_the_batcher_hands_the_log_each_batch_once_all_of_it_was_answered() -> None:
    """`log(batch, entries)` comes once a batch, after every one of its requests had its answer,
    with the entries their `done` returned (a refused request returns none); a batch that
    failed is retried request by request, each its own batch; a batch with no entry to log is
    not handed over."""
    events: list[Any] = []

    def run(columns: dict[str, list[Any]], want_proba: bool) -> tuple[Any, Any]:
        if "bad" in columns["x"]:
            raise ValueError("bad")
        return np.array(columns["x"]), None

    def submit(batcher: Batcher, name: str, rows: int) -> None:
        def done(scored: Any, exc: BaseException | None) -> log_entry.Entry | None:
            events.append(name if exc is None else f"{name}: refused")
            if exc is not None or name == "quiet":
                return None
            return entry(name, rows, scored[1])

        batcher.submit_callback({"x": [name] * rows}, rows, False, done)

    async def main() -> None:
        batcher = Batcher(
            run, max_rows=64, max_latency_s=0, inline=True,
            log=lambda batch, entries: events.append(
                (batch[0]["x"], [(e[ID], e[ROWS], e[ROW_START]) for e in entries])
            ),
        )  # fmt: skip
        for name, rows in (("a", 1), ("b", 2), ("c", 1)):
            submit(batcher, name, rows)
        await asyncio.sleep(0.01)
        for name in ("d", "bad", "e"):
            submit(batcher, name, 1)
        await asyncio.sleep(0.01)
        submit(batcher, "quiet", 1)
        await asyncio.sleep(0.01)

    asyncio.run(main())
    assert events == [
        "a", "b", "c", (["a", "b", "b", "c"], [("a", 1, 0), ("b", 2, 1), ("c", 1, 3)]),
        "d", (["d"], [("d", 1, 0)]), "bad: refused", "e", (["e"], [("e", 1, 0)]),
        "quiet",
    ]  # fmt: skip


def test_the_entry_shape_is_named_once() -> None:
    """An entry is a plain tuple (cheap on the request path) whose shape is one typed alias;
    its named positions agree with that shape and with the field names."""
    e = log_entry
    assert len(e.FIELDS) == len(typing.get_args(e.Entry)) == 12
    positions = (e.T, e.START, e.STATUS, e.ROWS, e.WANT_PROBA, e.ROW_START, e.ORIGIN)
    assert [e.FIELDS[i] for i in positions] == [
        "t", "start", "status", "rows", "want_proba", "row_start", "origin"
    ]  # fmt: skip


def test_the_writer_mode_is_chosen_not_guessed(tmp_path: Path) -> None:
    """A "loop" log must be started on a running event loop; an unknown mode is refused."""
    with pytest.raises(ValueError, match="mode"):
        PredictionLog(tmp_path, model="m", version="1", mode="fast")  # type: ignore[arg-type]
    log = PredictionLog(tmp_path, model="m", version="1", mode="loop")
    with pytest.raises(RuntimeError, match="event loop"):
        log.start()
