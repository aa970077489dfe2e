"""The model zoo: the kinds of model users bring, each built from data that ships with
scikit-learn (no downloads) into a folder with a manifest, a model file and reference/holdout
data. Used by tests/test_zoo.py and benchmarks/zoo.py.

Every builder returns a `Kind`: what was built and what cpmai should do with it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SEED = 7


@dataclass
class Kind:
    """One built model: its folder, manifest, and what to expect of it."""

    name: str
    folder: Path
    task: str
    runtime: str
    """The runtime cpmai should choose: `onnx` (a twin, or an ONNX file) or `sklearn`."""
    features: list[str]
    holdout: pd.DataFrame
    """Holdout rows, features and target."""
    target: str
    predict: Callable[[pd.DataFrame], Any]
    """The original model's own predictions on feature rows."""
    predict_proba: Callable[[pd.DataFrame], Any] | None = None
    shift: str | None = None
    """A feature that `shifted()` moves far from the reference."""
    unseen: dict[str, Any] = field(default_factory=dict)
    """A row's values that the pipeline tolerates although the reference never had them."""

    @property
    def manifest(self) -> Path:
        return self.folder / "cpmai.yaml"

    def sample(self, n: int, *, seed: int = 0) -> pd.DataFrame:
        """`n` rows like the reference data (drawn from it, features and target): traffic
        that must not look drifted."""
        reference = pd.read_csv(self.folder / "data" / "reference.csv")
        return reference.sample(n, replace=n > len(reference), random_state=seed).reset_index(
            drop=True
        )

    def rows(self, n: int, *, seed: int = 0) -> pd.DataFrame:
        """The features of `sample(n, seed=seed)`."""
        return self.sample(n, seed=seed)[self.features]

    def shifted(self, frame: pd.DataFrame) -> pd.DataFrame:
        """`frame` with the shift feature moved far outside its reference distribution."""
        out = frame.copy()
        column = out[self.shift]
        if pd.api.types.is_numeric_dtype(column):
            spread = float(self.holdout[self.shift].std() or 1.0)
            out[self.shift] = column + 6 * spread
        else:  # text: long repeated unknown words
            out[self.shift] = ["zebra quantum " * 40] * len(out)
        return out


def _manifest(kind_name: str, model: str, task: str, extra: str = "", target: str = "y") -> str:
    metric = "accuracy: '>= 0.3'" if task == "classification" else "r2: '>= -10'"
    quality = (
        "{metric: accuracy, min: 0.3}" if task == "classification" else "{metric: r2, min: -10}"
    )
    return f"""name: zoo-{kind_name}
owners: [zoo@example.com]
model:
  path: {model}
  task: {task}
{extra}data:
  reference: data/reference.csv
  holdout: data/holdout.csv
  target: {target}
gates:
  metrics: {{{metric}}}
slo: {{p99_ms: 500, error_rate: 0.5}}
environments:
  staging: {{target: local}}
monitoring:
  drift: {{threshold: 0.2, share: 0.5, min_samples: 50}}
  quality: {quality}
costs: {{cpu_hour: 0.04}}
"""


