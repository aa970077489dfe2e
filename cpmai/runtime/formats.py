"""Loading models in the formats cpmai accepts: joblib, pickle, skops, ONNX, MLflow model folders,
and XGBoost / LightGBM files in their libraries' own formats.

Loading a pickle or joblib file runs code from the file. cpmai loads a user's own file when
packaging it, and afterwards only artifacts whose bytes match the digest in the ledger.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cpmai.errors import ModelLoadError

_EXTENSIONS = {
    ".joblib": "joblib",
    ".jbl": "joblib",
    ".pkl": "pickle",
    ".pickle": "pickle",
    ".skops": "skops",
    ".onnx": "onnx",
    ".json": "xgboost",
    ".ubj": "xgboost",
    ".txt": "lightgbm",
}
_EXTRAS = {"xgboost": "xgboost", "lightgbm": "lightgbm"}
"""Formats whose library is an optional extra: `pip install 'cpmai[NAME]'`."""


@dataclass
class LoadedModel:
    """A model ready to predict. `flavor` is how it runs: `sklearn` (a Python object with
    `predict`) or `onnx` (an ONNX Runtime session)."""

    obj: Any
    format: str
    flavor: str
    source: Path
    declared_inputs: list[dict[str, Any]] | None = None
    """Inputs the file itself declares (ONNX graph inputs, an MLflow signature)."""
    info: dict[str, Any] = field(default_factory=dict)


def detect_format(path: Path, declared: str = "auto") -> str:
    """The format of `path`: as declared, else from the MLmodel file or the extension."""
    if declared != "auto":
        return declared
    if path.is_dir():
        if (path / "MLmodel").is_file():
            return "mlflow"
        raise ModelLoadError(
            f"{path}: a folder without an MLmodel file",
            hint="point model.path at the model file, or at an MLflow model folder",
        )
    fmt = _EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(_EXTENSIONS))
        raise ModelLoadError(
            f"{path.name}: cannot tell the model format from the extension (known: {known})",
            hint="set model.format in the manifest",
        )
    return fmt


def load(path: Path, fmt: str, *, trusted_types: list[str] | None = None) -> LoadedModel:
    """Load the model at `path` in format `fmt`. Raises ModelLoadError with the reason."""
    try:
        if fmt == "joblib":
            import joblib

            return LoadedModel(joblib.load(path), fmt, "sklearn", path)
        if fmt == "pickle":
            import pickle

            with path.open("rb") as handle:
                return LoadedModel(pickle.load(handle), fmt, "sklearn", path)
        if fmt == "skops":
            return LoadedModel(_load_skops(path, trusted_types or []), fmt, "sklearn", path)
        if fmt == "onnx":
            return _load_onnx(path)
        if fmt == "mlflow":
            return _load_mlflow(path, trusted_types or [])
        if fmt == "xgboost":
            from cpmai.runtime.boosters import load_xgboost

            return LoadedModel(load_xgboost(path), fmt, "sklearn", path)
        if fmt == "lightgbm":
            from cpmai.runtime.boosters import load_lightgbm

            return LoadedModel(load_lightgbm(path), fmt, "sklearn", path)
    except ModelLoadError:
        raise
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get(fmt)
        raise ModelLoadError(
            f"{path.name}: the model needs the Python package {exc.name!r}, which is not installed",
            hint=f"pip install 'cpmai[{extra}]'" if extra else f"pip install {exc.name}",
        ) from None
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path}: file not found: {exc.filename}") from None
    except Exception as exc:  # any unpickling error: the file is not what it claims to be
        raise ModelLoadError(
            f"{path.name}: cannot load as {fmt}: {type(exc).__name__}: {exc}"
        ) from None
    raise ModelLoadError(f"unknown model format {fmt!r}")


def _load_skops(path: Path, trusted: list[str]) -> Any:
    import skops.io

    untrusted = [t for t in skops.io.get_untrusted_types(file=path) if t not in trusted]
    if untrusted:
        listing = "\n".join(f"  - {t}" for t in untrusted)
        raise ModelLoadError(
            f"{path.name}: the skops file holds types you have not trusted:\n{listing}",
            hint="if you trust them, list them under model.trusted_types in the manifest",
        )
    return skops.io.load(path, trusted=trusted)


_ONNX_TYPES = {
    "tensor(float)": "number",
    "tensor(double)": "number",
    "tensor(float16)": "number",
    "tensor(int64)": "integer",
    "tensor(int32)": "integer",
    "tensor(string)": "string",
    "tensor(bool)": "boolean",
}


def _load_onnx(path: Path) -> LoadedModel:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    inputs = [
        {
            "name": i.name,
            "type": _ONNX_TYPES.get(i.type, "number"),
            "onnx_type": i.type,
            "shape": [d if isinstance(d, int) else -1 for d in i.shape],
        }
        for i in session.get_inputs()
    ]
    outputs = [o.name for o in session.get_outputs()]
    info: dict[str, Any] = {
        "onnx_outputs": outputs,
        "classes": _onnx_classes(path),
        "probabilities": len(outputs) > 1,
    }
    return LoadedModel(session, "onnx", "onnx", path, declared_inputs=inputs, info=info)


def _onnx_classes(path: Path) -> list[Any] | None:
    """The class labels a classifier graph holds (its ZipMap's, else its classifier node's),
    in the order of its probability columns; None for a regressor or a graph without them."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    found: dict[str, list[Any]] = {}
    for node in graph.node:
        for attr in node.attribute:
            if attr.name in ("classlabels_int64s", "classlabels_ints") and attr.ints:
                found.setdefault(node.op_type, [int(v) for v in attr.ints])
            elif attr.name == "classlabels_strings" and attr.strings:
                found.setdefault(node.op_type, [v.decode("utf-8") for v in attr.strings])
    if "ZipMap" in found:
        return found["ZipMap"]
    return next(iter(found.values()), None)


