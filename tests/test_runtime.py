"""The runtime: ONNX twin parity with scikit-learn, the fallback, batching, batch scoring."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest

from conftest import FEATURES, run_cpmai
from cpmai.artifacts import open_artifact, package
from cpmai.errors import ModelLoadError
from cpmai.manifest import InputSpec
from cpmai.manifest_file import load_manifest
from cpmai.runtime.predictor import Predictor, read_runtime
from cpmai.serving.batching import Batcher
from cpmai.serving.validation import RequestError, Validator


def columns_of(frame: pd.DataFrame) -> dict[str, list[Any]]:
    return {name: frame[name].tolist() for name in FEATURES}


def both_runtimes(home: Path, name: str) -> tuple[Predictor, Predictor]:
    artifact = open_artifact(home, name)
    return (
        Predictor.from_artifact(artifact, runtime="onnx"),
        Predictor.from_artifact(artifact, runtime="sklearn"),
    )


def test_logistic_pipeline_onnx_and_sklearn_agree(churn: Path, home: Path) -> None:
    result = package(load_manifest(churn), home, actor="t")
    runtime = read_runtime(result.path)
    assert runtime["runtime"] == "onnx", runtime["reason"]
    assert runtime["parity"]["labels_equal"] == 1.0
    assert runtime["parity"]["max_probability_diff"] <= runtime["parity"]["tolerance"] == 1e-4
    onnx, sklearn = both_runtimes(home, "churn-classifier")
    assert (onnx.flavor, sklearn.flavor) == ("onnx", "sklearn")
    frame = pd.read_csv(churn.parent / "data" / "holdout.csv")
    labels_o, probs_o = onnx.run(columns_of(frame), True)
    labels_s, probs_s = sklearn.run(columns_of(frame), True)
    model = joblib.load(churn.parent / "model.joblib")
    assert labels_o.tolist() == labels_s.tolist() == model.predict(frame[FEATURES]).tolist()
    assert np.allclose(probs_o, probs_s, atol=1e-9)


@pytest.mark.slow
def test_forest_twin_agrees_exactly_thanks_to_the_float_cast(churn: Path, home: Path) -> None:
    """Without the Cast inserted before the tree ensemble, 0.2% of this forest's labels differ
    between ONNX Runtime and scikit-learn (float32 thresholds compared with doubles)."""
    folder = churn.parent
    subprocess.run(
        [sys.executable, "train.py", "--model", "forest", "--rows", "3000"],
        cwd=folder,
        check=True,
        capture_output=True,
    )
    result = package(load_manifest(churn), home, actor="t")
    runtime = read_runtime(result.path)
    assert runtime["runtime"] == "onnx", runtime["reason"]
    assert runtime["parity"]["labels_equal"] == 1.0
    onnx, sklearn = both_runtimes(home, "churn-classifier")
    frame = pd.concat([pd.read_csv(folder / "data" / f) for f in ("holdout.csv", "reference.csv")])
    labels_o, probs_o = onnx.run(columns_of(frame), True)
    labels_s, probs_s = sklearn.run(columns_of(frame), True)
    assert labels_o.tolist() == labels_s.tolist()
    assert np.abs(probs_o - probs_s).max() <= 1e-4


def _manifest_with(churn: Path, runtime: str) -> Path:
    text = churn.read_text().replace("runtime: auto", f"runtime: {runtime}")
    churn.write_text(text)
    return churn


def test_runtime_sklearn_skips_the_twin(churn: Path, home: Path) -> None:
    result = package(load_manifest(_manifest_with(churn, "sklearn")), home, actor="t")
    runtime = read_runtime(result.path)
    assert runtime == {
        "runtime": "sklearn",
        "reason": "runtime: sklearn in the manifest",
        "onnx_model": None,
        "call": "frame",
    }
    assert not (result.path / "model" / "twin.onnx").exists()
    assert Predictor.from_artifact(open_artifact(home, "churn-classifier")).flavor == "sklearn"


def _unconvertible(folder: Path) -> None:
    """A model skl2onnx has no converter for: the fallback must record why."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

    sys.path.insert(0, str(Path(__file__).parent))
    import _custom_model

    frame = pd.read_csv(folder / "data" / "reference.csv")
    model = Pipeline(
        [
            (
                "prep",
                ColumnTransformer(
                    [
                        (
                            "num",
                            FunctionTransformer(np.log1p),
                            ["tenure_months", "monthly_charges", "support_calls", "late_payments"],
                        ),
                        (
                            "cat",
                            OneHotEncoder(handle_unknown="ignore"),
                            ["plan", "contract", "payment_method", "region"],
                        ),
                    ]
                ),
            ),
            ("clf", _custom_model.MajorityClassifier()),
        ]
    ).fit(frame[FEATURES], frame["churned"])
    joblib.dump(model, folder / "model.joblib")


