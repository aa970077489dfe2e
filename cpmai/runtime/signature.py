"""The model's signature: its inputs (names, types, ranges, categories) and outputs.

Inferred from the reference data, taken from the manifest, or read from the model file itself
(ONNX graph inputs, an MLflow signature). Stored as `signature.json` in the artifact and later
enforced on every request. `Signature` is what that file holds, typed: `Signature.dumps` is the
one writer of the file's bytes (part of the artifact's digest), `Signature.load` its one reader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from cpmai.errors import UsageError
from cpmai.manifest import InputOverride, InputSpec

if TYPE_CHECKING:
    import pandas as pd

SIGNATURE_FILE = "signature.json"
"""The signature's file in an artifact (copied as it is into edge bundles)."""


class OutputSpec(BaseModel):
    """One model output: the prediction (a classifier's with its class labels) or the class
    probabilities (with their shape)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    type: str
    """`category` for a classifier's prediction, `number` for a value or the probabilities."""
    categories: list[Any] | None = None
    """A classifier's class labels, in the model's order (JSON scalars as the model gives them)."""
    shape: list[int] | None = None
    """The probabilities' shape: `[-1, number of classes]`."""


class Signature(BaseModel):
    """What `signature.json` holds: the inputs a request must bring, the outputs it gets back,
    and what packaging learned on the way (task, format, where the inputs came from, rows of
    data). Read once where a model is loaded; the request path copies what it needs."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    task: str | None = None
    """`classification` or `regression` (the manifest's `model.task`)."""
    format: str | None = None
    """The model file's format (joblib, onnx, mlflow...)."""
    flavor: str | None = None
    """How it loads: `sklearn` (any predict-able object) or `onnx`."""
    origin: str | None = None
    """Where the inputs came from (inferred from the reference data, the manifest, the file)."""
    target: str | None = None
    """The data's target column (`data.target`)."""
    inputs: list[InputSpec]
    outputs: list[OutputSpec] = []
    data_rows: dict[str, int] = {}
    """Rows of each data file packaged (reference, holdout)."""

    @property
    def names(self) -> list[str]:
        """The inputs' names, in signature order."""
        return [spec.name for spec in self.inputs]

    @property
    def label(self) -> OutputSpec | None:
        """The first output (the prediction), if the signature has any."""
        return self.outputs[0] if self.outputs else None

    @property
    def classes(self) -> list[Any] | None:
        """A classifier's class labels (the prediction's categories); None otherwise."""
        return self.outputs[0].categories if self.outputs else None

    def to_dict(self) -> dict[str, Any]:
        """The file's JSON object: keys in field order, each key the signature was made or read
        with (so a file read back dumps as it was); inputs without what is default-closed."""
        data: dict[str, Any] = {}
        for key in type(self).model_fields:
            if key not in self.model_fields_set:
                continue
            if key == "inputs":
                data[key] = [_spec_json(spec) for spec in self.inputs]
            elif key == "outputs":
                data[key] = [out.model_dump(exclude_none=True) for out in self.outputs]
            else:
                data[key] = getattr(self, key)
        return data

    def dumps(self) -> str:
        """The bytes of `signature.json` (as text): two-space indented, keys in order."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, ensure_ascii=False) + "\n"

    @classmethod
    def load(cls, artifact_path: Path) -> Signature:
        """The signature of the artifact at `artifact_path` (its `signature.json`)."""
        return cls.model_validate_json((artifact_path / SIGNATURE_FILE).read_bytes())


def _spec_json(spec: InputSpec) -> dict[str, Any]:
    data = spec.model_dump(exclude_none=True)
    if not data.get("open"):
        data.pop("open", None)  # closed is the default: signatures without it read the same
    return data


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


def outputs_for(task: str, model_obj: Any, onnx: dict[str, Any] | None = None) -> list[OutputSpec]:
    """The outputs a request gets back, from the task and the fitted model's attributes (or,
    for an ONNX graph, the class labels and probability output found in it)."""
    if task == "regression":
        return [OutputSpec(name="prediction", type="number")]
    if onnx is not None:
        classes = onnx.get("classes")
        has_proba = bool(onnx.get("probabilities"))
    else:
        classes = getattr(model_obj, "classes_", None)
        has_proba = hasattr(model_obj, "predict_proba")
    if classes is None:
        return [OutputSpec(name="prediction", type="category")]
    labels = [_plain(c) for c in list(classes)]
    outputs = [OutputSpec(name="prediction", type="category", categories=labels)]
    if has_proba:
        outputs.append(OutputSpec(name="probabilities", type="number", shape=[-1, len(labels)]))
    return outputs


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value JSON can hold."""
    return value.item() if hasattr(value, "item") else value


