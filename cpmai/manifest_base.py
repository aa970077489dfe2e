"""The manifest's building blocks: the strict base model, the constrained types and the metric
names every part of the schema shares (`cpmai.manifest` assembles them)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from cpmai.stats import parse_comparison

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss")
REGRESSION_METRICS = ("mae", "rmse", "r2", "mape")
TASK_METRICS = {"classification": CLASSIFICATION_METRICS, "regression": REGRESSION_METRICS}
LABEL_METRICS = {
    "classification": ("accuracy", "precision", "recall", "f1"),
    "regression": REGRESSION_METRICS,
}
"""What `cpmai monitor` computes from served predictions and ground truth: roc_auc and log_loss
need every request's probabilities, which the prediction log keeps only when asked for."""
UNIT_METRICS = {"accuracy", "precision", "recall", "f1", "roc_auc"}
"""Metrics between 0 and 1: a bound outside that range is a typo (">= 90" for 90%)."""
MODEL_FORMATS = ("joblib", "pickle", "skops", "onnx", "mlflow")

_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_SEMVER = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?$"


def _check_comparison(text: str) -> str:
    parse_comparison(text)
    return text.strip()


Comparison = Annotated[
    str,
    AfterValidator(_check_comparison),
    Field(
        pattern=r"^\s*(>=|<=|==|>|<)\s*[-+]?[0-9.]+([eE][-+]?[0-9]+)?\s*$",
        examples=[">= 0.9"],
    ),
]
Name = Annotated[str, Field(pattern=_NAME, description="lower-case letters, digits, . _ -")]
PositiveFloat = Annotated[float, Field(gt=0, le=1e12)]
NonNegFloat = Annotated[float, Field(ge=0, le=1e12)]
Fraction = Annotated[float, Field(ge=0, le=1)]
RelPath = Annotated[str, Field(min_length=1, max_length=4096)]


class Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, frozen=True, use_attribute_docstrings=True
    )
