"""What packaging reads from a user's model: its task, what it tolerates, an MLflow signature,
and the overrides of one input (the whole lifecycle of each kind is in test_zoo.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests._zoo import KINDS
from tests.conftest import run_cpmai


def _inputs(home: Path, name: str) -> dict[str, dict[str, object]]:
    (path,) = (home / "artifacts" / name).glob("*/signature.json")
    return {spec["name"]: spec for spec in json.loads(path.read_text())["inputs"]}


def test_a_regressor_declared_as_a_classifier_is_refused_with_the_reason(
    tmp_path: Path, home: Path
) -> None:
    kind = KINDS["linear-regressor"](tmp_path / "m")
    text = kind.manifest.read_text().replace("task: regression", "task: classification")
    text = text.replace("r2: '>= -10'", "accuracy: '>= 0'").replace(
        "metric: r2", "metric: accuracy"
    )
    kind.manifest.write_text(text.replace("min: -10", "min: 0"))
    result = run_cpmai("package", kind.manifest)
    assert result.code == 2
    assert "model.task is classification, but the model (Ridge) is a regressor" in result.err
    assert "set model.task: regression" in result.err and "Traceback" not in result.err


def test_what_the_pipeline_tolerates_opens_the_inputs_and_an_override_closes_one(
    tmp_path: Path, home: Path
) -> None:
    kind = KINDS["mixed"](tmp_path / "m")
    assert run_cpmai("package", kind.manifest).code == 0
    inputs = _inputs(home, "zoo-mixed")
    # OneHotEncoder(handle_unknown="ignore") after an imputer: open and nullable
    assert inputs["clinic"]["open"] is True and inputs["clinic"]["nullable"] is True
    # the numeric imputer: missing values are served; no encoder, so nothing to open
    assert inputs["age"]["nullable"] is True and "open" not in inputs["age"]

    text = kind.manifest.read_text()
    overridden = text.replace(
        "model:",
        "signature:\n  infer: true\n  overrides:\n"
        "    clinic: {categories: [north, south]}\n    bp: {nullable: false}\nmodel:",
    )
    kind.manifest.write_text(overridden.replace("name: zoo-mixed", "name: zoo-mixed-closed"))
    assert run_cpmai("package", kind.manifest).code == 0
    closed = _inputs(home, "zoo-mixed-closed")
    assert closed["clinic"]["categories"] == ["north", "south"] and "open" not in closed["clinic"]
    assert closed["bp"]["nullable"] is False and closed["age"]["nullable"] is True

    kind.manifest.write_text(overridden.replace("clinic:", "clinik:"))
    typo = run_cpmai("package", kind.manifest)
    assert typo.code == 2 and "signature.overrides: no input named 'clinik'" in typo.err


def test_an_input_opened_by_override_is_served_and_one_left_closed_is_refused(
    tmp_path: Path, home: Path
) -> None:
    """A pipeline that drops a column tolerates any value in it, but nothing in it says so:
    inference leaves the category closed; `categories: open` opens it."""
    import joblib
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline

    from cpmai.artifacts import open_artifact
    from cpmai.runtime.predictor import Predictor
    from cpmai.serving.validation import RequestError, Validator

    folder = tmp_path / "m"
    kind = KINDS["multiclass-forest"](folder)
    frame = pd.read_csv(folder / "data" / "reference.csv")
    frame["grade"] = [("a", "b", "c")[i % 3] for i in range(len(frame))]
    frame.to_csv(folder / "data" / "reference.csv", index=False)
    holdout = pd.read_csv(folder / "data" / "holdout.csv")
    holdout["grade"] = "b"
    holdout.to_csv(folder / "data" / "holdout.csv", index=False)
    features = [c for c in frame.columns if c not in ("y", "grade")]
    pick = ColumnTransformer([("keep", "passthrough", features)])  # `grade` is dropped
    model = Pipeline([("pick", pick), ("forest", RandomForestClassifier(n_estimators=5))])
    model.fit(frame[[*features, "grade"]], frame["y"])
    joblib.dump(model, folder / "model.joblib")
    assert run_cpmai("package", kind.manifest).code == 0
    assert _inputs(home, "zoo-multiclass-forest")["grade"].get("open") is None

    text = kind.manifest.read_text().replace("name: zoo-multiclass-forest", "name: zoo-open")
    kind.manifest.write_text(
        text.replace(
            "model:",
            "signature:\n  infer: true\n  overrides:\n    grade: {categories: open}\nmodel:",
        )
    )
    assert run_cpmai("package", kind.manifest).code == 0
    assert _inputs(home, "zoo-open")["grade"]["open"] is True
    row = {name: [float(frame[name].iloc[0])] for name in features}
    for name, expected in (("zoo-multiclass-forest", 422), ("zoo-open", 200)):
        predictor = Predictor.from_artifact(open_artifact(home, name))
        validator = Validator(predictor.inputs)
        try:
            columns, _, warnings = validator.columns({**row, "grade": ["z"]})
        except RequestError as exc:
            assert expected == exc.status == 422 and "'z' is not one of" in exc.message
            continue
        assert expected == 200 and warnings == ["grade: unseen category 'z'"]
        expected = model.predict(frame[[*features, "grade"]].head(1))
        assert predictor.run(columns)[0].tolist() == expected.tolist()


def test_an_mlflow_string_input_stays_a_category_but_takes_any_value(
    tmp_path: Path, home: Path
) -> None:
    kind = KINDS["mlflow"](tmp_path / "m")
    assert run_cpmai("package", kind.manifest).code == 0
    site = _inputs(home, "zoo-mlflow")["site"]
    assert site["type"] == "category" and site["categories"] == ["a", "b"] and site["open"]
    (signature,) = (home / "artifacts" / "zoo-mlflow").glob("*/signature.json")
    assert "and the MLflow signature" in json.loads(signature.read_text())["origin"]


def test_a_served_model_is_limited_to_its_replicas_cpu_share(tmp_path: Path, home: Path) -> None:
    """The server process that loads the model caps OpenMP/BLAS at `resources.cpu` (rounded up)
    or `serving.threads`: read back from the process with threadpoolctl."""
    import subprocess
    import sys

    kind = KINDS["hgb-classifier"](tmp_path / "m")
    text = kind.manifest.read_text().replace("  task:", "  runtime: sklearn\n  task:", 1)
    kind.manifest.write_text(
        text.replace("{target: local}", "{target: local, resources: {cpu: 0.5}}")
    )
    assert run_cpmai("package", kind.manifest).code == 0
    probe = f"""
