"""Gradient-boosting models in their libraries' own file formats: XGBoost (`.json`, `.ubj`) and
LightGBM (`.txt`). Loaded with the library itself (optional extras: `pip install
'cpmai[xgboost]'`, `'cpmai[lightgbm]'`) into an object with scikit-learn's `predict`,
`predict_proba` and `classes_`, which the rest of cpmai runs and converts like any estimator.

Whether the model classifies or regresses is read from the file's own objective.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cpmai.errors import ModelLoadError


def load_xgboost(path: Path) -> Any:
    """An XGBClassifier or XGBRegressor holding the booster saved at `path`."""
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(str(path))
    objective = str(json.loads(booster.save_config())["learner"]["objective"]["name"])
    if objective.startswith(("binary:", "multi:")):
        model: Any = xgboost.XGBClassifier()
    elif objective.startswith(("reg:", "count:", "survival:")):
        model = xgboost.XGBRegressor()
    else:
        raise ModelLoadError(f"{path.name}: XGBoost objective {objective!r} is not supported")
    model.load_model(str(path))
    return model


class LightGBMRegressorFile:
    """A LightGBM text model file (regression objective) with scikit-learn's interface."""

    _estimator_type = "regressor"

    def __init__(self, booster: Any) -> None:
        import numpy as np

        self.booster = booster
        self.n_features_in_ = int(booster.num_feature())
        names = [str(n) for n in booster.feature_name()]
        if names != [f"Column_{i}" for i in range(len(names))]:  # LightGBM's names for none
            self.feature_names_in_ = np.array(names, dtype=object)

    def _raw(self, data: Any) -> Any:
        import numpy as np

        names = getattr(self, "feature_names_in_", None)
        if names is not None and hasattr(data, "columns"):
            data = data[_by_name(list(names), [str(c) for c in data.columns])]
        return np.asarray(self.booster.predict(_matrix(data)), dtype=np.float64)

    def predict(self, data: Any) -> Any:
        return self._raw(data)

    def to_onnx(self, initial_types: list[Any], target_opset: dict[str, int]) -> Any:
        """The booster's ONNX graph (onnxmltools), probabilities as a plain tensor."""
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common import data_types

        # onnxmltools checks its own tensor types, not skl2onnx's twins of them
        own = [(name, getattr(data_types, type(t).__name__)(t.shape)) for name, t in initial_types]
        graph = convert_lightgbm(
            self.booster, initial_types=own, target_opset=min(target_opset[""], 15), zipmap=False
        )
        graph.graph.name = (
            "lightgbm"  # onnxmltools names it with a random UUID: same model, same bytes
        )
        return graph


class LightGBMClassifierFile(LightGBMRegressorFile):
    """A LightGBM text model file (binary or multiclass objective). Its classes are the integers
    0..k-1 the booster was trained on: the file does not keep the original labels."""

    _estimator_type = "classifier"

    def __init__(self, booster: Any, classes: int) -> None:
        import numpy as np

        super().__init__(booster)
        self.classes_ = np.arange(max(2, classes))

    def predict_proba(self, data: Any) -> Any:
        import numpy as np

        raw = self._raw(data)
        return np.column_stack([1 - raw, raw]) if raw.ndim == 1 else raw

    def predict(self, data: Any) -> Any:
        return self.classes_[self.predict_proba(data).argmax(axis=1)]


def load_lightgbm(path: Path) -> LightGBMRegressorFile:
    """The LightGBM model saved at `path`, as a classifier or regressor by its objective."""
    import lightgbm

    booster = lightgbm.Booster(model_file=str(path))
    dump = booster.dump_model(num_iteration=1)
    objective = str(dump.get("objective", "")).split(" ")[0]
    if objective in ("binary", "multiclass", "multiclassova"):
        return LightGBMClassifierFile(booster, int(dump.get("num_class", 1)))
    regression = ("regression", "huber", "fair", "poisson", "quantile", "mape", "gamma", "tweedie")
    if objective.startswith(regression) or objective.startswith("cross_entropy"):
        return LightGBMRegressorFile(booster)
    raise ModelLoadError(f"{path.name}: LightGBM objective {objective!r} is not supported")


def _by_name(names: list[str], columns: list[str]) -> list[str]:
    """The columns in the order the booster was trained on, matched by name (LightGBM stores
    names with characters other than letters, digits and `_` replaced by `_`)."""
    import re

    def plain(name: str) -> str:
        return re.sub(r"[^0-9A-Za-z_]", "_", name)

    found = {plain(c): c for c in columns}
    missing = [n for n in names if plain(n) not in found]
    if missing:
        raise ValueError(f"the model was trained on column(s) {', '.join(missing[:5])}, not given")
    return [found[plain(n)] for n in names]


def _matrix(data: Any) -> Any:
    import numpy as np

    values = data.to_numpy() if hasattr(data, "to_numpy") else data
    return np.asarray(values, dtype=np.float64)
