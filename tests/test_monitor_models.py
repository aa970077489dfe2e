"""`cpmai monitor` for every task and input kind, on real servers: a regressor (prediction drift
as a number, MAE/RMSE/R² against scikit-learn, a shifted feature named), a free-text model
(traffic counted, length / unknown words / token distribution, shifted text flagged), a
multiclass model asked for probabilities, and a prediction log with a damaged line (exit 5, a
message, never "within bounds").

Models come from the zoo (tests/_zoo.py), built from scikit-learn's bundled data; each test
deploys one to `staging` on 127.0.0.1, sends MLflow JSON over HTTP and stops it (cpmai stop, then
its PID if it is still there)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pytest
import yaml
from _zoo import KINDS, Kind
from test_monitor import _iso_now, jsonschema_validate

from conftest import run_cpmai

pytestmark = pytest.mark.slow


# --- helpers ----------------------------------------------------------------------------------


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts at full precision (pandas' to_json keeps 10 digits, which makes
    a feature's few distinct values look like new categories), NaN as null."""
    return [
        {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
        for row in frame.to_dict(orient="records")
    ]


def _post(
    port: int, rows: list[dict[str, Any]], request_id: str, *, probabilities: bool = False
) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        path = "/invocations" + ("?probabilities=true" if probabilities else "")
        body = json.dumps({"dataframe_records": rows})
        conn.request(
            "POST", path, body, {"Content-Type": "application/json", "X-Request-Id": request_id}
        )
        reply = conn.getresponse()
        data = json.loads(reply.read())
        assert reply.status == 200, data
        return data  # type: ignore[no-any-return]
    finally:
        conn.close()


def _send(
    port: int,
    frame: pd.DataFrame,
    prefix: str,
    *,
    per_request: int = 45,
    probabilities: bool = False,
) -> tuple[list[Any], pd.DataFrame]:
    """`frame`'s rows in requests of `per_request`; (the predictions, the labels file's rows:
    id = the request id, row = the row within the request)."""
    records = _records(frame)
    said: list[Any] = []
    ids: list[dict[str, Any]] = []
    for start in range(0, len(records), per_request):
        chunk = records[start : start + per_request]
        rid = f"{prefix}-{start}"
        data = _post(port, chunk, rid, probabilities=probabilities)
        assert len(data["predictions"]) == len(chunk)
        if probabilities:
            assert len(data["probabilities"]) == len(chunk)
        said += data["predictions"]
        ids += [{"id": rid, "row": i} for i in range(len(chunk))]
    return said, pd.DataFrame(ids)


def _sample(kind: Kind, source: str, n: int, seed: int) -> pd.DataFrame:
    """`n` rows (features and target) drawn from the kind's reference or holdout file."""
    frame = pd.read_csv(kind.folder / "data" / f"{source}.csv")
    return frame.sample(n, replace=n > len(frame), random_state=seed).reset_index(drop=True)


@contextlib.contextmanager
def _deployed(kind: Kind) -> Iterator[tuple[str, int]]:
    """The kind deployed to staging: (its name, its port); stopped on the way out."""
    name = yaml.safe_load(kind.manifest.read_text())["name"]
    deployed = run_cpmai("deploy", str(kind.manifest), "--env", "staging", timeout=180)
    assert deployed.code == 0, deployed.err
    status = run_cpmai("status", name, "--json")
    server = json.loads(status.out)["environments"][0]["server"]
    pid = server["pid"]
    try:
        port = urlparse(server["url"]).port
        assert port is not None
        yield name, port
    finally:
        run_cpmai("stop", name, "--env", "staging")
        with contextlib.suppress(ProcessLookupError, PermissionError, TypeError):
            os.kill(pid, 0)  # still there after `cpmai stop`: end it by its PID
            os.kill(pid, signal.SIGKILL)


def _monitor(name: str, *args: Any, cwd: Path | None = None) -> tuple[int, dict[str, Any], str]:
    """`cpmai --json monitor NAME --env staging ARGS`: (exit code, document, stderr)."""
    result = run_cpmai("--json", "monitor", name, "--env", "staging", *map(str, args), cwd=cwd)
    assert "Traceback" not in result.err, result.err
    doc = json.loads(result.out)
    jsonschema_validate(doc)
    assert doc["exit_code"] == result.code
    return result.code, doc, result.err


def _feature(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in doc["drift"]["features"] if f["feature"] == name)


def _labels(ids: pd.DataFrame, truth: pd.Series, path: Path) -> Path:
    ids.assign(label=truth.to_numpy()).to_csv(path, index=False)
    return path


# --- a regressor ------------------------------------------------------------------------------


def test_a_regressor_is_monitored_like_a_classifier(home: Path, tmp_path: Path) -> None:
    from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

    kind = KINDS["linear-regressor"](tmp_path / "model")
    assert kind.task == "regression" and kind.shift is not None
    with _deployed(kind) as (name, port):
        t0 = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))
        calm = _sample(kind, "reference", 180, seed=1)
        said, ids = _send(port, calm[kind.features], "calm")
        t1 = _iso_now()
        moved = kind.shifted(_sample(kind, "reference", 180, seed=2)[kind.features])
        _send(port, moved, "moved")
        t2 = _iso_now()

        labels = _labels(ids, calm[kind.target], tmp_path / "labels.csv")
        code, doc, err = _monitor(name, "--since", t0, "--until", t1, "--labels", labels)
        assert code == 0, (err, doc["alerts"])
        assert doc["traffic"]["requests"] == 4 and doc["traffic"]["rows"] == 180
        assert doc["log"]["unreadable_lines"] == 0 and doc["error"] is None
        prediction = doc["drift"]["prediction"]
        assert prediction["kind"] == "numeric" and prediction["method"] == "ks"
        assert prediction["rows"] == 180 and prediction["status"] == "ok"
        assert doc["drift"]["drifted"] == []
        quality = doc["model_quality"]
        assert quality["labelled_rows"] == 180 and quality["join"] == "id"
        y, p = calm[kind.target].to_numpy(dtype=float), np.asarray(said, dtype=float)
        metrics = quality["metrics"]
        assert metrics["mae"] == pytest.approx(mean_absolute_error(y, p), abs=1e-5)
        assert metrics["rmse"] == pytest.approx(root_mean_squared_error(y, p), abs=1e-5)
        assert metrics["r2"] == pytest.approx(r2_score(y, p), abs=1e-5)
        assert quality["metric"] == "r2" and quality["passed"] is True

        # the same rows against an error ceiling: mae is a bound from above
        strict = yaml.safe_load(kind.manifest.read_text())
        strict["monitoring"]["quality"] = {"metric": "mae", "min": 1.0}
        manifest = tmp_path / "model" / "strict.yaml"
        manifest.write_text(yaml.safe_dump(strict, sort_keys=False))
        result = run_cpmai("--json", "monitor", str(manifest), "--env", "staging", "--since", t0,
                           "--until", t1, "--labels", str(labels))  # fmt: skip
        breached = json.loads(result.out)
        assert result.code == 4 and [a["kind"] for a in breached["alerts"]] == ["quality"]
        assert breached["model_quality"]["value"] > 1.0

        # one feature moved six standard deviations: named, the others left alone
        code, doc, err = _monitor(name, "--since", t1, "--until", t2)
        assert code in (0, 4), err
        assert kind.shift in doc["drift"]["drifted"]
        shifted = _feature(doc, kind.shift)
        assert shifted["drifted"] is True and shifted["statistic"] == pytest.approx(1.0)
        assert len(doc["drift"]["drifted"]) <= 2  # not everything: the shift, not noise
        text = run_cpmai("monitor", name, "--env", "staging", "--since", t1, "--until", t2)
        assert text.code == code and kind.shift in text.out and "(prediction)" in text.out


