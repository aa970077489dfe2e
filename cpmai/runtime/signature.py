"""The model's signature: its inputs (names, types, ranges, categories) and outputs.

Inferred from the reference data, taken from the manifest, or read from the model file itself
(ONNX graph inputs, an MLflow signature). Stored as `signature.json` in the artifact and later
enforced on every request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cpmai.errors import UsageError
from cpmai.manifest import InputSpec

if TYPE_CHECKING:
    import pandas as pd

MAX_CATEGORIES = 50
"""A text column with at most this many distinct values is a category; beyond, free text."""


def infer_inputs(frame: pd.DataFrame) -> list[InputSpec]:
    """One InputSpec per column of `frame` (the target column already removed)."""
    import pandas as pd

    specs = []
    for name in frame.columns:
        column = frame[name]
        nullable = bool(column.isna().any())
        present = column.dropna()
        if pd.api.types.is_bool_dtype(column):
            specs.append(InputSpec(name=str(name), type="boolean", nullable=nullable))
        elif pd.api.types.is_numeric_dtype(column):
            integer = pd.api.types.is_integer_dtype(column)
            specs.append(
                InputSpec(
                    name=str(name),
                    type="integer" if integer else "number",
                    min=float(present.min()) if len(present) else None,
                    max=float(present.max()) if len(present) else None,
                    nullable=nullable,
                )
            )
        else:
            values = present.astype(str).unique().tolist()
            if 0 < len(values) <= MAX_CATEGORIES:
                specs.append(
                    InputSpec(
                        name=str(name),
                        type="category",
                        categories=sorted(values),
                        nullable=nullable,
                    )
                )
            else:
                specs.append(InputSpec(name=str(name), type="string", nullable=nullable))
    return specs


def from_declared(declared: list[dict[str, Any]]) -> list[InputSpec]:
    return [
        InputSpec(name=d["name"], type=d["type"], nullable=bool(d.get("nullable", False)))
        for d in declared
    ]


def check_frame(inputs: list[InputSpec], frame: pd.DataFrame, *, source: str) -> None:
    """The columns of `frame` must be the signature's inputs (order aside)."""
    names = [spec.name for spec in inputs]
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise UsageError(f"{source}: missing input column(s): {', '.join(missing)}")


def outputs_for(task: str, model_obj: Any) -> list[dict[str, Any]]:
    """The outputs a request gets back, from the task and the fitted model's attributes."""
    if task == "regression":
        return [{"name": "prediction", "type": "number"}]
    classes = getattr(model_obj, "classes_", None)
    outputs: list[dict[str, Any]] = [{"name": "prediction", "type": "category"}]
    if classes is not None:
        outputs[0]["categories"] = [_plain(c) for c in list(classes)]
        if hasattr(model_obj, "predict_proba"):
            outputs.append({"name": "probabilities", "type": "number", "shape": [-1, len(classes)]})
    return outputs


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value JSON can hold."""
    return value.item() if hasattr(value, "item") else value
