"""Save a fitted scikit-learn model in a peer's own format. Runs inside the peer's virtual
environment (never cpmai's), started by run.py:

    python peer_save.py mlflow MODEL.joblib SAMPLE.csv TARGET OUT_DIR
    python peer_save.py bentoml MODEL.joblib SAMPLE.csv TARGET NAME   (into $BENTOML_HOME)
"""

from __future__ import annotations

import sys

import joblib
import pandas as pd


def main() -> None:
    tool, model_file, sample_file, target, out = sys.argv[1:6]
    model = joblib.load(model_file)
    sample = pd.read_csv(sample_file).drop(columns=[target]).head(200)
    if tool == "mlflow":
        import mlflow.sklearn
        import skops.io
        from mlflow.models import infer_signature

        # With a signature, MLflow checks every request's columns and types, as cpmai does.
        signature = infer_signature(sample, model.predict(sample))
        # MLflow saves with skops, which refuses types it does not know (a forest's trees);
        # this model is our own, so its types are trusted.
        trusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
        mlflow.sklearn.save_model(
            model, out, signature=signature, skops_trusted_types=trusted or None
        )
    elif tool == "bentoml":
        import bentoml

        bentoml.sklearn.save_model(out, model)
    else:
        sys.exit(f"unknown tool {tool}")


if __name__ == "__main__":
    main()