import dataclasses, json, sys, threadpoolctl
from pathlib import Path
from cpmai.artifacts import open_artifact
from cpmai.serving.config import ServeConfig
from cpmai.serving.app import build_app
home = Path({str(home)!r})
artifact = open_artifact(home, "zoo-hgb-classifier")
config = ServeConfig(home=str(home), name=artifact.name, version=artifact.version,
                     env="staging", prediction_log=False).for_artifact(artifact)
if len(sys.argv) > 1:
    config = dataclasses.replace(config, threads=int(sys.argv[1]))  # serving.threads
app = build_app(config, artifact)
row = {{name: [0.5] for name in app.names}}
app.predictor.run(row)  # OpenMP is loaded by now
pools = threadpoolctl.threadpool_info()
print(json.dumps({{"threads": config.threads, "pools": [p["num_threads"] for p in pools],
                   "apis": sorted({{p["user_api"] for p in pools}})}}))
"""

    def probed(*args: str) -> dict[str, Any]:
        import os

        from cpmai.runtime.threads import VARIABLES

        env = {k: v for k, v in os.environ.items() if k not in VARIABLES}  # no limit but ours
        out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True,
                             text=True, check=True, env=env)  # fmt: skip
        found: dict[str, Any] = json.loads(out.stdout)
        return found

    found = probed()
    assert found["threads"] == 1 and "openmp" in found["apis"], found
    assert set(found["pools"]) == {1}, found
    assert set(probed("2")["pools"]) == {2}  # serving.threads, read back the same way
