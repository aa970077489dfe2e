"""The ONNX fast path: convert a scikit-learn model at package time and keep the ONNX twin only
if it agrees with the original.

Agreement, on every reference and holdout row: classification labels identical and class
probabilities within `TOLERANCE` (absolute); regression values within `TOLERANCE` × max(1, |y|).

Candidates, in order (the first that agrees is kept): inputs as one matrix (all-numeric inputs)
or one per column, and numbers as `double`, `double-exact` or `float`.
- `double`: scikit-learn's forests compare float32 features with float64 thresholds; ONNX Runtime
  compares a double input with float32 thresholds. Near a threshold the two disagree (seen here:
  0.2% of a 100-tree forest's labels). cpmai inserts a Cast to float32 before every tree-ensemble
  node, which makes the comparison the same as scikit-learn's (labels then agree exactly).
- `double-exact`: no such cast, for trees that compare in float64 (HistGradientBoosting).
- `float`: float32 inputs, for converters that only have float kernels (ONNX's Imputer).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from cpmai.manifest import InputSpec

TOLERANCE = 1e-4
OPSET = {"": 17, "ai.onnx.ml": 3}
_TREE_OPS = {"TreeEnsembleClassifier", "TreeEnsembleRegressor", "TreeEnsemble"}


@dataclass
class Conversion:
    """What conversion gave: the ONNX bytes (None if no graph ran) and the evidence."""

    onnx: bytes | None
    input_mode: str = "columns"
    """`columns`: one [n, 1] input per feature; `matrix`: one [n, features] float input."""
    precision: str = "double"
    """The floating-point type the graph takes numbers in: `double` or `float`."""
    graph_inputs: dict[str, str] = field(default_factory=dict)
    """Column name → the graph's input name, where they differ (names with spaces, dots...)."""
    error: str | None = None
    parity: dict[str, Any] = field(default_factory=dict)
    attempts: list[str] = field(default_factory=list)
    """Why each earlier candidate was not kept."""

    @property
    def agrees(self) -> bool:
        return bool(self.parity.get("agrees"))


def convert(
    model: Any,
    inputs: list[InputSpec],
    frames: list[pd.DataFrame],
    task: str,
    *,
    call: str = "frame",
) -> Conversion:
    """Convert `model` (inputs as in signature.json) and compare it with the original on
    `frames` (reference and holdout, feature columns only).

    Candidates are tried in the order of the module's docstring, and the first whose parity
    holds is kept. With no data to compare on, the first graph that converts is kept (and not
    used: see `cpmai.runtime.inspection.choose_runtime`)."""
    prepared = _prepare(model, inputs)
    if isinstance(prepared, str):
        return Conversion(None, error=prepared, attempts=[prepared])
    candidates = _candidates(inputs)
    notes: list[str] = []
    fallback: Conversion | None = None
    original: _Original | None = None
    if frames:
        try:
            original = _Original.of(model, inputs, frames, call)
        except Exception as exc:  # the model itself fails on its own reference/holdout rows
            why = (
                f"the model itself cannot predict on the reference/holdout rows: {_first_line(exc)}"
            )
            return Conversion(None, error=why, attempts=[why])
    for mode, precision in candidates:
        onnx_bytes, error = _to_onnx(prepared, inputs, mode, precision)
        label = f"{mode}/{precision}"
        if onnx_bytes is None:
            notes.append(f"{label}: {error}")
            continue
        result = Conversion(onnx_bytes, input_mode=mode, precision=precision)
        try:
            result.graph_inputs = _graph_inputs(onnx_bytes, inputs, mode)
            if original is None:
                result.attempts = notes
                return result
            result.parity = _parity(original, result, inputs, task)
        except Exception as exc:  # the converted graph does not run
            notes.append(f"{label}: ONNX Runtime could not run it: {_first_line(exc)}")
            continue
        if result.agrees:
            result.attempts = notes
            return result
        notes.append(f"{label}: disagrees ({parity_text(result.parity)})")
        fallback = fallback or result
    if fallback is not None:
        fallback.attempts = notes
        return fallback
    return Conversion(None, error="; ".join(notes) or "no conversion was attempted", attempts=notes)


