"""Run a packaged model on columns of input: through ONNX Runtime or scikit-learn.

`Predictor.from_artifact` picks the runtime recorded in the artifact's `runtime.json` (decided at
package time). Both runners take the same input — a dict of column name → 1-D numpy array, in
any order — and return labels (or values) and, for classifiers, class probabilities.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from cpmai.artifacts import Artifact
    from cpmai.manifest import InputSpec
    from cpmai.runtime.formats import LoadedModel
    from cpmai.runtime.signature import Signature

Columns = dict[str, Any]
Result = tuple["np.ndarray[Any, Any]", "np.ndarray[Any, Any] | None"]

_NUMPY_FOR_ONNX = {
    "tensor(double)": "float64",
    "tensor(float)": "float32",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
    "tensor(string)": "object",
}


class OnnxRunner:
    """An ONNX Runtime session fed from columns. One intra-op thread: concurrency comes from
    batching requests, not from splitting one small model call across cores."""

    flavor = "onnx"

    def __init__(
        self,
        model: bytes | Path | Any,
        inputs: list[InputSpec],
        mode: str,
        graph_inputs: dict[str, str] | None = None,
    ) -> None:
        """`model`: ONNX bytes, a .onnx path, or an InferenceSession already open;
        `graph_inputs`: column → graph input name where they differ (runtime.json)."""
        import onnxruntime

        if isinstance(model, bytes | Path):
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            source = model if isinstance(model, bytes) else str(model)
            self.session = onnxruntime.InferenceSession(
                source, sess_options=options, providers=["CPUExecutionProvider"]
            )
        else:
            self.session = model
        self.names = [spec.name for spec in inputs]
        graph = self.session.get_inputs()
        self.dtypes = {i.name: _NUMPY_FOR_ONNX.get(i.type, "float32") for i in graph}
        renamed = graph_inputs or {}
        self.columns_of = {renamed.get(n, n): n for n in self.names}
        """graph input → the column that feeds it"""
        if mode == "columns" and not all(i.name in self.columns_of for i in graph):
            mode = "matrix"  # a file whose single input is one 2-D tensor of all features
        self.mode = mode
        self.matrix_name = graph[0].name
        outputs = self.session.get_outputs()
        self.label_output = outputs[0].name
        self.proba_output = outputs[1].name if len(outputs) > 1 else None

    def feed(self, columns: Columns) -> dict[str, Any]:
        import numpy as np

        if self.mode == "matrix":
            dtype = self.dtypes[self.matrix_name]
            matrix = np.column_stack([np.asarray(columns[n], dtype=dtype) for n in self.names])
            return {self.matrix_name: matrix}
        feed = {}
        for name, dtype in self.dtypes.items():
            values = columns[self.columns_of[name]]
            if dtype == "object":  # ONNX string tensors hold str objects; missing is ""
                array = np.asarray(values, dtype=object)
                if not all(type(v) is str for v in array.flat):
                    array = np.asarray([_text(v) for v in array.flat], dtype=object)
            else:
                array = np.asarray(values, dtype=dtype)
            feed[name] = array.reshape(-1, 1)
        return feed

    def run(self, columns: Columns, *, want_proba: bool = False) -> Result:
        import numpy as np

        wanted = [self.label_output]
        if want_proba and self.proba_output:
            wanted.append(self.proba_output)
        outputs = self.session.run(wanted, self.feed(columns))
        labels = np.asarray(outputs[0]).reshape(-1) if np.ndim(outputs[0]) <= 2 else outputs[0]
        probabilities = None
        if len(outputs) > 1:
            raw = outputs[1]
            if isinstance(raw, list) and raw and isinstance(raw[0], dict):  # a ZipMap output
                keys = list(raw[0])
                raw = [[row[k] for k in keys] for row in raw]
            probabilities = np.asarray(raw, dtype=np.float64)
        return labels, probabilities


CALLS = ("frame", "column", "matrix")
"""How a model takes its input: a DataFrame of the signature's columns, the single input column
as a 1-D sequence (a text pipeline fitted on a Series), or a float matrix (fitted on an array)."""


def default_call(model: Any, inputs: list[InputSpec]) -> str:
    """The call for artifacts packaged before the call was recorded (and the first guess)."""
    by_name = hasattr(model, "feature_names_in_") or any(
        spec.type in ("category", "string") for spec in inputs
    )
    return "frame" if by_name else "matrix"


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


class SklearnRunner:
    """A scikit-learn (or any `predict`-able) object fed the way it was fitted (`CALLS`)."""

    flavor = "sklearn"

    def __init__(self, model: Any, inputs: list[InputSpec], *, call: str | None = None) -> None:
        self.model = model
        self.names = [spec.name for spec in inputs]
        self.call = call or default_call(model, inputs)
        self.text_columns = [
            spec.name for spec in inputs if spec.type in ("category", "string") and spec.nullable
        ]
        self.has_proba = hasattr(model, "predict_proba")

    def run(self, columns: Columns, *, want_proba: bool = False) -> Result:
        import numpy as np
        import pandas as pd

        if self.call == "frame":
            data: Any = pd.DataFrame({name: columns[name] for name in self.names})
            if self.text_columns:  # scikit-learn's imputers see NaN as missing, not None
                for name in self.text_columns:
                    data[name] = data[name].where(data[name].notna(), np.nan)
        elif self.call == "column":
            data = pd.Series(columns[self.names[0]], name=self.names[0])
        else:
            data = np.column_stack([np.asarray(columns[n], dtype=float) for n in self.names])
        labels = np.asarray(self.model.predict(data))
        probabilities = None
        if want_proba and self.has_proba:
            probabilities = np.asarray(self.model.predict_proba(data), dtype=np.float64)
        return labels, probabilities


class Predictor:
    """The model of one verified artifact, ready for requests."""

    def __init__(
        self, runner: OnnxRunner | SklearnRunner, signature: Signature, runtime: dict[str, Any]
    ) -> None:
        self.runner = runner
        self.signature = signature
        self.runtime = runtime
        self.inputs: list[InputSpec] = signature.inputs
        self.classes: list[Any] | None = signature.classes
        self.has_proba = any(o.name == "probabilities" for o in signature.outputs) and (
            runner.flavor == "sklearn" or getattr(runner, "proba_output", None) is not None
        )

    @property
    def flavor(self) -> str:
        return self.runner.flavor

    @property
    def no_proba_reason(self) -> str:
        """Why this model gives no probabilities (for the message that refuses the request)."""
        label = self.signature.label
        if label is None or label.type != "category":
            return "the model is a regressor: it gives values, not class probabilities"
        if not self.classes:
            return "the model does not say its classes"
        return "the model has none (no predict_proba, as LinearSVC; or no probability output)"

    def run(self, columns: Columns, want_proba: bool = False) -> Result:
        return self.runner.run(columns, want_proba=want_proba and self.has_proba)

    @classmethod
    def from_artifact(cls, artifact: Artifact, *, runtime: str | None = None) -> Predictor:
        """Load the runtime recorded at package time (or force `runtime`: sklearn|onnx).

        Only call with an artifact returned by `open_artifact` (its bytes verified)."""
        signature = artifact.signature
        info = read_runtime(artifact.path)
        choice = runtime or info["runtime"]
        if choice == "onnx":
            onnx_rel = info.get("onnx_model")
            if not onnx_rel:
                from cpmai.errors import UsageError

                raise UsageError(
                    f"{artifact.name} {artifact.version} has no ONNX model: "
                    f"{info.get('reason', 'it was not converted')}"
                )
            runner: OnnxRunner | SklearnRunner = OnnxRunner(
                artifact.path / onnx_rel,
                signature.inputs,
                info.get("input_mode", "columns"),
                info.get("graph_inputs"),
            )
        else:
            runner = SklearnRunner(
                artifact.load_model().obj, signature.inputs, call=info.get("call")
            )
        return cls(runner, signature, {**info, "runtime": choice})


def runner_for(
    loaded: LoadedModel, inputs: list[InputSpec], *, call: str | None = None
) -> OnnxRunner | SklearnRunner:
    """A runner for a model just loaded from its file (packaging checks it can predict)."""
    if loaded.flavor == "onnx":
        return OnnxRunner(loaded.obj, inputs, "columns")
    return SklearnRunner(loaded.obj, inputs, call=call)


def read_runtime(artifact_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((artifact_path / "runtime.json").read_text())
    return data
