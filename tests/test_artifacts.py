"""Packaging: immutable hashed artifacts, versions, formats, and refusing tampered bytes."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from cpmai import artifacts
from cpmai.errors import IntegrityError, ModelLoadError, UsageError
from cpmai.fsutil import sha256_file
from cpmai.integrity import verify as verify_home
from cpmai.ledger import Ledger
from cpmai.manifest_file import load_manifest
from cpmai.runtime.signature import Signature
from cpmai.versioning import next_version, version_key
from cpmai.yamlsource import parse_yaml


def package(manifest: Path, home: Path) -> artifacts.PackageResult:
    return artifacts.package(load_manifest(manifest), home, actor="tester@example.com")


def edit_manifest(path: Path, **changes: Any) -> None:
    data = parse_yaml(path.read_text(), path).data  # YAML 1.2 booleans: `on:` stays a key
    for dotted, value in changes.items():
        node = data
        keys = dotted.split("__")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_package_builds_a_complete_hashed_artifact(churn: Path, home: Path) -> None:
    result = package(churn, home)
    assert (result.name, result.version, result.created) == ("churn-classifier", "1.0.0", True)
    folder = home / "artifacts" / "churn-classifier" / "1.0.0"
    assert result.path == folder
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert names == [
        "MODEL_CARD.md",
        "artifact.json",
        "data/holdout.csv",
        "data/reference.csv",
        "environment.json",
        "manifest.yaml",
        "model/model.joblib",
        "model/twin.onnx",
        "runtime.json",
        "signature.json",
    ]
    meta = json.loads((folder / "artifact.json").read_text())
    assert meta["digest"] == result.digest == artifacts.digest_of(meta["files"])
    for rel, digest in meta["files"].items():
        assert sha256_file(folder / rel) == digest
    assert sha256_file(folder / "model/model.joblib") == sha256_file(churn.parent / "model.joblib")

    signature = json.loads((folder / "signature.json").read_text())
    inputs = {spec["name"]: spec for spec in signature["inputs"]}
    assert "churned" not in inputs
    assert inputs["tenure_months"]["type"] == "integer"
    assert inputs["tenure_months"]["min"] >= 0 and inputs["tenure_months"]["max"] <= 72
    assert inputs["monthly_charges"]["type"] == "number"
    assert inputs["plan"] == {
        "name": "plan",
        "type": "category",
        "categories": ["basic", "premium", "standard"],
        "nullable": False,
        "open": True,  # the pipeline's OneHotEncoder(handle_unknown="ignore") encodes others
    }
    assert signature["outputs"][0]["categories"] == [0, 1]
    assert signature["outputs"][1] == {"name": "probabilities", "type": "number", "shape": [-1, 2]}
    typed = artifacts.open_artifact(home, "churn-classifier").signature
    assert typed.dumps() == (folder / "signature.json").read_text()  # the one writer's bytes
    assert typed.names == list(inputs) and typed.classes == [0, 1] and typed.target == "churned"
    plan = next(spec for spec in typed.inputs if spec.name == "plan")
    assert plan.type == "category" and plan.open and not plan.nullable

    environment = json.loads((folder / "environment.json").read_text())
    assert {"scikit-learn", "numpy", "joblib"} <= set(environment["packages"])
    import sklearn

    assert environment["packages"]["scikit-learn"] == sklearn.__version__
    card = (folder / "MODEL_CARD.md").read_text()
    assert "# Model card: churn-classifier" in card and "| plan | category |" in card

    resolved = load_manifest(folder / "manifest.yaml")  # self-contained: its paths resolve inside
    assert resolved.model.path == "model/model.joblib"
    assert resolved.version is None

    [event] = Ledger(home).events()
    assert (event.action, event.version, event.details["digest"]) == (
        "package",
        "1.0.0",
        result.digest,
    )
    assert not list((home / "tmp").iterdir()), "the build folder is cleaned up"


def test_same_bytes_are_recognised(churn: Path, home: Path) -> None:
    first = package(churn, home)
    again = package(churn, home)
    assert (again.version, again.digest, again.created) == ("1.0.0", first.digest, False)
    assert len(Ledger(home).events()) == 1


def test_unchanged_sources_skip_the_build_and_any_change_rebuilds(churn: Path, home: Path) -> None:
    first = package(churn, home)
    again = package(churn, home)  # same manifest, model, data and environment: no build at all
    assert [s.name for s in again.steps] == ["fingerprint sources"]
    assert (again.version, again.digest, again.created) == ("1.0.0", first.digest, False)
    holdout = churn.parent / "data" / "holdout.csv"
    holdout.write_text(holdout.read_text() + holdout.read_text().splitlines()[1] + "\n")
    changed = package(churn, home)
    assert "load model" in [s.name for s in changed.steps]
    assert (changed.version, changed.created) == ("1.1.0", True)
    os.chmod(changed.path / "MODEL_CARD.md", 0o644)
    (changed.path / "MODEL_CARD.md").write_text("edited")  # a damaged artifact is not reused
    assert "load model" in [s.name for s in package(churn, home).steps]


@pytest.mark.slow
def test_the_onnx_twin_is_byte_identical_whatever_the_hash_seed(
    churn: Path, tmp_path: Path
) -> None:
    digests = set()
    for seed in ("1", "2", "3", "4", "5"):  # unsorted, 5 seeds agree by chance 1 time in 16
        home = tmp_path / f"state-{seed}"
        subprocess.run(
            [sys.executable, "-m", "cpmai", "--home", str(home), "package", str(churn)],
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
            capture_output=True,
        )
        digests.add(
            sha256_file(home / "artifacts" / "churn-classifier" / "1.0.0" / "model" / "twin.onnx")
        )
    assert len(digests) == 1  # skl2onnx's opset list came out in set order before cpmai sorted it


def test_changed_content_gets_the_next_version(churn: Path, home: Path) -> None:
    package(churn, home)
    edit_manifest(churn, description="retrained")
    second = package(churn, home)
    assert (second.version, second.created) == ("1.1.0", True)
    edit_manifest(churn, version="2.0.0", description="major")
    assert package(churn, home).version == "2.0.0"
    edit_manifest(churn, version=None, description="after the pin")
    assert package(churn, home).version == "2.1.0"


def test_a_pinned_version_is_immutable(churn: Path, home: Path) -> None:
    edit_manifest(churn, version="1.2.0")
    package(churn, home)
    edit_manifest(churn, description="different content, same version")
    with pytest.raises(UsageError, match=r"1\.2\.0 is already packaged with different content"):
        package(churn, home)


def test_semver_ordering() -> None:
    ordered = ["1.0.0-rc.1", "1.0.0", "1.2.0", "1.10.0", "2.0.0"]
    assert sorted(["2.0.0", "1.10.0", "1.0.0", "1.2.0", "1.0.0-rc.1"], key=version_key) == ordered
    assert next_version([]) == "1.0.0"
    assert next_version(["1.9.0", "1.10.0"]) == "1.11.0"


def test_verify_names_a_changed_model_byte(churn: Path, home: Path) -> None:
    result = package(churn, home)
    model = result.path / "model" / "model.joblib"
    os.chmod(model, 0o644)
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    report = verify_home(home)
    assert not report.ok
    assert report.artifact_problems == [
        "artifacts/churn-classifier/1.0.0/model/model.joblib: content changed (SHA-256 differs)"
    ]


def test_verify_names_an_added_or_missing_file(churn: Path, home: Path) -> None:
    result = package(churn, home)
    (result.path / "extra.py").write_text("print('hi')")
    os.chmod(result.path / "MODEL_CARD.md", 0o644)
    (result.path / "MODEL_CARD.md").unlink()
    problems = verify_home(home).artifact_problems
    assert problems == [
        "artifacts/churn-classifier/1.0.0/MODEL_CARD.md: missing",
        "artifacts/churn-classifier/1.0.0/extra.py: not part of the artifact (added later?)",
    ]


def test_rewriting_artifact_json_does_not_hide_a_swap(churn: Path, home: Path) -> None:
    """An attacker who swaps the model and rewrites artifact.json still loses to the ledger."""
    result = package(churn, home)
    folder = result.path
    for path in folder.rglob("*"):
        if path.is_file():
            os.chmod(path, 0o644)
    (folder / "model/model.joblib").write_bytes(pickle.dumps({"not": "the model"}))
    meta = json.loads((folder / "artifact.json").read_text())
    meta["files"]["model/model.joblib"] = sha256_file(folder / "model/model.joblib")
    meta["digest"] = artifacts.digest_of(meta["files"])
    (folder / "artifact.json").write_text(json.dumps(meta))
    problems = verify_home(home).artifact_problems
    assert problems == [
        "artifacts/churn-classifier/1.0.0/artifact.json: file list does not match the recorded "
        "digest"
    ]


class _Boom:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.marker),))


def test_a_tampered_artifact_is_refused_before_it_is_unpickled(
    churn: Path, home: Path, tmp_path: Path
) -> None:
    result = package(churn, home)
    marker = tmp_path / "code-ran"
    model = result.path / "model" / "model.joblib"
    os.chmod(model, 0o644)
    model.write_bytes(pickle.dumps(_Boom(str(marker))))
    with pytest.raises(IntegrityError, match=r"refusing to load churn-classifier 1\.0\.0") as info:
        artifacts.open_artifact(home, "churn-classifier", "1.0.0").load_model()
    assert "model/model.joblib: content changed" in str(info.value)
    assert not marker.exists(), "the tampered pickle must not have been loaded"
    # the same payload really does run code when loaded (so the check above means something)
    pickle.loads(model.read_bytes())
    assert marker.exists()


def test_an_intact_artifact_opens_and_predicts(churn: Path, home: Path) -> None:
    package(churn, home)
    artifact = artifacts.open_artifact(home, "churn-classifier")
    from cpmai.runtime.predictor import Predictor

    frame = pd.read_csv(artifact.path / "data" / "holdout.csv").head(50)
    for runtime in ("sklearn", "onnx"):
        predictor = Predictor.from_artifact(artifact, runtime=runtime)
        columns = {name: frame[name].tolist() for name in predictor.signature.names}
        labels, _ = predictor.run(columns)
        assert len(labels) == 50 and set(np.unique(labels)) <= {0, 1}


def test_unknown_name_and_version_are_usage_errors(churn: Path, home: Path) -> None:
    package(churn, home)
    with pytest.raises(UsageError, match="no model named 'nope'"):
        artifacts.open_artifact(home, "nope")
    with pytest.raises(UsageError, match=r"has no version 9\.9\.9 \(versions: 1\.0\.0\)"):
        artifacts.open_artifact(home, "churn-classifier", "9.9.9")


def test_a_failed_package_leaves_nothing_behind(churn: Path, home: Path) -> None:
    (churn.parent / "model.joblib").write_bytes(b"definitely not a pickle")
    with pytest.raises(ModelLoadError, match="cannot load as joblib"):
        package(churn, home)
    assert not (home / "artifacts").exists()
    assert not list((home / "tmp").iterdir())
    assert Ledger(home).events() == []


def test_a_model_that_cannot_predict_on_the_reference_is_refused(churn: Path, home: Path) -> None:
    reference = churn.parent / "data" / "reference.csv"
    frame = pd.read_csv(reference)
    frame["plan"] = 3.5  # the pipeline's one-hot encoder expects strings here
    frame.drop(columns=["region"]).to_csv(reference, index=False)
    with pytest.raises(ModelLoadError, match="cannot predict on 100 rows"):
        package(churn, home)


# --- other formats --------------------------------------------------------------------------


def _numeric_setup(folder: Path) -> tuple[Any, pd.DataFrame]:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(300, 3)), columns=["a", "b", "c"])
    frame["y"] = (frame["a"] + frame["b"] > 0).astype(int)
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "ref.csv", index=False)
    model = LogisticRegression().fit(frame[["a", "b", "c"]], frame["y"])
    return model, frame


def _manifest(folder: Path, model_path: str, *, extra: str = "", reference: bool = True) -> Path:
    data = "data: {reference: ref.csv, target: y}\n" if reference else ""
    path = folder / "cpmai.yaml"
    path.write_text(
        f"name: numeric\nmodel: {{path: {model_path}, task: classification}}\n{data}{extra}"
    )
    return path


def test_pickle_format(tmp_path: Path, home: Path) -> None:
    model, _ = _numeric_setup(tmp_path)
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(model))
    result = package(_manifest(tmp_path, "model.pkl"), home)
    assert result.format == "pickle"
    loaded = artifacts.open_artifact(home, "numeric").load_model()
    assert loaded.flavor == "sklearn"


def test_skops_format_and_trusted_types(tmp_path: Path, home: Path) -> None:
    import skops.io
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    model, frame = _numeric_setup(tmp_path)
    skops.io.dump(model, tmp_path / "model.skops")
    assert package(_manifest(tmp_path, "model.skops"), home).format == "skops"

    import operator

    custom = make_pipeline(FunctionTransformer(operator.neg), model).fit(
        frame[["a", "b", "c"]], frame["y"]
    )
    skops.io.dump(custom, tmp_path / "custom.skops")
    untrusted = skops.io.get_untrusted_types(file=tmp_path / "custom.skops")
    assert untrusted, "the custom pipeline should hold a type skops does not trust by default"
    with pytest.raises(ModelLoadError, match="holds types you have not trusted") as info:
        package(_manifest(tmp_path, "custom.skops"), home)
    assert untrusted[0] in str(info.value)
    extra = "  trusted_types: [" + ", ".join(untrusted) + "]\n"
    path = tmp_path / "cpmai.yaml"
    path.write_text(
        "name: numeric\nmodel:\n  path: custom.skops\n  task: classification\n"
        + extra
        + "data: {reference: ref.csv, target: y}\n"
    )
    result = package(path, home)
    assert result.format == "skops" and result.created
    assert artifacts.open_artifact(home, "numeric", result.version).load_model().obj is not None


def test_onnx_format_declares_its_own_inputs(tmp_path: Path, home: Path) -> None:
    from skl2onnx import to_onnx

    model, frame = _numeric_setup(tmp_path)
    onx = to_onnx(model, frame[["a", "b", "c"]].to_numpy()[:1].astype(np.float32), target_opset=17)
    (tmp_path / "model.onnx").write_bytes(onx.SerializeToString())
    result = package(_manifest(tmp_path, "model.onnx"), home)  # checked against ref.csv
    assert result.format == "onnx"
    environment = json.loads((result.path / "environment.json").read_text())
    assert "onnxruntime" in environment["packages"]
    shutil.rmtree(home)
    result = package(_manifest(tmp_path, "model.onnx", reference=False), home)
    signature = json.loads((result.path / "signature.json").read_text())
    assert signature["origin"] == "declared by the onnx file"
    assert signature["inputs"] == [{"name": "X", "type": "number", "nullable": False}]
    typed = Signature.load(result.path)
    assert typed.dumps() == (result.path / "signature.json").read_text()


def test_mlflow_model_folder_without_mlflow(tmp_path: Path, home: Path) -> None:
    model, _ = _numeric_setup(tmp_path)
    folder = tmp_path / "mlflow_model"
    folder.mkdir()
    (folder / "model.pkl").write_bytes(pickle.dumps(model))
    (folder / "MLmodel").write_text(textwrap_mlmodel())
    (folder / "requirements.txt").write_text("scikit-learn\n")
    result = package(_manifest(tmp_path, "mlflow_model", reference=False), home)
    assert result.format == "mlflow"
    assert "model/MLmodel" in result.files and "model/model.pkl" in result.files
    signature = json.loads((result.path / "signature.json").read_text())
    assert signature["origin"] == "declared by the mlflow file"
    assert [s["name"] for s in signature["inputs"]] == ["a", "b", "c"]
    loaded = artifacts.open_artifact(home, "numeric").load_model()
    assert loaded.info["mlflow_flavor"] == "sklearn"


def textwrap_mlmodel() -> str:
    cols = [{"type": "double", "name": n, "required": True} for n in "abc"]
    return yaml.safe_dump(
        {
            "artifact_path": "model",
            "flavors": {
                "python_function": {
                    "loader_module": "mlflow.sklearn",
                    "model_path": "model.pkl",
                    "python_version": "3.11.7",
                },
                "sklearn": {
                    "pickled_model": "model.pkl",
                    "serialization_format": "cloudpickle",
                    "sklearn_version": "1.9.1",
                },
            },
            "signature": {"inputs": json.dumps(cols), "outputs": '[{"type": "long"}]'},
        }
    )


def test_unknown_extension_needs_a_format(tmp_path: Path, home: Path) -> None:
    model, _ = _numeric_setup(tmp_path)
    (tmp_path / "model.bin").write_bytes(pickle.dumps(model))
    with pytest.raises(ModelLoadError, match="cannot tell the model format"):
        package(_manifest(tmp_path, "model.bin"), home)
    path = _manifest(tmp_path, "model.bin")
    path.write_text(
        path.read_text().replace("task: classification", "task: classification, format: pickle")
    )
    assert package(path, home).format == "pickle"


def test_a_deleted_artifact_is_restored_by_packaging_the_same_bytes(
    churn: Path, home: Path
) -> None:
    first = package(churn, home)
    shutil.rmtree(first.path)
    assert not verify_home(home).ok
    again = package(churn, home)
    assert (again.version, again.digest, again.created) == ("1.0.0", first.digest, True)
    assert [e.action for e in Ledger(home).events()] == ["package", "restore"]
    assert verify_home(home).ok


def test_build_folders_of_killed_packagers_are_removed(churn: Path, home: Path) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    abandoned = home / "tmp" / f"build-{proc.pid}-deadbeef"
    (abandoned / "model").mkdir(parents=True)
    alive = home / "tmp" / f"build-{os.getpid()}-cafecafe"
    alive.mkdir(parents=True)
    package(churn, home)
    assert not abandoned.exists()
    assert alive.exists(), "a build of a running process is left alone"


@pytest.mark.slow
def test_concurrent_packaging_assigns_distinct_versions(
    churn: Path, home: Path, tmp_path: Path
) -> None:
    """Two processes packaging different content at once: the version is chosen under the
    ledger lock, so they get 1.0.0 and 1.1.0 (never the same one twice)."""
    other = tmp_path / "other"
    shutil.copytree(churn.parent, other)
    edit_manifest(other / "cpmai.yaml", description="a different build")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cpmai", "--json", "package", str(m)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for m in (churn, other / "cpmai.yaml")
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    assert sorted(r["version"] for r in results) == ["1.0.0", "1.1.0"]
    assert len({r["digest"] for r in results}) == 2
    assert verify_home(home).ok
