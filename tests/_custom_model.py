"""Estimators skl2onnx has no converter for (used to test the scikit-learn fallback, and a
version that misses its latency SLO)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


class MajorityClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """Predicts the most frequent class, with the class frequencies as probabilities."""

    def fit(self, X: Any, y: Any) -> MajorityClassifier:
        self.classes_, counts = np.unique(y, return_counts=True)
        self.frequencies_ = counts / counts.sum()
        return self

    def predict(self, X: Any) -> Any:
        return np.full(len(X), self.classes_[np.argmax(self.frequencies_)])

    def predict_proba(self, X: Any) -> Any:
        return np.tile(self.frequencies_, (len(X), 1))


class SlowClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """A fitted classifier made slow: sleeps `delay_s` in every predict and predict_proba (a
    version that misses its latency SLO while answering correctly). Picklable; `classes_` is
    the wrapped classifier's."""

    def __init__(self, model: Any = None, delay_s: float = 0.05) -> None:
        self.model = model
        self.delay_s = delay_s

    def fit(self, X: Any, y: Any) -> SlowClassifier:
        self.model.fit(X, y)
        return self

    @property
    def classes_(self) -> Any:
        return self.model.classes_

    def __sklearn_is_fitted__(self) -> bool:
        return True

    def predict(self, X: Any) -> Any:
        time.sleep(self.delay_s)
        return self.model.predict(X)

    def predict_proba(self, X: Any) -> Any:
        time.sleep(self.delay_s)
        return self.model.predict_proba(X)
