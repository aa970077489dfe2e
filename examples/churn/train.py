"""Train the churn example: a scikit-learn Pipeline on a generated customer table.

Writes, next to this script: model.joblib, data/reference.csv (a sample of the training data)
and data/holdout.csv (rows the model never saw). The table comes from a fixed seed, so every run
gives the same data; the model is refitted each time.

    python train.py [--model logreg|forest] [--rows 6000] [--seed 7]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

HERE = Path(__file__).resolve().parent
NUMERIC = ["tenure_months", "monthly_charges", "support_calls", "late_payments"]
CATEGORICAL = ["plan", "contract", "payment_method", "region"]


def make_customers(rows: int, seed: int) -> pd.DataFrame:
    """A customer table where churn depends on tenure, price, support trouble and contract."""
    rng = np.random.default_rng(seed)
    plan = rng.choice(["basic", "standard", "premium"], size=rows, p=[0.45, 0.35, 0.20])
    contract = rng.choice(
        ["month-to-month", "one-year", "two-year"], size=rows, p=[0.55, 0.25, 0.20]
    )
    payment = rng.choice(["card", "bank-transfer", "invoice"], size=rows, p=[0.5, 0.3, 0.2])
    region = rng.choice(["north", "south", "east", "west"], size=rows)
    tenure = rng.integers(0, 73, size=rows)
    base_price = {"basic": 30.0, "standard": 60.0, "premium": 95.0}
    charges = np.array([base_price[p] for p in plan]) + rng.normal(0, 8, size=rows)
    support_calls = rng.poisson(1.2, size=rows)
    late = rng.poisson(0.4, size=rows)
    logit = (
        1.1
        - 0.06 * tenure
        + 0.025 * (charges - 60)
        + 0.55 * support_calls
        + 0.5 * late
        + np.select([contract == "month-to-month", contract == "one-year"], [1.3, -0.2], -1.4)
        + np.where(payment == "invoice", 0.4, 0.0)
    )
    churned = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame(
        {
            "tenure_months": tenure,
            "monthly_charges": charges.round(2),
            "support_calls": support_calls,
            "late_payments": late,
            "plan": plan,
            "contract": contract,
            "payment_method": payment,
            "region": region,
            "churned": churned,
        }
    )


def build_model(kind: str) -> Pipeline:
    preprocess = ColumnTransformer(
        [
            ("numeric", StandardScaler(), NUMERIC),
            ("categorical", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL),
        ]
    )
    if kind == "forest":
        classifier = RandomForestClassifier(n_estimators=100, max_depth=12, random_state=0)
    else:
        classifier = LogisticRegression(max_iter=1000)
    return Pipeline([("preprocess", preprocess), ("classifier", classifier)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["logreg", "forest"], default="logreg")
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()

    table = make_customers(args.rows, args.seed)
    train, holdout = table.iloc[: int(args.rows * 0.8)], table.iloc[int(args.rows * 0.8) :]
    model = build_model(args.model).fit(train[NUMERIC + CATEGORICAL], train["churned"])

    (args.out / "data").mkdir(parents=True, exist_ok=True)
    train.sample(n=min(2000, len(train)), random_state=args.seed).to_csv(
        args.out / "data" / "reference.csv", index=False
    )
    holdout.to_csv(args.out / "data" / "holdout.csv", index=False)
    joblib.dump(model, args.out / "model.joblib")

    features = holdout[NUMERIC + CATEGORICAL]
    accuracy = accuracy_score(holdout["churned"], model.predict(features))
    auc = roc_auc_score(holdout["churned"], model.predict_proba(features)[:, 1])
    print(
        f"trained {args.model} on {len(train)} rows: holdout accuracy {accuracy:.3f}, "
        f"roc_auc {auc:.3f} → {args.out / 'model.joblib'}"
    )


if __name__ == "__main__":
    main()