def _candidates(inputs: list[InputSpec]) -> list[tuple[str, str]]:
    numeric = all(s.type in ("integer", "number") for s in inputs)
    # all numbers: one matrix input first (one tensor to feed is faster: docs/performance.md),
    # one input per column for the converters that need names
    modes = ["matrix", "columns"] if numeric else ["columns"]
    precisions = ("double", "double-exact", "float")
    return [(mode, precision) for precision in precisions for mode in modes]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def parity_text(parity: dict[str, Any]) -> str:
    """One line of parity evidence: rows compared, labels equal, largest differences."""
    if not parity:
        return "not compared (no data)"
    parts = [f"{parity['rows']} rows"]
    if "shape" in parity:
        parts.append(f"output shapes differ: {parity['shape']}")
    if "labels_equal" in parity:
        parts.append(f"labels equal {parity['labels_equal']:.2%}")
    for key in ("max_probability_diff", "max_relative_diff"):
        if key in parity:
            parts.append(
                f"{key.replace('_', ' ')} {parity[key]:.2g} (tolerance {parity['tolerance']:g})"
            )
    return ", ".join(parts)


@dataclass
class _Prepared:
    """What every candidate converts: the object (a copy where needed) and skl2onnx options."""

    model: Any
    options: dict[Any, Any]


def _prepare(model: Any, inputs: list[InputSpec]) -> _Prepared | str:
    """Done once per conversion; a string says why the model cannot be converted at all."""
    try:
        import skl2onnx  # noqa: F401
    except ImportError as exc:
        return f"skl2onnx is not installed ({exc})"
    try:
        model = _for_conversion(model)
        _register_boosters(model)
        _patch_tree_attributes()
        options = _options(model)
    except Exception as exc:  # an odd model object, or a converter library that changed
        return f"cannot prepare the conversion: {_first_line(exc)}"
    if any(s.type == "string" for s in inputs):
        # ONNX Runtime's StringNormalizer defaults to en_US.UTF-8, absent from many machines
        # (containers especially); C.UTF-8 is always there. Parity checks the result.
        options.update(
            {id(part): {"locale": "C.UTF-8"} for part in _parts(model) if _is_vectorizer(part)}
        )
    return _Prepared(model, options)


def _to_onnx(
    prepared: _Prepared, inputs: list[InputSpec], mode: str, precision: str
) -> tuple[bytes | None, str | None]:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import (
        DoubleTensorType,
        FloatTensorType,
        Int64TensorType,
        StringTensorType,
    )

    model = prepared.model
    number = FloatTensorType if precision == "float" else DoubleTensorType

    def column_type(spec: InputSpec) -> Any:
        if spec.type in ("integer", "number"):
            return number([None, 1])
        if spec.type == "boolean":
            return Int64TensorType([None, 1])
        return StringTensorType([None, 1])

    if mode == "matrix":
        initial_types = [("X", number([None, len(inputs)]))]
    else:
        initial_types = [(s.name, column_type(s)) for s in inputs]
    try:
        if hasattr(model, "to_onnx"):  # a native booster file (cpmai.runtime.boosters)
            graph = model.to_onnx(initial_types, OPSET)
        else:
            graph = to_onnx(
                model, initial_types=initial_types, options=prepared.options, target_opset=OPSET
            )
    except Exception as exc:  # skl2onnx raises many types for unsupported models
        return None, _first_line(exc)
    _cast_around_trees(
        graph, inputs_to_float=precision == "double", outputs_to_double=precision != "float"
    )
    _sort_opsets(graph)
    return graph.SerializeToString(), None


def _for_conversion(model: Any) -> Any:
    """The object to convert, a copy where the original would not convert as it is:
    - XGBoost models fitted on a DataFrame lose their feature names (onnxmltools reads only
      `f0`, `f1`...; the inputs stay in column order);
    - a SimpleImputer of strings that looks for NaN looks for "" instead (skl2onnx converts
      string imputers only for a string marker; OnnxRunner feeds missing strings as "").
    Parity with the original decides whether the copy is faithful."""
    import copy

    if not any(_needs_change(part) for part in _parts(model)):
        return model
    model = copy.deepcopy(model)
    for part in _parts(model):
        if _named_xgboost(part):
            part.get_booster().feature_names = None
        elif _nan_string_imputer(part):
            part.missing_values = ""
    return model


def _needs_change(part: Any) -> bool:
    return _named_xgboost(part) or _nan_string_imputer(part)