# --- what the model tolerates ----------------------------------------------------------------

_OPEN_ENCODERS = {
    "OneHotEncoder": ("ignore", "infrequent_if_exist", "warn"),
    "OrdinalEncoder": ("use_encoded_value",),
    "TargetEncoder": (),  # encodes unseen categories as the target mean, always
}
_IMPUTERS = {"SimpleImputer", "KNNImputer", "IterativeImputer"}
_NAN_NATIVE = {"HistGradientBoostingClassifier", "HistGradientBoostingRegressor"}


@dataclass
class Tolerance:
    """What a model does with values its reference data never had, for one input."""

    unseen: bool = False
    """Unseen categories are encoded (not an error)."""
    missing: bool = False
    """Missing values are imputed or handled natively."""
    why: list[str] = field(default_factory=list)


def tolerances(model: Any, names: list[str]) -> dict[str, Tolerance]:
    """Per input, what the fitted model tolerates, read from its steps: encoders that ignore
    unseen categories and imputers (inside a ColumnTransformer: for the columns they get; as
    a pipeline's first steps: for every column). Models that are not scikit-learn objects
    tolerate nothing that can be read."""
    found = {name: Tolerance() for name in names}
    try:
        _walk(model, names, found)
    except Exception:  # an object that only looks like a pipeline: nothing can be read
        return {name: Tolerance() for name in names}
    return found


def _walk(model: Any, columns: list[str], found: dict[str, Tolerance]) -> bool:
    """Mark what `model` tolerates of `columns`; False once the columns are no longer the
    inputs (after a step that is not an encoder, an imputer or a ColumnTransformer)."""
    kind = type(model).__name__
    steps = getattr(model, "steps", None)
    if isinstance(steps, list):
        for entry in steps:
            if not (isinstance(entry, tuple) and len(entry) >= 2):
                return False
            if not _walk(entry[1], columns, found):
                return False
        return True
    transformers = getattr(model, "transformers_", None)
    if isinstance(transformers, list):
        paths: dict[str, list[Tolerance]] = {}
        for entry in transformers:
            if not (isinstance(entry, tuple) and len(entry) == 3) or isinstance(entry[1], str):
                continue
            selected = [c for c in _selected(entry[2], columns) if c in found]
            local = {c: Tolerance() for c in selected}
            _walk(entry[1], selected, local)
            for column in selected:
                paths.setdefault(column, []).append(local[column])
        for column, seen in paths.items():  # tolerated only where every path tolerates it
            if all(t.unseen for t in seen):
                found[column].unseen = True
                found[column].why.extend(w for t in seen for w in t.why)
            if all(t.missing for t in seen):
                found[column].missing = True
                found[column].why.extend(w for t in seen for w in t.why)
        return False  # after a ColumnTransformer, columns are features, not inputs
    if kind in _OPEN_ENCODERS:
        handle = getattr(model, "handle_unknown", None)
        allowed = _OPEN_ENCODERS[kind]
        if not allowed or handle in allowed:
            for column in columns:
                if column in found:
                    found[column].unseen = True
                    found[column].why.append(f"{kind}(handle_unknown={handle!r})")
        return False  # what follows sees encoded features
    if (kind in _IMPUTERS and _imputes_nan(model)) or kind in _NAN_NATIVE:
        for column in columns:
            if column in found:
                found[column].missing = True
                found[column].why.append(kind)
        return kind in _IMPUTERS
    return False


def _imputes_nan(imputer: Any) -> bool:
    missing = getattr(imputer, "missing_values", float("nan"))
    return missing is None or (isinstance(missing, float) and missing != missing)