def test_a_model_that_does_not_convert_falls_back_to_sklearn(churn: Path, home: Path) -> None:
    _unconvertible(churn.parent)
    result = package(load_manifest(churn), home, actor="t")
    runtime = read_runtime(result.path)
    assert runtime["runtime"] == "sklearn"
    assert runtime["reason"].startswith("no ONNX twin converted: columns/double: ")
    assert "FunctionTransformer is not supported" in runtime["reason"]
    predictor = Predictor.from_artifact(open_artifact(home, "churn-classifier"))
    labels, _ = predictor.run(columns_of(pd.read_csv(churn.parent / "data" / "holdout.csv")))
    assert set(labels.tolist()) <= {0, 1}


def test_runtime_onnx_refuses_a_model_that_does_not_convert(churn: Path, home: Path) -> None:
    _unconvertible(churn.parent)
    with pytest.raises(ModelLoadError, match="runtime: onnx, but no ONNX twin converted"):
        package(load_manifest(_manifest_with(churn, "onnx")), home, actor="t")


# --- validation and batching ------------------------------------------------------------------


SIGNATURE = [
    InputSpec(name="a", type="number", min=0.0, max=10.0, nullable=False),
    InputSpec(name="b", type="category", categories=["x", "y"], nullable=True),
    InputSpec(name="c", type="boolean", nullable=False),
]


