"""The model zoo: every kind of model a user brings goes the whole way on a real server.

package → deploy → MLflow JSON and OIP v2 requests (probabilities where the model has them) →
`cpmai predict` on a file → a short bench → `cpmai monitor` with labels, then on shifted
traffic. Predictions must equal the model's own: labels exactly; probabilities and regression
values within 1e-4 (absolute, relative for values beyond 1: the twin's parity tolerance).
"""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests._zoo import KINDS, Kind
from tests.conftest import run_cpmai

TOLERANCE = 1e-4


def _post(port: int, path: str, doc: Any, headers: dict[str, str] | None = None) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, json.dumps(doc),
                     {"Content-Type": "application/json", **(headers or {})})  # fmt: skip
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read() or b"null")
    finally:
        conn.close()


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON objects, numbers at full precision (pandas' to_json keeps 10 digits)."""
    plain = frame.astype(object).where(frame.notna(), None)
    return [{k: v.item() if hasattr(v, "item") else v for k, v in row.items()}
            for row in plain.to_dict(orient="records")]  # fmt: skip


def _same(kind: Kind, got: Any, expected: Any) -> None:
    got, expected = np.asarray(got), np.asarray(expected)
    if kind.task == "classification":
        assert got.astype(str).tolist() == expected.astype(str).tolist()
    else:
        scale = np.maximum(1.0, np.abs(expected.astype(float)))
        assert (np.abs(got.astype(float) - expected) / scale).max() <= TOLERANCE


def _perturbed(rows: pd.DataFrame) -> pd.DataFrame:
    """Numbers moved by up to ±2% (the same seed every run), so the twin is compared on values
    that are not among the reference and holdout rows its parity was checked on."""
    out = rows.copy()
    rng = np.random.default_rng(4)
    for column in out.columns:
        if pd.api.types.is_float_dtype(out[column]):
            out[column] = out[column] * rng.uniform(0.98, 1.02, len(out))
    return out


def _json(*args: Any, codes: tuple[int, ...] = (0,)) -> dict[str, Any]:
    result = run_cpmai(*map(str, args), "--json")
    assert result.code in codes, result.err
    doc: dict[str, Any] = json.loads(result.out)
    return doc


def _iso_now() -> str:
    time.sleep(0.05)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    time.sleep(1.05)  # --since has second resolution: what follows is after it
    return stamp + "Z"


def _send(port: int, kind: Kind, rows: pd.DataFrame, prefix: str) -> list[Any]:
    """`rows` in requests of 40, each with its own request id; returns the predictions."""
    predictions: list[Any] = []
    for start in range(0, len(rows), 40):
        chunk = rows.iloc[start : start + 40]
        status, doc = _post(port, "/invocations", {"dataframe_records": _records(chunk)},
                            {"X-Request-Id": f"{prefix}{start}"})  # fmt: skip
        assert status == 200, doc
        predictions.extend(doc["predictions"])
    return predictions


def _quality_matches(kind: Kind, metrics: dict[str, float], truth: Any, served: Any) -> None:
    """monitor's quality figures are scikit-learn's on the same rows."""
    from sklearn import metrics as sk

    if kind.task == "classification":
        expected = {"accuracy": sk.accuracy_score(truth.astype(str), served.astype(str))}
    else:
        expected = {
            "mae": sk.mean_absolute_error(truth, served),
            "rmse": float(np.sqrt(sk.mean_squared_error(truth, served))),
            "r2": sk.r2_score(truth, served),
        }
    for metric, value in expected.items():
        assert metrics[metric] == pytest.approx(value, rel=1e-3, abs=1e-6), metric


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_kind_of_model_goes_the_whole_way(name: str, tmp_path: Path, home: Path) -> None:
    kind = KINDS[name](tmp_path / name)
    packaged = run_cpmai("package", kind.manifest)
    assert packaged.code == 0, packaged.err
    # nothing on stderr but, where no twin is used, the one line that says why (no ONNX Runtime
    # error lines from the candidates that did not convert)
    said = packaged.err.splitlines()
    assert all(line.startswith("warning: runtime: sklearn — ") for line in said), said
    assert len(said) == (kind.runtime == "sklearn")
    runtime = json.loads(
        next((home / "artifacts" / f"zoo-{name}").glob("*/runtime.json")).read_text()
    )
    assert runtime["runtime"] == kind.runtime, runtime["reason"]

    deployed = run_cpmai("deploy", kind.manifest, "--env", "staging")
    assert deployed.code == 0, deployed.err
    try:
        status = _json("status", f"zoo-{name}")
        url = next(e["server"]["url"] for e in status["environments"] if e["env"] == "staging")
        port = int(url.rsplit(":", 1)[1].strip("/"))
        rows = kind.rows(160, seed=1)
        served = _send(port, kind, rows, "r")
        _same(kind, served, kind.predict(rows))

        # OIP v2, one tensor per input, probabilities asked for where the model has them
        few = _perturbed(kind.rows(5, seed=9))  # rows parity never saw
        inputs = []
        for column in kind.features:
            values = [None if v != v else v for v in few[column].tolist()]  # NaN: null
            numeric = pd.api.types.is_numeric_dtype(few[column])
            inputs.append({"name": column, "shape": [len(values)],
                           "datatype": "FP64" if numeric else "BYTES",
                           "data": values})  # fmt: skip
        asked = {"inputs": inputs, "parameters": {"probabilities": True}}
        code, doc = _post(port, f"/v2/models/zoo-{name}/infer", asked)
        if kind.predict_proba is None:
            assert code == 400 and "probabilities" in doc["error"], doc
            code, doc = _post(port, f"/v2/models/zoo-{name}/infer", {"inputs": inputs})
            assert code == 200, doc
        else:
            assert code == 200, doc
            outputs = {o["name"]: o for o in doc["outputs"]}
            got = np.asarray(outputs["probabilities"]["data"], dtype=float)
            assert np.abs(got.reshape(5, -1) - kind.predict_proba(few)).max() <= TOLERANCE
        outputs = {o["name"]: o for o in doc["outputs"]}
        if kind.task == "regression":
            assert outputs["prediction"]["datatype"] == "FP64"
        _same(kind, outputs["prediction"]["data"], kind.predict(few))
        labels = np.asarray(kind.predict(few))
        if kind.task == "classification" and labels.dtype.kind in "iu":
            assert outputs["prediction"]["datatype"] == "INT64"  # as the original's, never FP64

        if kind.unseen:  # values the reference never had, which the pipeline handles
            odd = _records(rows.head(1))
            odd[0].update(kind.unseen)
            code, doc = _post(port, "/invocations", {"dataframe_records": odd})
            assert code == 200, doc
            expected = kind.predict(pd.DataFrame(odd).replace({None: np.nan}))
            _same(kind, doc["predictions"], expected)

        # batch scoring of a file
        source, scored = tmp_path / "in.csv", tmp_path / "out.csv"
        rows.head(50).to_csv(source, index=False)
        extra = ["--probabilities"] if kind.predict_proba is not None else []
        predicted = run_cpmai("predict", f"zoo-{name}@staging", "--input", source,
                              "--output", scored, *extra)  # fmt: skip
        assert predicted.code == 0, predicted.err
        _same(kind, pd.read_csv(scored)["prediction"], kind.predict(pd.read_csv(source)))
        if kind.predict_proba is None and kind.task == "classification":
            refused = run_cpmai("predict", f"zoo-{name}@staging", "--input", source,
                                "--output", scored, "--probabilities")  # fmt: skip
            assert refused.code == 2 and "probabilities" in refused.err

        # a database table into another (SQLite), keyed: the same predictions, typed columns
        import sqlalchemy as sa

        database = f"sqlite:///{tmp_path / 'batch.db'}"
        keyed = pd.read_csv(source)
        keyed.insert(0, "item_key", np.arange(len(keyed)) * 7)
        engine = sa.create_engine(database)
        keyed.to_sql("items", engine, index=False)
        tabled = run_cpmai("predict", f"zoo-{name}@staging", "--input", database,
                           "--table", "items", "--key", "item_key", "--output-table", "scored",
                           *extra)  # fmt: skip
        assert tabled.code == 0, tabled.err
        out = pd.read_sql("SELECT * FROM scored ORDER BY item_key", engine)
        engine.dispose()
        assert out["item_key"].tolist() == keyed["item_key"].tolist()
        assert out["refused"].isna().all()
        _same(kind, out["prediction"], kind.predict(keyed.drop(columns=["item_key"])))
        if extra and kind.task == "classification":
            assert kind.predict_proba is not None
            expected_proba = np.asarray(kind.predict_proba(keyed.drop(columns=["item_key"])))
            got = out[[c for c in out.columns if c.startswith("probability_")]].to_numpy()
            assert np.allclose(got, expected_proba, atol=1e-4)

        bench = _json("bench", f"zoo-{name}@staging", "--url", url, "--concurrency", "2",
                      "--duration", "1", "--warmup", "0.2", codes=(0, 4))  # fmt: skip
        (level,) = bench["levels"]
        assert level["ok"] > 0 and level["ok"] == level["requests"], level

        labels_file = tmp_path / "labels.csv"
        truth = kind.sample(160, seed=1)[kind.target]
        pd.DataFrame(
            {
                "id": [f"r{(i // 40) * 40}" for i in range(160)],
                "row": [i % 40 for i in range(160)],
                "label": truth.to_numpy(),
            }
        ).to_csv(labels_file, index=False)
        deadline = time.monotonic() + 15
        while True:
            watched = _json("monitor", f"zoo-{name}", "--env", "staging", "--labels", labels_file)
            if watched["model_quality"]["labelled_rows"] >= 160 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert watched["traffic"]["requests"] >= 4 and watched["drift"]["drifted"] == []
        checked = {entry["feature"]: entry for entry in watched["data_quality"]}
        for column, value in kind.unseen.items():  # served, and counted as what they were
            assert checked[column]["missing" if value is None else "unseen"] >= 1, checked[column]
        quality = watched["model_quality"]
        assert quality["labelled_rows"] == 160
        _quality_matches(kind, quality["metrics"], truth.to_numpy(), np.asarray(served))

        since = _iso_now()
        _send(port, kind, kind.shifted(kind.rows(160, seed=2)), "s")
        deadline = time.monotonic() + 15
        while True:  # the server writes its log a moment after answering
            shifted = _json("monitor", f"zoo-{name}", "--env", "staging", "--since", since,
                            codes=(0, 4))  # fmt: skip
            if shifted["traffic"]["rows"] >= 160 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert kind.shift in shifted["drift"]["drifted"], shifted["drift"]
    finally:
        run_cpmai("stop", f"zoo-{name}", "--env", "staging")