def _named_xgboost(part: Any) -> bool:
    return type(part).__module__.startswith("xgboost") and bool(
        getattr(part.get_booster(), "feature_names", None)
    )


def _nan_string_imputer(part: Any) -> bool:
    if type(part).__name__ != "SimpleImputer" or not hasattr(part, "statistics_"):
        return False
    missing = part.missing_values
    return part.statistics_.dtype == object and isinstance(missing, float) and missing != missing


def _graph_inputs(onnx_bytes: bytes, inputs: list[InputSpec], mode: str) -> dict[str, str]:
    """Column → graph input where skl2onnx renamed it (it makes names identifier-safe); the
    graph keeps the inputs in the order they were declared."""
    if mode != "columns":
        return {}
    import onnx

    names = [i.name for i in onnx.load_from_string(onnx_bytes).graph.input]
    return {s.name: g for s, g in zip(inputs, names, strict=True) if s.name != g}


_PATCH_LOCK = threading.Lock()
_PATCHED: list[bool] = []


def _patch_tree_attributes() -> None:
    """skl2onnx (1.20) passes a Python bool as `nodes_missing_value_tracks_true` for the leaves of
    HistGradientBoosting trees, which protobuf 5+ refuses in an int list ("Expected an int, got
    a boolean"): every HistGradientBoosting model then fails to convert. Coerce it to int (only
    where skl2onnx still has the function this wraps; parity checks the result either way)."""
    with _PATCH_LOCK:
        if _PATCHED:
            return
        _PATCHED.append(True)
        from skl2onnx.common import tree_ensemble

        original = getattr(tree_ensemble, "add_node", None)
        if original is None:
            return

        def add_node(*args: Any, nodes_missing_value_tracks_true: Any = 0, **kwargs: Any) -> Any:
            tracks = int(nodes_missing_value_tracks_true)
            return original(*args, nodes_missing_value_tracks_true=tracks, **kwargs)

        tree_ensemble.add_node = add_node


def _register_boosters(model: Any) -> None:
    """Register onnxmltools' XGBoost and LightGBM converters with skl2onnx, when the model holds
    one of those estimators (importing either library costs a second: only when needed)."""
    modules = {type(part).__module__.split(".")[0] for part in _parts(model)}
    if not modules & {"xgboost", "lightgbm"}:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    classifier_options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    if "xgboost" in modules:
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
        from xgboost import XGBClassifier, XGBRegressor

        update_registered_converter(
            XGBClassifier,
            "XGBoostXGBClassifier",
            calculate_linear_classifier_output_shapes,
            convert_xgboost,
            options=classifier_options,
        )
        update_registered_converter(
            XGBRegressor,
            "XGBoostXGBRegressor",
            calculate_linear_regressor_output_shapes,
            convert_xgboost,
        )
    if "lightgbm" in modules:
        from lightgbm import LGBMClassifier, LGBMRegressor
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

        update_registered_converter(
            LGBMClassifier,
            "LightGbmLGBMClassifier",
            calculate_linear_classifier_output_shapes,
            convert_lightgbm,
            options=classifier_options,
        )
        update_registered_converter(
            LGBMRegressor,
            "LightGbmLGBMRegressor",
            calculate_linear_regressor_output_shapes,
            convert_lightgbm,
            options={"split": None},
        )


def _is_vectorizer(part: Any) -> bool:
    return type(part).__name__ in ("CountVectorizer", "TfidfVectorizer")


def _parts(model: Any) -> list[Any]:
    """The model and every estimator inside it (pipeline steps, column transformers)."""
    found = [model]
    steps = getattr(model, "steps", None)
    for entry in steps if isinstance(steps, list) else []:
        if isinstance(entry, tuple) and len(entry) >= 2:
            found.extend(_parts(entry[1]))
    transformers = getattr(model, "transformers_", None) or getattr(model, "transformers", None)
    for entry in transformers if isinstance(transformers, list) else []:
        if isinstance(entry, tuple) and len(entry) >= 2 and not isinstance(entry[1], str):
            found.extend(_parts(entry[1]))
    return found


def _sort_opsets(graph: Any) -> None:
    """skl2onnx lists the opset domains in set order, which changes with the process's string
    hash seed: sort them so the same model always gives the same bytes (and the same digest)."""
    opsets = sorted(graph.opset_import, key=lambda o: o.domain)
    del graph.opset_import[:]
    graph.opset_import.extend(opsets)