_MLFLOW_TYPES = {
    "double": "number",
    "float": "number",
    "long": "integer",
    "integer": "integer",
    "boolean": "boolean",
    "string": "string",
}


def read_mlmodel(folder: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load((folder / "MLmodel").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{folder / 'MLmodel'}: cannot read: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("flavors"), dict):
        raise ModelLoadError(f"{folder / 'MLmodel'}: no flavors: not an MLflow model")
    return data


def _load_mlflow(folder: Path, trusted: list[str]) -> LoadedModel:
    """Read an MLflow model folder without MLflow: the sklearn and onnx flavours."""
    mlmodel = read_mlmodel(folder)
    flavors = mlmodel["flavors"]
    declared = _mlflow_inputs(mlmodel)
    if "sklearn" in flavors:
        flavor = flavors["sklearn"] or {}
        file = folder / str(flavor.get("pickled_model", "model.pkl"))
        serialization = str(flavor.get("serialization_format", "cloudpickle"))
        if serialization == "skops":
            obj = _load_skops(file, trusted + list(flavor.get("skops_trusted_types") or []))
        else:
            import pickle

            with file.open("rb") as handle:
                obj = pickle.load(handle)
        return LoadedModel(
            obj,
            "mlflow",
            "sklearn",
            folder,
            declared_inputs=declared,
            info={"mlflow_flavor": "sklearn", "serialization": serialization},
        )
    if "onnx" in flavors:
        loaded = _load_onnx(folder / str((flavors["onnx"] or {}).get("data", "model.onnx")))
        loaded.format, loaded.source = "mlflow", folder
        loaded.info["mlflow_flavor"] = "onnx"
        loaded.declared_inputs = declared or loaded.declared_inputs
        return loaded
    raise ModelLoadError(
        f"{folder.name}: MLflow flavours {sorted(flavors)} are not supported (sklearn, onnx are)"
    )


def _mlflow_inputs(mlmodel: dict[str, Any]) -> list[dict[str, Any]] | None:
    signature = mlmodel.get("signature") or {}
    raw = signature.get("inputs")
    if not raw:
        return None
    try:
        specs = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return None
    inputs = []
    for spec in specs:
        if not isinstance(spec, dict) or "name" not in spec:
            return None  # a tensor signature: no column names to check against
        inputs.append(
            {
                "name": str(spec["name"]),
                "type": _MLFLOW_TYPES.get(str(spec.get("type")), "string"),
                "nullable": not spec.get("required", True),
            }
        )
    return inputs