# --- free text --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["text-columns", "text-series"])
def test_free_text_is_read_counted_and_judged(model: str, home: Path, tmp_path: Path) -> None:
    """A text column in a ColumnTransformer (a DataFrame), and a pipeline fitted on a Series."""
    from sklearn.metrics import accuracy_score

    kind = KINDS[model](tmp_path / "model")
    assert kind.features == ["text"]
    with _deployed(kind) as (name, port):
        t0 = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))
        calm = _sample(kind, "reference", 160, seed=1)
        asks = kind.predict_proba is not None  # probabilities logged alongside, where there are
        said, ids = _send(port, calm[kind.features], "calm", probabilities=asks)
        t1 = _iso_now()
        unseen = _sample(kind, "holdout", 160, seed=2)  # texts the reference never had
        _send(port, unseen[kind.features], "unseen")
        t2 = _iso_now()
        _send(port, kind.shifted(calm[kind.features]), "moved")  # long unknown words
        t3 = _iso_now()

        labels = _labels(ids, calm[kind.target], tmp_path / "labels.csv")
        code, doc, err = _monitor(name, "--since", t0, "--until", t1, "--labels", labels)
        assert code == 0, (err, doc["alerts"])
        assert doc["traffic"]["requests"] == 4 and doc["traffic"]["rows"] == 160
        assert doc["log"]["unreadable_lines"] == 0
        text = _feature(doc, "text")
        assert text["kind"] == "text" and text["rows"] == 160 and text["status"] == "ok"
        measures = text["text"]
        assert measures["drifted_by"] == []
        assert measures["length"]["unit"] == "characters" and measures["length"]["rows"] == 160
        assert measures["length"]["mean"] == pytest.approx(calm["text"].str.len().mean(), rel=1e-5)
        unknown = measures["unknown_words"]
        assert unknown["share"] == 0.0 and 0 < unknown["expected_share"] < 1  # all seen before
        tokens = measures["token_distribution"]
        assert tokens["buckets"] == 64 and tokens["statistic"] < tokens["chance"]
        assert doc["drift"]["status"] == "ok" and doc["drift"]["judged"] == 1
        quality = {q["feature"]: q for q in doc["data_quality"]}
        assert quality["text"]["kind"] == "text" and quality["text"]["missing"] == 0
        assert doc["model_quality"]["metrics"]["accuracy"] == pytest.approx(
            accuracy_score(calm[kind.target], said), abs=1e-6
        )

        # new texts from the same source: new words, but no more than the reference predicts
        code, doc, err = _monitor(name, "--since", t1, "--until", t2)
        measures = _feature(doc, "text")["text"]
        assert measures["unknown_words"]["share"] > 0.1
        assert measures["unknown_words"]["drifted"] is False
        assert measures["token_distribution"]["drifted"] is False

        # the same words forty times over, none of them the reference's: all three measures
        code, doc, err = _monitor(name, "--since", t2, "--until", t3)
        assert code == 4, err
        assert doc["drift"]["drifted"] == ["text"]
        measures = _feature(doc, "text")["text"]
        assert measures["drifted_by"] == ["length", "unknown_words", "token_distribution"]
        assert measures["unknown_words"]["share"] == 1.0
        assert measures["token_distribution"]["excess"] >= 0.2
        human = run_cpmai("monitor", name, "--env", "staging", "--since", t2, "--until", t3)
        assert human.code == 4 and "unknown words" in human.out and "ALERT" in human.out
        assert "within bounds" not in human.out and "no traffic" not in human.out
        summary = tmp_path / "monitor.md"
        run_cpmai("monitor", name, "--env", "staging", "--since", t2, "--markdown", str(summary))
        assert "| text |" in summary.read_text() and "unknown words" in summary.read_text()


