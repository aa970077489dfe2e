"""Send a day's worth of new customers to a running churn-classifier server, as its clients would,
and write down what really happened to them (ground truth for `cpmai monitor --labels`).

    python traffic.py http://127.0.0.1:8081 [--rows 3000] [--seed 99] [--shift] [--labels FILE]

The customers come from the same generator as the training data (another seed), so their
distribution matches the reference data; `--shift` makes them newer customers on two-year
contracts (tenure down by 20 months, 90% two-year), which `cpmai monitor` should flag as drift.
Requests carry 50 rows each and an `X-Request-Id`; the labels file has the `id`, `row` and
`label` columns `cpmai monitor --labels` joins on.
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from pathlib import Path

import numpy as np
from train import CATEGORICAL, HERE, NUMERIC, make_customers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default="http://127.0.0.1:8080")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=99)
    parser.add_argument("--shift", action="store_true")
    parser.add_argument("--labels", type=Path, default=HERE / "labels.csv")
    args = parser.parse_args()

    customers = make_customers(args.rows, args.seed)
    if args.shift:
        rng = np.random.default_rng(args.seed)
        customers["tenure_months"] = (customers["tenure_months"] - 20).clip(lower=0)
        customers["contract"] = np.where(
            rng.random(len(customers)) < 0.9, "two-year", customers["contract"]
        )
    features = customers[NUMERIC + CATEGORICAL]
    labels = []
    for start in range(0, len(features), 50):
        chunk = features.iloc[start : start + 50]
        request_id = f"traffic-{args.seed}-{start}"
        body = json.dumps({"dataframe_split": json.loads(chunk.to_json(orient="split"))})
        request = urllib.request.Request(
            args.url + "/invocations",
            data=body.encode(),
            headers={"Content-Type": "application/json", "X-Request-Id": request_id},
        )
        with urllib.request.urlopen(request, timeout=30) as reply:
            reply.read()
        truth = customers["churned"].iloc[start : start + 50]
        labels += [(request_id, row, int(value)) for row, value in enumerate(truth)]
    args.labels.write_text("id,row,label\n" + "".join(f"{i},{r},{v}\n" for i, r, v in labels))
    kind = "shifted " if args.shift else ""
    print(
        f"sent {len(features):,} {kind}customers in {len(labels) // 50 or 1} requests to "
        f"{args.url}; their outcomes → {args.labels}"
    )


if __name__ == "__main__":
    main()