def _selected(selected: Any, columns: list[str]) -> list[str]:
    if isinstance(selected, str):
        return [selected]
    if isinstance(selected, slice):
        return columns[selected]
    try:
        items = list(selected)
    except TypeError:
        return []
    if items and all(isinstance(i, bool) for i in items):
        return [c for c, keep in zip(columns, items, strict=False) if keep]
    if items and all(isinstance(i, int) for i in items):
        return [columns[i] for i in items if -len(columns) <= i < len(columns)]
    return [str(i) for i in items]


def apply_tolerances(inputs: list[InputSpec], found: dict[str, Tolerance]) -> list[InputSpec]:
    """Open the categories and allow the nulls that the model handles."""
    out = []
    for spec in inputs:
        tolerance = found.get(spec.name)
        if tolerance is None:
            out.append(spec)
            continue
        changes: dict[str, Any] = {}
        if tolerance.unseen and spec.type == "category":
            changes["open"] = True
        if tolerance.missing and spec.type != "boolean":  # a boolean graph input holds no null
            changes["nullable"] = True
        out.append(spec.model_copy(update=changes) if changes else spec)
    return out


def merge_declared(inputs: list[InputSpec], declared: list[dict[str, Any]]) -> list[InputSpec]:
    """Where the model file's own signature (MLflow) says more than the data: a free `string`
    where the data showed a few values (the category stays, open to unseen values), a
    `number` where the data held only integers, an optional input."""
    by_name = {d["name"]: d for d in declared}
    out = []
    for spec in inputs:
        said = by_name.get(spec.name)
        if said is None:
            out.append(spec)
            continue
        changes: dict[str, Any] = {}
        if said["type"] == "string" and spec.type == "category":
            changes["open"] = True
        if said["type"] == "number" and spec.type == "integer":
            changes["type"] = "number"
        if said.get("nullable"):
            changes["nullable"] = True
        out.append(spec.model_copy(update=changes) if changes else spec)
    return out


def apply_overrides(
    inputs: list[InputSpec], overrides: dict[str, InputOverride]
) -> list[InputSpec]:
    """The manifest's `signature.overrides`, input by input; an unknown name is an error."""
    names = {spec.name for spec in inputs}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise UsageError(
            f"signature.overrides: no input named {', '.join(map(repr, unknown))} "
            f"(inferred: {', '.join(sorted(names))})"
        )
    out = []
    for spec in inputs:
        override = overrides.get(spec.name)
        if override is None:
            out.append(spec)
            continue
        data = spec.model_dump()
        given = override.model_dump(exclude_none=True)
        if given.get("type") and given["type"] != spec.type:
            data.update(min=None, max=None, categories=None, open=False)
        categories = given.pop("categories", None)
        data.update(given)
        if categories == "open":
            data["open"] = True
        elif categories is not None:  # exactly these: closed, whatever the model tolerates
            data["categories"], data["open"] = categories, False
        if data["type"] == "category" and not data.get("categories"):
            raise UsageError(
                f"signature.overrides.{spec.name}: type category needs categories "
                "(the reference data has none to infer)"
            )
        try:
            out.append(InputSpec.model_validate(data))
        except ValueError as exc:
            raise UsageError(f"signature.overrides.{spec.name}: {exc}") from None
    return out


def model_task(model: Any, classes: list[Any] | None = None) -> str | None:
    """`classification` or `regression` as the model itself says (its final estimator's
    type, or class labels in an ONNX graph); None when it cannot tell."""
    final = model
    while isinstance(getattr(final, "steps", None), list) and final.steps:
        last = final.steps[-1]
        if not (isinstance(last, tuple) and len(last) >= 2):
            return None
        final = last[1]
    kind = getattr(final, "_estimator_type", None)
    if kind is None:
        tags = getattr(final, "__sklearn_tags__", None)
        try:
            kind = tags().estimator_type if tags else None
        except Exception:  # an object that only looks like an estimator
            kind = None
    if kind == "classifier" or classes:
        return "classification"
    if kind == "regressor":
        return "regression"
    return None