def test_text_measures_are_not_fooled_by_a_small_reference() -> None:
    """No server: the chance distance grows as samples shrink, so a few rows from the reference's
    own source stay within bounds while a new vocabulary does not."""
    from cpmai.monitor.textdrift import TextComparison, profile_text

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(400)]
    weights = 1 / np.arange(1, 401)
    weights /= weights.sum()

    def texts(n: int, pool: list[str]) -> list[str]:
        return [" ".join(rng.choice(pool, size=8, p=weights)) for _ in range(n)]

    profile = profile_text("t", texts(300, words))
    assert 0 < profile.expected_unknown < 1 and profile.rows == 300
    same, other = texts(150, words), texts(150, [f"z{i}" for i in range(400)])
    compare = TextComparison(profile, same + other)
    codes = np.arange(300, dtype=np.int32)

    def judge(part: np.ndarray) -> Any:
        return compare.compare(part, threshold=0.1, p_value=0.05, min_samples=50)

    calm = judge(codes[:150])
    assert calm.unknown_drifted is False and calm.distance_drifted is False
    assert calm.chance_distance is not None and calm.distance is not None
    assert calm.distance < calm.chance_distance + 0.1
    moved = judge(codes[150:])
    assert moved.unknown_share == 1.0 and moved.unknown_drifted and moved.distance_drifted
    assert moved.drifted is True and "length" not in moved.drifted_by  # same lengths
    few = judge(codes[150:160])
    assert few.drifted is None and few.to_dict()["status"] == "not enough data"
    small, large = compare.chance(20), compare.chance(2000)
    assert small is not None and large is not None and small > large