def _options(model: Any) -> dict[Any, Any]:
    """Probabilities as a plain tensor (no ZipMap) for the final classifier. A classifier
    without probabilities (LinearSVC) gets an empty entry: inside a pipeline skl2onnx would
    otherwise give it a `zipmap` option its converter refuses."""
    from sklearn.base import is_classifier

    final = model.steps[-1][1] if hasattr(model, "steps") else model
    if hasattr(final, "predict_proba"):
        return {id(final): {"zipmap": False}}
    return {id(final): {}} if is_classifier(final) else {}


def _cast_around_trees(graph: Any, *, inputs_to_float: bool, outputs_to_double: bool) -> None:
    """Casts around tree-ensemble nodes (see the module's docstring):
    - `inputs_to_float`: a Cast to float32 before each, to compare as scikit-learn's forests do;
    - `outputs_to_double`: skl2onnx declares a double output for a tree-ensemble regressor fed
      doubles, but ONNX Runtime's TreeEnsembleRegressor only outputs floats (the graph would not
      load): the node outputs float, cast to double after it.
    Names carry the node's position, so the same model always gives the same bytes."""
    from onnx import TensorProto, helper

    rebuilt = []
    after = 0  # output casts so far (not counted in the positions the names carry)
    for i, node in enumerate(list(graph.graph.node)):
        if inputs_to_float and node.op_type in _TREE_OPS and node.input:
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
        if outputs_to_double and node.op_type == "TreeEnsembleRegressor" and node.output:
            at = len(rebuilt) - 1 - after  # the node's position once the input casts are in
            after += 1
            target = node.output[0]
            node.output[0] = f"{target}__cpmai_float_{at}"
            rebuilt.append(
                helper.make_node(
                    "Cast",
                    [node.output[0]],
                    [target],
                    to=TensorProto.DOUBLE,
                    name=f"cpmai_cast_out_{at}",
                )
            )
    del graph.graph.node[:]
    graph.graph.node.extend(rebuilt)


@dataclass
class _Original:
    """The rows parity is checked on and the original model's answers, computed once."""

    columns: dict[str, Any]
    rows: int
    labels: Any
    probabilities: Any

    @classmethod
    def of(
        cls, model: Any, inputs: list[InputSpec], frames: list[pd.DataFrame], call: str
    ) -> _Original:
        import pandas as pd

        from cpmai.runtime.predictor import SklearnRunner

        frame = pd.concat(frames, ignore_index=True)
        columns = {spec.name: frame[spec.name].to_numpy() for spec in inputs}
        labels, probabilities = SklearnRunner(model, inputs, call=call).run(
            columns, want_proba=True
        )
        return cls(columns, len(frame), labels, probabilities)


def _parity(
    original: _Original, result: Conversion, inputs: list[InputSpec], task: str
) -> dict[str, Any]:
    import numpy as np

    from cpmai.runtime.predictor import OnnxRunner

    assert result.onnx is not None
    runner = OnnxRunner(result.onnx, inputs, result.input_mode, result.graph_inputs)
    labels, probabilities = runner.run(original.columns, want_proba=True)
    expected, expected_proba = original.labels, original.probabilities
    report: dict[str, Any] = {"rows": original.rows, "tolerance": TOLERANCE}
    if np.shape(labels)[:1] != np.shape(expected)[:1]:
        report.update(agrees=False, shape=f"{np.shape(labels)} against {np.shape(expected)}")
        return report
    if task == "classification":
        equal = labels.astype(str) == np.asarray(expected).astype(str)
        report["labels_equal"] = round(float(equal.mean()), 6)
        report["agrees"] = bool(equal.all())
        if probabilities is not None and expected_proba is not None:
            if probabilities.shape != expected_proba.shape:
                report["agrees"] = False
                report["shape"] = (
                    f"probabilities {probabilities.shape} against {expected_proba.shape}"
                )
            else:
                diff = float(np.abs(probabilities - expected_proba).max())
                report["max_probability_diff"] = diff
                report["agrees"] = report["agrees"] and diff <= TOLERANCE
    else:
        values = np.asarray(expected, dtype=float).ravel()
        scale = np.maximum(1.0, np.abs(values))
        diff = float((np.abs(labels.astype(float).ravel() - values) / scale).max())
        report["max_relative_diff"] = diff
        report["agrees"] = diff <= TOLERANCE
    return report
