"""An estimator skl2onnx has no converter for (used to test the scikit-learn fallback)."""

from __future__ import annotations

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