def test_validator_accepts_and_warns() -> None:
    validator = Validator(SIGNATURE)
    columns, rows, warnings = validator.columns(
        {"c": [True, False], "a": [1, 11.5], "b": ["x", None]}
    )
    assert rows == 2 and list(columns) == ["a", "b", "c"]
    assert warnings == ["a: outside the reference range [0, 10]"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"a": [1], "b": ["x"]}, "missing input 'c'"),
        ({"a": [1], "b": ["x"], "c": [True], "d": [1]}, "unknown input 'd'"),
        ({"a": [True], "b": ["x"], "c": [True]}, "input 'a': expected a number, got True"),
        ({"a": [float("inf")], "b": ["x"], "c": [True]}, "input 'a': inf is not a number"),
        ({"a": [None], "b": ["x"], "c": [True]}, "input 'a': a value is required"),
        ({"a": [1], "b": ["z"], "c": [True]}, "input 'b': 'z' is not one of 'x', 'y'"),
        ({"a": [1], "b": [["x"]], "c": [True]}, "input 'b': ['x'] is not one of"),
        ({"a": [1], "b": ["x"], "c": ["yes"]}, "input 'c': expected true or false"),
        ({"a": [1, 2], "b": ["x"], "c": [True, True]}, "input 'b' has 1 values, the others 2"),
        ({"a": [], "b": [], "c": []}, "no rows to score"),
    ],
)
def test_validator_refuses(raw: dict[str, list[Any]], message: str) -> None:
    with pytest.raises(RequestError, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        Validator(SIGNATURE).columns(raw)
    assert info.value.status == 422


def test_batcher_groups_concurrent_requests_and_isolates_failures() -> None:
    calls: list[int] = []

    def run(columns: dict[str, list[Any]], want_proba: bool) -> tuple[Any, Any]:
        values = columns["a"]
        calls.append(len(values))
        if "boom" in values:
            raise ValueError("cannot score boom")
        return np.array(values) * 10, (np.array(values)[:, None] * [1, 1] if want_proba else None)

    async def scenario() -> list[Any]:
        batcher = Batcher(run, max_rows=5, max_latency_s=0, inline=True)
        requests = [([1], 1), ([2, 3], 2), (["boom"], 1), ([4], 1), ([5, 6, 7, 8, 9, 10], 6)]

        async def one(values: list[Any], rows: int) -> Any:
            try:
                labels, probs = await batcher.submit({"a": values}, rows, rows == 2)
                return labels.tolist(), None if probs is None else probs.tolist()
            except ValueError as exc:
                return str(exc)

        return await asyncio.gather(*(one(v, r) for v, r in requests))

    results = asyncio.run(scenario())
    assert results[0] == ([10], None)
    assert results[1] == ([20, 30], [[2, 2], [3, 3]])
    assert results[2] == "cannot score boom"
    assert results[3] == ([40], None)
    assert results[4] == ([50, 60, 70, 80, 90, 100], None)
    # first call: 1+2+1+1 = 5 rows (the bound), failed because of "boom"; then each alone;
    # then the 6-row request alone (a request larger than the bound still goes through)
    assert calls == [5, 1, 2, 1, 1, 6]


# --- cpmai predict ------------------------------------------------------------------------------


def test_predict_scores_a_file_in_chunks(churn: Path, home: Path, tmp_path: Path) -> None:
    package(load_manifest(churn), home, actor="t")
    source = churn.parent / "data" / "holdout.csv"
    output = tmp_path / "scored.csv"
    result = run_cpmai(
        "predict",
        "churn-classifier",
        "--input",
        source,
        "--output",
        output,
        "--chunk-rows",
        "100",
        "--probabilities",
        "--json",
    )
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    frame = pd.read_csv(source)
    assert summary["rows"] == len(frame) and summary["chunks"] == -(-len(frame) // 100)
    scored = pd.read_csv(output)
    model = joblib.load(churn.parent / "model.joblib")
    assert scored["prediction"].tolist() == model.predict(frame[FEATURES]).tolist()
    assert np.allclose(scored["probability_1"], model.predict_proba(frame[FEATURES])[:, 1])
    assert scored["churned"].tolist() == frame["churned"].tolist()  # passed through
    logged = list((home / "logs" / "churn-classifier" / "batch").glob("*.jsonl"))
    blocks = [json.loads(line) for p in logged for line in p.read_text().splitlines()]
    assert sum(len(b["requests"]["t"]) for b in blocks) == summary["chunks"]
    assert sum(len(b["outputs"]) for b in blocks) == len(frame)


def test_predict_refuses_bad_rows_and_leaves_no_partial_output(
    churn: Path, home: Path, tmp_path: Path
) -> None:
    package(load_manifest(churn), home, actor="t")
    frame = pd.read_csv(churn.parent / "data" / "holdout.csv")
    frame["support_calls"] = frame["support_calls"].astype(object)
    frame.loc[150, "support_calls"] = "many"
    source = tmp_path / "bad.csv"
    frame.to_csv(source, index=False)
    output = tmp_path / "out.csv"
    result = run_cpmai(
        "predict", "churn-classifier", "-i", source, "-o", output, "--chunk-rows", "100"
    )
    assert result.code == 2  # the bad row is named, not its chunk
    assert "bad.csv row 151: input 'support_calls': expected a number, got 'many'" in result.err
    assert not output.exists() and not list(tmp_path.glob(".*partial"))
    frame.drop(columns=["region"]).to_csv(source, index=False)
    result = run_cpmai("predict", "churn-classifier", "-i", source, "-o", output)
    assert result.code == 2 and "missing column(s) region" in result.err


def test_predict_jsonl_round_trip(churn: Path, home: Path, tmp_path: Path) -> None:
    package(load_manifest(churn), home, actor="t")
    frame = pd.read_csv(churn.parent / "data" / "holdout.csv").head(30)
    source = tmp_path / "rows.jsonl"
    frame.to_json(source, orient="records", lines=True)
    output = tmp_path / "rows.scored.jsonl"
    assert (
        run_cpmai(
            "predict", "churn-classifier", "-i", source, "-o", output, "--chunk-rows", "7"
        ).code
        == 0
    )
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(lines) == 30 and all("prediction" in line for line in lines)
