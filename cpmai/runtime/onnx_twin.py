"""The ONNX fast path: convert a scikit-learn model at package time and keep the ONNX twin only
if it agrees with the original.

Agreement, on every reference and holdout row: classification labels identical and class
probabilities within `TOLERANCE` (absolute); regression values within `TOLERANCE` × max(1, |y|).

Tree ensembles: scikit-learn compares float32 features with float64 thresholds; ONNX Runtime
compares a double input with float32 thresholds. Near a threshold the two disagree (seen here:
0.2% of a 100-tree forest's labels). cpmai inserts a Cast to float32 before every tree-ensemble
node, which makes the comparison the same as scikit-learn's (labels then agree exactly).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

TOLERANCE = 1e-4
OPSET = {"": 17, "ai.onnx.ml": 3}
_TREE_OPS = {"TreeEnsembleClassifier", "TreeEnsembleRegressor", "TreeEnsemble"}


@dataclass
class Conversion:
    """What conversion gave: the ONNX bytes (None if it failed) and the evidence."""

    onnx: bytes | None
    input_mode: str = "columns"
    """`columns`: one [n, 1] input per feature; `matrix`: one [n, features] float input."""
    error: str | None = None
    parity: dict[str, Any] = field(default_factory=dict)

    @property
    def agrees(self) -> bool:
        return bool(self.parity.get("agrees"))


def convert(
    model: Any, inputs: list[dict[str, Any]], frames: list[pd.DataFrame], task: str
) -> Conversion:
    """Convert `model` (inputs as in signature.json) and compare it with the original on
    `frames` (reference and holdout, feature columns only)."""
    onnx_bytes, mode, error = _to_onnx(model, inputs)
    if onnx_bytes is None:
        return Conversion(None, error=error)
    result = Conversion(onnx_bytes, input_mode=mode)
    try:
        result.parity = _parity(model, onnx_bytes, mode, inputs, frames, task)
    except Exception as exc:  # the converted graph does not run: keep scikit-learn
        result.onnx, result.error = None, f"ONNX Runtime could not run the converted model: {exc}"
    return result


def _to_onnx(model: Any, inputs: list[dict[str, Any]]) -> tuple[bytes | None, str, str | None]:
    try:
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import (
            DoubleTensorType,
            Int64TensorType,
            StringTensorType,
        )
    except ImportError as exc:
        return None, "columns", f"skl2onnx is not installed ({exc})"

    def column_type(spec: dict[str, Any]) -> Any:
        if spec["type"] in ("integer", "number"):
            return DoubleTensorType([None, 1])
        if spec["type"] == "boolean":
            return Int64TensorType([None, 1])
        return StringTensorType([None, 1])

    options = _options(model)
    attempts = [("columns", [(s["name"], column_type(s)) for s in inputs])]
    if all(s["type"] in ("integer", "number") for s in inputs):
        attempts.append(("matrix", [("X", DoubleTensorType([None, len(inputs)]))]))
    errors = []
    for mode, initial_types in attempts:
        try:
            graph = to_onnx(model, initial_types=initial_types, options=options, target_opset=OPSET)
        except Exception as exc:  # skl2onnx raises many types for unsupported models
            errors.append(f"{mode}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            continue
        _cast_tree_inputs_to_float(graph)
        _sort_opsets(graph)
        return graph.SerializeToString(), mode, None
    return None, "columns", "skl2onnx could not convert the model (" + "; ".join(errors) + ")"


def _sort_opsets(graph: Any) -> None:
    """skl2onnx lists the opset domains in set order, which changes with the process's string
    hash seed: sort them so the same model always gives the same bytes (and the same digest)."""
    opsets = sorted(graph.opset_import, key=lambda o: o.domain)
    del graph.opset_import[:]
    graph.opset_import.extend(opsets)


def _options(model: Any) -> dict[Any, Any]:
    """Probabilities as a plain tensor (no ZipMap) for the final classifier."""
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    return {type(final): {"zipmap": False}} if hasattr(final, "predict_proba") else {}


def _cast_tree_inputs_to_float(graph: Any) -> None:
    from onnx import TensorProto, helper

    nodes = list(graph.graph.node)
    rebuilt = []
    for i, node in enumerate(nodes):
        if node.op_type in _TREE_OPS and node.input:
            cast_out = f"{node.input[0]}__cpmai_float_{i}"
            rebuilt.append(
                helper.make_node(
                    "Cast",
                    [node.input[0]],
                    [cast_out],
                    to=TensorProto.FLOAT,
                    name=f"cpmai_cast_{i}",
                )
            )
            node.input[0] = cast_out
        rebuilt.append(node)
    del graph.graph.node[:]
    graph.graph.node.extend(rebuilt)


def _parity(
    model: Any,
    onnx_bytes: bytes,
    mode: str,
    inputs: list[dict[str, Any]],
    frames: list[pd.DataFrame],
    task: str,
) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    from cpmai.runtime.predictor import OnnxRunner

    frame = pd.concat(frames, ignore_index=True)
    runner = OnnxRunner(onnx_bytes, inputs, mode)
    columns = {spec["name"]: frame[spec["name"]].to_numpy() for spec in inputs}
    labels, probabilities = runner.run(columns, want_proba=True)
    expected = np.asarray(model.predict(frame))
    report: dict[str, Any] = {"rows": len(frame), "tolerance": TOLERANCE}
    if task == "classification":
        equal = labels.astype(str) == expected.astype(str)
        report["labels_equal"] = round(float(equal.mean()), 6)
        report["agrees"] = bool(equal.all())
        if probabilities is not None and hasattr(model, "predict_proba"):
            diff = float(np.abs(probabilities - model.predict_proba(frame)).max())
            report["max_probability_diff"] = diff
            report["agrees"] = report["agrees"] and diff <= TOLERANCE
    else:
        scale = np.maximum(1.0, np.abs(expected.astype(float)))
        diff = float((np.abs(labels.astype(float).ravel() - expected.ravel()) / scale).max())
        report["max_relative_diff"] = diff
        report["agrees"] = diff <= TOLERANCE
    return report
