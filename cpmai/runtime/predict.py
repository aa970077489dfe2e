"""Calling a loaded model on a DataFrame, whatever its flavour."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cpmai.runtime.formats import LoadedModel

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


def predict(model: LoadedModel, frame: pd.DataFrame) -> np.ndarray[Any, Any]:
    """Predicted labels (classification) or values (regression), one per row."""
    import numpy as np

    if model.flavor == "onnx":
        outputs = model.obj.run(None, onnx_feed(model, frame))
        return np.asarray(outputs[0]).reshape(len(frame), -1)[:, 0]
    return np.asarray(model.obj.predict(frame))


def onnx_feed(model: LoadedModel, frame: pd.DataFrame) -> dict[str, Any]:
    """ONNX inputs from a DataFrame: one 2-D tensor for all columns, or one column per input."""
    import numpy as np

    inputs = model.declared_inputs or []
    dtypes = {
        "tensor(float)": np.float32,
        "tensor(double)": np.float64,
        "tensor(int64)": np.int64,
        "tensor(int32)": np.int32,
        "tensor(string)": object,
        "tensor(bool)": np.bool_,
    }
    if len(inputs) == 1 and inputs[0]["name"] not in frame.columns:
        spec = inputs[0]
        return {spec["name"]: frame.to_numpy().astype(dtypes.get(spec["onnx_type"], np.float32))}
    return {
        spec["name"]: frame[spec["name"]]
        .to_numpy()
        .astype(dtypes.get(spec["onnx_type"], np.float32))
        .reshape(-1, 1)
        for spec in inputs
    }
