"""The prediction log's writer: what the server hands it by reference comes out row for row."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from cpmai.serving.logindex import read_records
from cpmai.serving.predlog import PredictionLog

SIGNATURE = {
    "inputs": [
        {"name": "x", "type": "number"},
        {"name": "c", "type": "category", "categories": ["a", "b"]},
    ],
    "outputs": [{"name": "label", "type": "integer", "categories": [0, 1]}],
}


def _lines(folder: Path) -> list[dict[str, Any]]:
    return [
        orjson.loads(line)
        for path in sorted(folder.glob("predictions-*.jsonl"))
        for line in path.read_bytes().splitlines()
    ]


def test_batches_taken_by_reference_come_out_row_for_row(tmp_path: Path) -> None:
    """Random batches as the server's batcher makes them: requests of several rows, some that
    never reach the log (a request that failed after the model call), some asking for
    probabilities, refusals in between, and blocks cut anywhere, also inside a batch."""
    chance = random.Random(7)
    log = PredictionLog(tmp_path, model="m", version="1", signature=SIGNATURE)
    log.folder.mkdir(parents=True, exist_ok=True)
    expected: list[tuple[Any, ...]] = []  # (id, rows as (x, c, label, probabilities or None))
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
        start = 0
        for rows in sizes:
            number += 1
            want = probabilities is not None and chance.random() < 0.5
            if chance.random() < 0.1:
                log.record("invocations", 422, 0.001, 0, {"x": ["junk"]}, None, error="bad")
                expected.append((None, []))
            if chance.random() < 0.1:  # failed after scoring: its rows are not logged
                start += rows
                continue
            log.served("invocations", 0.002, rows, f"r{number}", None, batch, start, want)
            expected.append(
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
            if chance.random() < 0.05:
                log.flush()
    log.close()

    lines = _lines(tmp_path)
    assert len(lines) > 10  # blocks were cut often, inside batches too
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


def test_a_sample_rate_keeps_about_that_share_and_says_so(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, model="m", version="1", signature=SIGNATURE, sample_rate=0.25)
    log.folder.mkdir(parents=True, exist_ok=True)
    batch = ({"x": [1.0], "c": ["a"]}, np.array([1]), None)
    for i in range(4000):
        log.served("invocations", 0.001, 1, f"r{i}", None, batch, 0, False)
    log.close()
    lines = _lines(tmp_path)
    kept = sum(len(line["requests"]["t"]) for line in lines)
    assert 800 < kept < 1200
    assert {line["sample_rate"] for line in lines} == {0.25}
    assert sum(len(line["outputs"]) for line in lines) == kept


def test_a_vocabulary_that_keeps_growing_starts_over_and_still_decodes(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The writer keeps each column's codes from block to block; a column of ever new values
    must not grow its vocabulary without end."""
    from cpmai.serving import logindex

    monkeypatch.setattr(logindex, "MAX_VOCABULARY", 50)
    log = PredictionLog(tmp_path, model="m", version="1", signature=SIGNATURE)
    log.folder.mkdir(parents=True, exist_ok=True)
    sent = []
    for i in range(600):
        batch = ({"x": [float(i)], "c": [f"v{i}"]}, np.array([i % 2]), None)
        log.served("invocations", 0.001, 1, f"r{i}", None, batch, 0, False)
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


def test_without_a_signature_a_batch_cut_between_blocks_keeps_its_columns(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, model="m", version="1")
    log.folder.mkdir(parents=True, exist_ok=True)
    batch = ({"a": [1, 2], "b": ["x", "y"]}, [0, 1], None)
    log.served("invocations", 0.001, 1, "r1", None, batch, 0, False)
    log.flush()
    log.served("invocations", 0.001, 1, "r2", None, batch, 1, False)
    log.close()
    lines = _lines(tmp_path)
    assert [(line["inputs"], line["outputs"]) for line in lines] == [
        ({"a": [1], "b": ["x"]}, [0]),
        ({"a": [2], "b": ["y"]}, [1]),
    ]
