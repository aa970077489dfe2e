"""The BentoML service the comparison serves: BentoML's documented pattern for a
scikit-learn model (a `@bentoml.service` class, the model loaded once, a sync `@bentoml.api`
that builds a DataFrame and predicts). Its route and argument name make it accept the same
`{"dataframe_records": [...]}` body as MLflow and cpmai, so wrk sends all three the same bytes.
The model's tag comes from $CHURN_MODEL.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
import pandas as pd


@bentoml.service(workers=1)
class Churn:
    model_ref = bentoml.models.BentoModel(os.environ["CHURN_MODEL"])

    def __init__(self) -> None:
        self.model = bentoml.sklearn.load_model(self.model_ref)

    @bentoml.api(route="/invocations")
    def invocations(self, dataframe_records: list[dict[str, Any]]) -> dict[str, Any]:
        frame = pd.DataFrame(dataframe_records)
        return {"predictions": self.model.predict(frame).tolist()}
