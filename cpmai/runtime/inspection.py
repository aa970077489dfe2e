"""What packaging learns of a model before it is recorded: the input signature (with what the
model tolerates, probed), how it is called, whether its outputs are probabilities, and the
runtime it is served with (its ONNX twin when that agrees with it, and how fast each runs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpmai.errors import ModelLoadError, UsageError
from cpmai.fsutil import sha256_file
from cpmai.manifest import InputSpec, Manifest
from cpmai.runtime.formats import LoadedModel
from cpmai.runtime.signature import Signature

if TYPE_CHECKING:
    import pandas as pd

SAMPLE_ROWS = 100
"""Reference rows the model is run on to learn its call, outputs and speed."""


@dataclass
class Inspected:
    """What `signature_of` learns: the signature, and what only packaging uses."""

    signature: Signature
    call: str | None
    """How the model takes its input (`predictor.CALLS`); None for an ONNX graph or no data."""
    probes: pd.DataFrame | None
    """Rows with an unseen or missing value the model took (the twin must agree on them too)."""


def signature_of(
    manifest: Manifest, loaded: LoadedModel, data: dict[str, pd.DataFrame], fmt: str
) -> Inspected:
    """Inputs (declared, or inferred from the reference data) and outputs; checks the model
    predicts on a sample of the reference rows."""
    from cpmai.runtime import signature as sig

    reference = data.get("reference")
    task = manifest.model.task
    said = sig.model_task(loaded.obj, loaded.info.get("classes"))
    if said is not None and said != task:
        raise UsageError(
            f"model.task is {task}, but the model ({type(loaded.obj).__name__}) is a "
            f"{'classifier' if said == 'classification' else 'regressor'}",
            hint=f"set model.task: {said} in the manifest",
        )
    if isinstance(manifest.signature, list):
        inputs, origin = list(manifest.signature), "manifest"
    elif reference is not None:
        inputs, origin = sig.infer_inputs(reference), f"inferred from {manifest.data.reference}"
        inputs = sig.apply_tolerances(
            inputs, sig.tolerances(loaded.obj, [spec.name for spec in inputs])
        )
        if loaded.declared_inputs and fmt == "mlflow":
            inputs = sig.merge_declared(inputs, loaded.declared_inputs)
            origin += " and the MLflow signature"
    elif loaded.declared_inputs:
        inputs, origin = sig.from_declared(loaded.declared_inputs), f"declared by the {fmt} file"
    else:
        raise UsageError("signature: infer needs data.reference or a model that declares inputs")
    if not isinstance(manifest.signature, list) and not isinstance(manifest.signature, str):
        inputs = sig.apply_overrides(inputs, manifest.signature.overrides)
        if manifest.signature.overrides:
            origin += f", {len(manifest.signature.overrides)} overridden"
    call, probes = None, None
    if reference is not None:
        sig.check_frame(inputs, reference, source=str(manifest.data.reference))
        call = _find_call(loaded, inputs, reference.head(SAMPLE_ROWS), manifest)
        overridden = (
            set()
            if isinstance(manifest.signature, list | str)
            else set(manifest.signature.overrides)
        )
        if loaded.flavor != "onnx":
            inputs, probes = _probe_tolerances(loaded, inputs, reference, call, overridden)
        elif loaded.info.get("probabilities"):
            loaded.info["probabilities"] = _are_probabilities(loaded, inputs, reference)
    signature = Signature(
        task=manifest.model.task,
        format=fmt,
        flavor=loaded.flavor,
        origin=origin,
        target=manifest.data.target,
        inputs=inputs,
        outputs=sig.outputs_for(
            manifest.model.task, loaded.obj, loaded.info if loaded.flavor == "onnx" else None
        ),
        data_rows={role: len(frame) for role, frame in data.items()},
    )
    return Inspected(signature, call, probes)


def _are_probabilities(loaded: LoadedModel, inputs: list[InputSpec], sample: pd.DataFrame) -> bool:
    """Whether an ONNX graph's second output holds class probabilities (rows in [0, 1] that sum
    to 1) rather than decision scores (skl2onnx's LinearSVC and SGD graphs have those)."""
    import numpy as np

    from cpmai.runtime.predictor import OnnxRunner

    rows = sample.head(SAMPLE_ROWS)
    runner = OnnxRunner(loaded.obj, inputs, "columns")
    try:
        _, scores = runner.run({s.name: rows[s.name].tolist() for s in inputs}, want_proba=True)
    except Exception:
        return False
    if scores is None or scores.ndim != 2:
        return False
    return bool(
        ((scores >= -1e-6) & (scores <= 1 + 1e-6)).all()
        and np.allclose(scores.sum(axis=1), 1.0, atol=1e-4)
    )


UNSEEN = "__cpmai_unseen__"
"""The value put in an open category to check that the model takes what it has never seen."""


def _probe_tolerances(
    loaded: LoadedModel,
    inputs: list[InputSpec],
    reference: pd.DataFrame,
    call: str | None,
    overridden: set[str],
) -> tuple[list[InputSpec], pd.DataFrame | None]:
    """Check, on a reference row, that the model does take an unseen value in every open input
    and a missing one in every nullable input. An inferred tolerance the model refuses is
    withdrawn (the input is closed again); one the manifest asked for is an error. Returns the
    inputs and the probe rows (for the twin's parity check: the twin must agree on them too)."""
    import pandas as pd

    from cpmai.runtime.predictor import SklearnRunner

    runner = SklearnRunner(loaded.obj, inputs, call=call)
    base = reference.head(1)
    rows, checked = [], []
    for i, spec in enumerate(inputs):
        for what in ("open", "nullable"):
            if not getattr(spec, what):
                continue
            value = _unseen_value(spec) if what == "open" else None
            if what == "open" and value is None:
                continue
            row = base.copy()
            row[spec.name] = pd.Series([value], dtype=object)
            try:
                predicted, _ = runner.run({s.name: row[s.name].tolist() for s in inputs})
                ok = len(predicted) == 1
                why = "" if ok else f"it returned {len(predicted)} predictions for one row"
            except Exception as exc:
                ok, why = False, f"{type(exc).__name__}: {exc}"
            if ok:
                rows.append(row)
                continue
            said = "categories: open" if what == "open" else "nullable: true"
            if spec.name in overridden:
                raise UsageError(
                    f"signature.overrides.{spec.name}: {said}, but the model fails on "
                    f"{'an unseen' if what == 'open' else 'a missing'} value: {why}"
                )
            checked.append((i, what))
    for i, what in checked:  # inferred, refused by the model: withdrawn
        inputs[i] = inputs[i].model_copy(update={what: False})
    return inputs, (pd.concat(rows, ignore_index=True) if rows else None)


def _unseen_value(spec: InputSpec) -> Any:
    known = spec.categories or []
    if known and all(isinstance(c, str) for c in known):
        return UNSEEN
    numbers = [c for c in known if isinstance(c, int) and not isinstance(c, bool)]
    return max(numbers) + 1 if numbers and len(numbers) == len(known) else None


def _find_call(
    loaded: LoadedModel, inputs: list[InputSpec], sample: pd.DataFrame, manifest: Manifest
) -> str | None:
    """How the model takes its input (`predictor.CALLS`): tried on a sample of the reference
    rows, the way the model says it was fitted first. None for ONNX graphs (fed by name)."""
    from cpmai.runtime.predictor import default_call, runner_for

    columns = {spec.name: sample[spec.name].tolist() for spec in inputs}
    first = None if loaded.flavor == "onnx" else default_call(loaded.obj, inputs)
    calls: list[str | None] = [first]
    if first == "matrix":
        calls.append("frame")  # numbers only, no feature_names_in_: a wrapper may want names
    if first is not None and len(inputs) == 1 and inputs[0].type in ("string", "category"):
        calls.append("column")  # a text pipeline fitted on a Series
    failures = []
    for call in calls:
        how = {"frame": "a DataFrame", "column": "the column alone", "matrix": "a matrix"}.get(
            call or "", "its graph inputs"
        )
        try:
            predictions, _ = runner_for(loaded, inputs, call=call).run(columns)
        except Exception as exc:
            failures.append(f"given {how}: {type(exc).__name__}: {exc}")
            continue
        shape = getattr(predictions, "shape", (len(predictions),))
        if len(shape) > 1 and any(d != 1 for d in shape[1:]):
            raise ModelLoadError(
                f"the model gives {'×'.join(map(str, shape[1:]))} values per row (a multi-output "
                "model); cpmai serves models with one prediction per row",
                hint="package one model per output, or wrap the model so that it returns one value",
            )
        if len(predictions) == len(sample):
            return call
        failures.append(f"given {how}, it returned {len(predictions)} predictions")
    raise ModelLoadError(
        f"the model cannot predict on {len(sample)} rows of {manifest.data.reference}: "
        + "; ".join(failures),
        hint="cpmai calls a model with a DataFrame of the signature's columns, or with the one "
        "input column alone when the model takes a single text column; the reference data's "
        "columns (less data.target) must be the ones the model was fitted on",
    )


def choose_runtime(
    manifest: Manifest,
    loaded: LoadedModel,
    signature: Signature,
    model_rel: str,
    data: dict[str, pd.DataFrame],
    build: Path,
    files: dict[str, str],
    call: str | None,
    timings: dict[str, float | None],
) -> dict[str, Any]:
    """Decide how the model runs: its ONNX twin when it agrees with the original (runtime: auto),
    or as forced by the manifest. Writes `model/twin.onnx` when a twin was made."""
    wanted = manifest.model.runtime
    if loaded.flavor == "onnx":
        onnx_rel = model_rel if loaded.source.is_file() else _onnx_in_mlflow(loaded, model_rel)
        return {
            "runtime": "onnx",
            "reason": "the model is an ONNX graph",
            "onnx_model": onnx_rel,
            "input_mode": "columns",
        }
    base: dict[str, Any] = {"call": call}
    timings["sklearn_ms_per_row"] = _ms_per_row(loaded, signature, data, call)
    if wanted == "sklearn":
        return {
            "runtime": "sklearn",
            "reason": "runtime: sklearn in the manifest",
            "onnx_model": None,
            **base,
        }
    from cpmai.runtime import onnx_twin

    conversion = onnx_twin.convert(
        loaded.obj,
        signature.inputs,
        list(data.values()),
        manifest.model.task,
        call=call or "frame",
    )
    if conversion.onnx is None:
        if wanted == "onnx":
            raise ModelLoadError(f"runtime: onnx, but no ONNX twin converted: {conversion.error}")
        return {
            "runtime": "sklearn",
            "reason": f"no ONNX twin converted: {conversion.error}",
            "onnx_model": None,
            **base,
        }
    timings["onnx_ms_per_row"] = _onnx_ms_per_row(conversion, signature, data)
    (build / "model" / "twin.onnx").write_bytes(conversion.onnx)
    files["model/twin.onnx"] = sha256_file(build / "model" / "twin.onnx")
    parity = conversion.parity
    evidence = onnx_twin.parity_text(parity)
    info = {
        **base,
        "onnx_model": "model/twin.onnx",
        "input_mode": conversion.input_mode,
        "precision": conversion.precision,
        "graph_inputs": conversion.graph_inputs,
        "parity": parity,
        "refused": conversion.attempts,
        "versions": package_versions("skl2onnx", "onnxmltools", "onnx", "onnxruntime"),
    }
    if wanted == "onnx":
        return {"runtime": "onnx", "reason": f"runtime: onnx in the manifest; {evidence}", **info}
    if not data:
        return {
            "runtime": "sklearn",
            "reason": "no reference/holdout data to check the ONNX twin against",
            **info,
        }
    if conversion.agrees:
        return {"runtime": "onnx", "reason": f"the ONNX twin agrees: {evidence}", **info}
    return {"runtime": "sklearn", "reason": f"the ONNX twin disagrees: {evidence}", **info}


def _onnx_ms_per_row(
    conversion: Any, signature: Signature, data: dict[str, pd.DataFrame]
) -> float | None:
    from cpmai.runtime.predictor import OnnxRunner

    frame = data.get("reference")
    if frame is None or conversion.onnx is None:
        return None
    runner = OnnxRunner(
        conversion.onnx, signature.inputs, conversion.input_mode, conversion.graph_inputs
    )
    return _median_ms(runner, signature, frame)


def _median_ms(runner: Any, signature: Signature, frame: pd.DataFrame) -> float:
    import statistics
    import time

    row = {name: frame[name].head(1).tolist() for name in signature.names}
    times = []
    for _ in range(7):
        start = time.perf_counter()
        runner.run(row)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 4)


def _ms_per_row(
    loaded: LoadedModel,
    signature: Signature,
    data: dict[str, pd.DataFrame],
    call: str | None,
) -> float | None:
    """The model's own one-row predict time in this process (median of a few calls, ms): what
    a request costs when no twin is used."""
    from cpmai.runtime.predictor import SklearnRunner

    frame = data.get("reference")
    if frame is None:
        return None
    return _median_ms(SklearnRunner(loaded.obj, signature.inputs, call=call), signature, frame)


def _onnx_in_mlflow(loaded: LoadedModel, model_rel: str) -> str:
    from cpmai.runtime.formats import read_mlmodel

    data = (read_mlmodel(loaded.source)["flavors"].get("onnx") or {}).get("data", "model.onnx")
    return f"{model_rel}/{data}"


def package_versions(*dists: str) -> dict[str, str]:
    """The installed versions of the distributions named (those installed)."""
    from importlib import metadata

    found = {}
    for dist in dists:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found