# --- multiclass with probabilities -------------------------------------------------------------


def test_a_multiclass_model_asked_for_probabilities(home: Path, tmp_path: Path) -> None:
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    kind = KINDS["multiclass-forest"](tmp_path / "model")
    with _deployed(kind) as (name, port):
        t0 = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))
        rows = _sample(kind, "holdout", 160, seed=3)
        said, ids = _send(port, rows[kind.features], "mc", probabilities=True)
        t1 = _iso_now()
        labels = _labels(ids, rows[kind.target], tmp_path / "labels.csv")
        code, doc, err = _monitor(name, "--since", t0, "--until", t1, "--labels", labels)
        assert code in (0, 4), err
        assert doc["traffic"]["rows"] == 160 and doc["log"]["unreadable_lines"] == 0
        prediction = doc["drift"]["prediction"]
        assert prediction["kind"] == "categorical" and prediction["rows"] == 160
        truth = rows[kind.target].to_numpy()
        classes = sorted(set(truth.tolist()) | set(said))
        assert len(classes) == 3
        metrics = doc["model_quality"]["metrics"]
        assert metrics["accuracy"] == pytest.approx(accuracy_score(truth, said), abs=1e-6)
        for metric, score in (("precision", precision_score), ("recall", recall_score),
                              ("f1", f1_score)):  # fmt: skip
            expected = score(truth, said, average="macro", labels=classes, zero_division=0)
            assert metrics[metric] == pytest.approx(expected, abs=1e-6), metric


# --- a log that cannot be read ----------------------------------------------------------------


def test_an_unreadable_log_line_is_an_error_never_within_bounds(home: Path, tmp_path: Path) -> None:
    kind = KINDS["linear-regressor"](tmp_path / "model")
    with _deployed(kind) as (name, port):
        _send(port, _sample(kind, "reference", 120, seed=4)[kind.features], "calm")
        time.sleep(1.3)  # the log flushes every second
        clean = run_cpmai("monitor", name, "--env", "staging")
        assert clean.code == 0 and "within bounds" in clean.out, clean.err

        log = next((home / "logs" / name / "staging").glob("predictions-*.jsonl"))
        damaged = log.stat().st_size
        line = b'{"format": "cpmai-predlog/2", "requests": {"t": [1'
        with log.open("ab") as handle:  # a line cut short, then the server writes on after it
            handle.write(line + b"\n")
        _send(port, _sample(kind, "reference", 60, seed=5)[kind.features], "after")
        time.sleep(1.3)

        human = run_cpmai("monitor", name, "--env", "staging")
        assert human.code == 5, (human.out, human.err)
        assert "Traceback" not in human.err and "within bounds" not in human.out
        assert "could not be read" in human.err and f"byte {damaged:,}" in human.err
        assert log.name in human.err and "hint:" in human.err
        assert "not judged" in human.out and "requests" in human.out  # the report is still shown

        code, doc, _ = _monitor(name)
        assert code == 5 and doc["error"]["exit_code"] == 5
        assert doc["log"]["unreadable_lines"] == 1
        assert doc["log"]["unreadable"] == [
            {"file": log.name, "offset": damaged, "reason": doc["log"]["unreadable"][0]["reason"]}
        ]
        assert doc["log"]["unreadable"][0]["reason"].startswith("not JSON")
        assert doc["traffic"]["rows"] == 180  # what could be read, still counted

        # a block of the right shape but without the model's inputs is unreadable too
        block = json.loads(log.read_bytes().splitlines()[0])
        block["inputs"] = {}
        with log.open("ab") as handle:
            handle.write(json.dumps(block).encode() + b"\n")
        code, doc, _ = _monitor(name, "--no-cache")
        assert code == 5 and doc["log"]["unreadable_lines"] == 2
        assert "no values for input(s)" in doc["log"]["unreadable"][1]["reason"]

        # the repair the hint suggests: blank the lines out in place (the cache notices)
        data = bytearray(log.read_bytes())
        for entry in doc["log"]["unreadable"]:
            end = data.index(b"\n", entry["offset"])
            data[entry["offset"] : end] = b" " * (end - entry["offset"])
        log.write_bytes(bytes(data))
        again = run_cpmai("monitor", name, "--env", "staging")
        assert again.code == 0 and "within bounds" in again.out, again.err