def _split(frame: pd.DataFrame, folder: Path, target: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    shuffled = frame.sample(frac=1.0, random_state=SEED).reset_index(drop=True)
    cut = int(len(shuffled) * 0.7)
    train, holdout = shuffled.iloc[:cut], shuffled.iloc[cut:].reset_index(drop=True)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    train.to_csv(folder / "data" / "reference.csv", index=False)
    holdout.to_csv(folder / "data" / "holdout.csv", index=False)
    return train, holdout


def _sklearn_frame(loader: Callable[..., Any]) -> tuple[pd.DataFrame, list[str]]:
    data = loader(as_frame=True)
    frame = data.frame.rename(columns={data.target.name: "y"})
    return frame, [c for c in frame.columns if c != "y"]


def _tabular(
    name: str,
    folder: Path,
    loader: Callable[..., Any],
    make: Callable[[], Any],
    task: str,
    *,
    runtime: str = "onnx",
    save: Callable[[Any, Path], str] | None = None,
    extra: str = "",
) -> Kind:
    import joblib

    frame, features = _sklearn_frame(loader)
    train, holdout = _split(frame, folder, "y")
    model = make().fit(train[features], train["y"])
    if save is None:
        joblib.dump(model, folder / "model.joblib")
        file = "model.joblib"
    else:
        file = save(model, folder)
    (folder / "cpmai.yaml").write_text(_manifest(name, file, task, extra))
    proba = model.predict_proba if hasattr(model, "predict_proba") else None
    return Kind(
        name, folder, task, runtime, features, holdout, "y", model.predict, proba, features[0]
    )


# --- the kinds -------------------------------------------------------------------------------


def binary_logistic(folder: Path) -> Kind:
    """LogisticRegression on breast cancer: feature names with spaces."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return _tabular(
        "binary-logistic",
        folder,
        load_breast_cancer,
        lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
        "classification",
    )


def multiclass_forest(folder: Path) -> Kind:
    """RandomForestClassifier on wine: three classes, a feature name with a slash."""
    from sklearn.datasets import load_wine
    from sklearn.ensemble import RandomForestClassifier

    return _tabular(
        "multiclass-forest",
        folder,
        load_wine,
        lambda: RandomForestClassifier(n_estimators=30, random_state=SEED),
        "classification",
    )


def linear_regressor(folder: Path) -> Kind:
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    return _tabular("linear-regressor", folder, load_diabetes, Ridge, "regression")


def forest_regressor(folder: Path) -> Kind:
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import RandomForestRegressor

    return _tabular(
        "forest-regressor",
        folder,
        load_diabetes,
        lambda: RandomForestRegressor(n_estimators=30, random_state=SEED),
        "regression",
    )


def gradient_boosting_regressor(folder: Path) -> Kind:
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import GradientBoostingRegressor

    return _tabular(
        "gbr",
        folder,
        load_diabetes,
        lambda: GradientBoostingRegressor(random_state=SEED),
        "regression",
    )


def hist_gradient_boosting(folder: Path) -> Kind:
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import HistGradientBoostingClassifier

    return _tabular(
        "hgb-classifier",
        folder,
        load_breast_cancer,
        lambda: HistGradientBoostingClassifier(max_iter=50, random_state=SEED),
        "classification",
    )


def hist_gradient_boosting_regressor(folder: Path) -> Kind:
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import HistGradientBoostingRegressor

    return _tabular(
        "hgb-regressor",
        folder,
        load_diabetes,
        lambda: HistGradientBoostingRegressor(max_iter=50, random_state=SEED),
        "regression",
        runtime="sklearn",  # float32 thresholds near float64 data: the twin disagrees
    )


def xgboost_classifier(folder: Path) -> Kind:
    from sklearn.datasets import load_iris
    from xgboost import XGBClassifier

    return _tabular(
        "xgb-classifier",
        folder,
        load_iris,
        lambda: XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1, random_state=SEED),
        "classification",
    )


def lightgbm_classifier(folder: Path) -> Kind:
    from lightgbm import LGBMClassifier
    from sklearn.datasets import load_breast_cancer

    return _tabular(
        "lgbm-classifier",
        folder,
        load_breast_cancer,
        lambda: LGBMClassifier(n_estimators=20, n_jobs=1, verbose=-1, random_state=SEED),
        "classification",
    )


def xgboost_native(folder: Path) -> Kind:
    """An XGBoost regressor saved in XGBoost's own JSON format."""
    from sklearn.datasets import load_diabetes
    from xgboost import XGBRegressor

    def save(model: Any, where: Path) -> str:
        model.save_model(where / "model.json")
        return "model.json"

    return _tabular(
        "xgb-native",
        folder,
        load_diabetes,
        lambda: XGBRegressor(n_estimators=30, max_depth=3, n_jobs=1, random_state=SEED),
        "regression",
        save=save,
    )


def lightgbm_native(folder: Path) -> Kind:
    """A LightGBM classifier saved as LightGBM's text model file."""
    from lightgbm import LGBMClassifier
    from sklearn.datasets import load_iris

    def save(model: Any, where: Path) -> str:
        model.booster_.save_model(where / "model.txt")
        return "model.txt"

    return _tabular(
        "lgbm-native",
        folder,
        load_iris,
        lambda: LGBMClassifier(n_estimators=20, n_jobs=1, verbose=-1, random_state=SEED),
        "classification",
        save=save,
    )


def mixed_pipeline(folder: Path) -> Kind:
    """ColumnTransformer: imputed numbers, one-hot categories (unknown ones ignored), NaNs."""
    import joblib
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_diabetes
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame, _ = _sklearn_frame(load_diabetes)
    rng = np.random.default_rng(SEED)
    out = pd.DataFrame(
        {
            "age": frame["age"].round(4),
            "bmi": frame["bmi"].round(4),
            "bp": frame["bp"].round(4),
            "sex": np.where(frame["sex"] > 0, "m", "f"),
            "clinic": rng.choice(["north", "south", "east"], len(frame)),
            "y": (frame["y"] > frame["y"].median()).astype(int),
        }
    )
    out.loc[rng.random(len(out)) < 0.1, "bmi"] = np.nan
    out.loc[rng.random(len(out)) < 0.1, "clinic"] = np.nan
    features = ["age", "bmi", "bp", "sex", "clinic"]
    train, holdout = _split(out, folder, "y")
    categorical = make_pipeline(
        SimpleImputer(strategy="constant", fill_value="missing"),
        OneHotEncoder(handle_unknown="ignore"),
    )
    numeric = make_pipeline(SimpleImputer(strategy="median"), StandardScaler())
    model = Pipeline(
        [
            (
                "columns",
                ColumnTransformer(
                    [
                        ("num", numeric, ["age", "bmi", "bp"]),
                        ("cat", categorical, ["sex", "clinic"]),
                    ]
                ),
            ),
            ("model", LogisticRegression(max_iter=500)),
        ]
    ).fit(train[features], train["y"])
    joblib.dump(model, folder / "model.joblib")
    (folder / "cpmai.yaml").write_text(_manifest("mixed", "model.joblib", "classification"))
    return Kind(
        "mixed",
        folder,
        "classification",
        "onnx",
        features,
        holdout,
        "y",
        model.predict,
        model.predict_proba,
        "bmi",
        unseen={"clinic": "west", "bmi": None},
    )


def _documents() -> pd.DataFrame:
    """Lines of the descriptions of scikit-learn's bundled datasets, labelled by dataset."""
    from sklearn import datasets

    rows = []
    for label, loader in [
        ("iris", datasets.load_iris),
        ("cancer", datasets.load_breast_cancer),
        ("wine", datasets.load_wine),
        ("diabetes", datasets.load_diabetes),
        ("digits", datasets.load_digits),
    ]:
        for line in loader().DESCR.splitlines():
            words = re.findall(r"[A-Za-z]{3,}", line)
            if len(words) >= 3:
                rows.append({"text": " ".join(words).lower(), "y": label})
    return pd.DataFrame(rows)


def text_series(folder: Path) -> Kind:
    """The most common text pipeline: TfidfVectorizer + LinearSVC fitted on a Series."""
    import joblib
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import Pipeline
    from sklearn.svm import LinearSVC

    frame = _documents()
    train, holdout = _split(frame, folder, "y")
    model = Pipeline([("tfidf", TfidfVectorizer()), ("svm", LinearSVC())])
    model.fit(train["text"], train["y"])
    joblib.dump(model, folder / "model.joblib")
    (folder / "cpmai.yaml").write_text(_manifest("text-series", "model.joblib", "classification"))
    return Kind(
        "text-series",
        folder,
        "classification",
        "onnx",
        ["text"],
        holdout,
        "y",
        lambda rows: model.predict(rows["text"]),
        None,
        "text",
    )


def text_columns(folder: Path) -> Kind:
    """TF-IDF inside a ColumnTransformer + LogisticRegression: a DataFrame with a text column."""
    import joblib
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    frame = _documents()
    train, holdout = _split(frame, folder, "y")
    model = Pipeline(
        [
            ("columns", ColumnTransformer([("tfidf", TfidfVectorizer(), "text")])),
            ("model", LogisticRegression(max_iter=1000)),
        ]
    ).fit(train[["text"]], train["y"])
    joblib.dump(model, folder / "model.joblib")
    (folder / "cpmai.yaml").write_text(_manifest("text-columns", "model.joblib", "classification"))
    return Kind(
        "text-columns",
        folder,
        "classification",
        "onnx",
        ["text"],
        holdout,
        "y",
        model.predict,
        model.predict_proba,
        "text",
    )


def skops_file(folder: Path) -> Kind:
    import skops.io
    from sklearn.datasets import load_iris
    from sklearn.tree import DecisionTreeClassifier

    def save(model: Any, where: Path) -> str:
        skops.io.dump(model, where / "model.skops")
        return "model.skops"

    return _tabular(
        "skops",
        folder,
        load_iris,
        lambda: DecisionTreeClassifier(max_depth=4, random_state=SEED),
        "classification",
        save=save,
        extra="  trusted_types: [sklearn.tree._tree.Tree]\n",
    )


def onnx_file(folder: Path) -> Kind:
    """A user's own .onnx file, converted with skl2onnx's defaults (ZipMap probabilities)."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    def save(model: Any, where: Path) -> str:
        graph = to_onnx(model, np.zeros((1, 4), dtype=np.float32))
        (where / "model.onnx").write_bytes(graph.SerializeToString())
        return "model.onnx"

    return _tabular(
        "onnx-file",
        folder,
        load_iris,
        lambda: LogisticRegression(max_iter=500),
        "classification",
        save=save,
    )


def mlflow_folder(folder: Path) -> Kind:
    """An MLflow sklearn model folder (written by hand, as mlflow.sklearn.save_model does) whose
    signature says a column is a free `string`, although the reference data has few values."""
    import pickle

    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    frame, _ = _sklearn_frame(load_diabetes)
    out = pd.DataFrame(
        {
            "bmi": frame["bmi"].round(5),
            "bp": frame["bp"].round(5),
            "site": np.where(frame["s1"] > 0, "a", "b"),
            "y": frame["y"],
        }
    )
    features = ["bmi", "bp", "site"]
    train, holdout = _split(out, folder, "y")
    model = Pipeline(
        [
            (
                "columns",
                ColumnTransformer(
                    [("site", OneHotEncoder(handle_unknown="ignore"), ["site"])],
                    remainder="passthrough",
                ),
            ),
            ("model", Ridge()),
        ]
    ).fit(train[features], train["y"])
    mlmodel = folder / "model"
    mlmodel.mkdir()
    with (mlmodel / "model.pkl").open("wb") as handle:
        pickle.dump(model, handle)
    inputs = [
        {"name": "bmi", "type": "double", "required": True},
        {"name": "bp", "type": "double", "required": True},
        {"name": "site", "type": "string", "required": True},
    ]
    (mlmodel / "MLmodel").write_text(
        "flavors:\n"
        "  sklearn:\n    pickled_model: model.pkl\n    serialization_format: cloudpickle\n"
        "signature:\n"
        f"  inputs: '{json.dumps(inputs)}'\n"
        '  outputs: \'[{"type": "double"}]\'\n'
    )
    (folder / "cpmai.yaml").write_text(_manifest("mlflow", "model", "regression"))
    return Kind(
        "mlflow",
        folder,
        "regression",
        "onnx",
        features,
        holdout,
        "y",
        model.predict,
        None,
        "bmi",
        unseen={"site": "c"},
    )


KINDS: dict[str, Callable[[Path], Kind]] = {
    "binary-logistic": binary_logistic,
    "multiclass-forest": multiclass_forest,
    "linear-regressor": linear_regressor,
    "forest-regressor": forest_regressor,
    "gbr": gradient_boosting_regressor,
    "hgb-classifier": hist_gradient_boosting,
    "hgb-regressor": hist_gradient_boosting_regressor,
    "xgb-classifier": xgboost_classifier,
    "lgbm-classifier": lightgbm_classifier,
    "xgb-native": xgboost_native,
    "lgbm-native": lightgbm_native,
    "mixed": mixed_pipeline,
    "text-series": text_series,
    "text-columns": text_columns,
    "skops": skops_file,
    "onnx-file": onnx_file,
    "mlflow": mlflow_folder,
}
