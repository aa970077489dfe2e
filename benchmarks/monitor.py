"""`cpmai monitor` over a big prediction log (issue #7's target: 1,000,000 rows × 30 features in
under 5 s and under 1.5 GB peak memory on the 2-core development machine).

    python benchmarks/monitor.py [--rows 1000000] [--runs 3] [--keep DIR]

Builds a 30-feature model (20 numeric, 10 categorical inputs; a scikit-learn pipeline), packages
it, and writes a prediction log with the server's own writer (`PredictionLog`, given the
signature as a server gives it): one-row requests spread evenly over 24 hours, a block a second
and an index record a minute, as a server writes them; the last 6 hours with 5 features
shifted. Then times `cpmai monitor --window 1h --json` as a subprocess: once for a new
artifact (it profiles the reference data and runs the model on it, once), then `--runs` times
each with the server's index (`--no-cache`: no parse cache), then on the same log
without the index — parsed whole from JSON, once building the parse cache, and with the cache
warm. Reports median wall times and the peak memory of the process tree (the parent and its
parser workers, summed, sampled every 20 ms). Exits 4 when a target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from _report import fingerprint, verdicts  # benchmarks/ is on sys.path when run as a script

from cpmai.home import Home

NUMERIC, CATEGORICAL = 20, 10
LEVELS = ["alpha", "beta", "gamma", "delta", "epsilon"]


def build_project(folder: Path) -> Path:
    import joblib
    import numpy as np
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(1)
    rows = 8000
    frame = pd.DataFrame(
        {f"n{i}": rng.normal(i, 1 + i / 10, rows).round(4) for i in range(NUMERIC)}
    )
    for i in range(CATEGORICAL):
        frame[f"c{i}"] = rng.choice(LEVELS, size=rows)
    logit = frame["n0"] - frame["n1"] / 2 + (frame["c0"] == "alpha")
    frame["y"] = (rng.random(rows) < 1 / (1 + np.exp(-logit + 0.5))).astype(int)
    numeric = [f"n{i}" for i in range(NUMERIC)]
    categorical = [f"c{i}" for i in range(CATEGORICAL)]
    model = make_pipeline(
        ColumnTransformer(
            [("num", StandardScaler(), numeric), ("cat", OneHotEncoder(), categorical)]
        ),
        LogisticRegression(max_iter=500),
    ).fit(frame[numeric + categorical], frame["y"])
    (folder / "data").mkdir(parents=True, exist_ok=True)
    joblib.dump(model, folder / "model.joblib")
    frame.iloc[:5000].to_csv(folder / "data" / "reference.csv", index=False)
    frame.iloc[5000:].to_csv(folder / "data" / "holdout.csv", index=False)
    manifest = folder / "cpmai.yaml"
    manifest.write_text(
        "name: wide\nmodel: {path: model.joblib, task: classification, runtime: sklearn}\n"
        "data: {reference: data/reference.csv, holdout: data/holdout.csv, target: y}\n"
        "slo: {p99_ms: 50, error_rate: 0.01}\n"
        "environments: {production: {target: local, port: 18099}}\n"
        "monitoring: {drift: {threshold: 0.1, share: 0.5}}\n"
    )
    return manifest


def write_log(home: Path, rows: int, start: float) -> int:
    """`rows` one-row requests over 24 h through the server's writer, one block per second of
    traffic as a server writes them; returns the bytes."""
    import numpy as np

    from cpmai.predlog.writer import PredictionLog

    folder = Home(home).env("wide", "production").logs
    folder.mkdir(parents=True, exist_ok=True)
    from cpmai.runtime.signature import Signature

    signature = Signature.load(next(home.glob("artifacts/wide/*/")))
    log = PredictionLog(folder, model="wide", version="1.0.0", signature=signature)
    rng = np.random.default_rng(2)
    step = 86400 / rows
    block = 50_000
    moment = [start]
    log._clock = lambda: moment[0]  # type: ignore[method-assign]
    second = int(start)
    for first in range(0, rows, block):
        count = min(block, rows - first)
        shifted = first >= rows * 0.75
        numbers = [
            rng.normal(i + (1.5 if shifted and i < 5 else 0), 1 + i / 10, count).round(4).tolist()
            for i in range(NUMERIC)
        ]
        levels = [rng.choice(LEVELS, size=count).tolist() for _ in range(CATEGORICAL)]
        labels = rng.integers(0, 2, size=count).tolist()
        latency = rng.gamma(2.0, 0.0006, size=count).tolist()
        for j in range(count):
            moment[0] = start + (first + j) * step
            if int(moment[0]) != second:  # the server's flush thread, once a second
                log.flush()
                second = int(moment[0])
            inputs = {f"n{i}": [numbers[i][j]] for i in range(NUMERIC)}
            inputs.update({f"c{i}": [levels[i][j]] for i in range(CATEGORICAL)})
            log.record("infer", 200, latency[j], 1, inputs, [labels[j]], request_id=f"r{first + j}")
    log.flush()
    return sum(p.stat().st_size for p in folder.glob("predictions-*.jsonl"))


def measure(command: list[str], env: dict[str, str]) -> tuple[float, float, dict[str, object]]:
    """Wall seconds, peak RSS of the process tree (MiB), and the JSON result."""
    import psutil

    peak = [0]
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watched = psutil.Process(proc.pid)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                tree = [watched, *watched.children(recursive=True)]
                total = 0
                for p in tree:
                    with contextlib.suppress(psutil.Error):
                        total += p.memory_info().rss
                peak[0] = max(peak[0], total)
            except psutil.Error:
                pass
            done.wait(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate(timeout=600)
    elapsed = time.perf_counter() - started
    done.set()
    thread.join()
    if proc.returncode not in (0, 4):
        sys.exit(f"cpmai monitor failed ({proc.returncode}): {err.decode()[-2000:]}")
    return elapsed, peak[0] / 2**20, json.loads(out)


def prepare(
    folder: Path, rows: int, before_log: Callable[[Path, float], None] | None = None
) -> tuple[Path, dict[str, str]]:
    """The state folder with the `wide` project packaged and `rows` logged over the last 24 hours
    (built once; kept as it is when `folder` already has it). `before_log(home, start)` runs
    between packaging and logging. Returns the state folder and the environment naming it."""
    home = folder / "state"
    env = {**os.environ, "CPMAI_HOME": str(home)}
    if not Home(home).logs("wide").exists():
        manifest = build_project(folder / "project")
        subprocess.run(
            [sys.executable, "-m", "cpmai", "-q", "package", str(manifest)], env=env, check=True
        )
        start = time.time() - 86400
        if before_log is not None:
            before_log(home, start)
        began = time.perf_counter()
        size = write_log(home, rows, start)
        print(f"log: {rows:,} rows, {size / 2**20:,.0f} MiB, written in "
              f"{time.perf_counter() - began:.0f} s")  # fmt: skip
    return home, env


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="Build in this folder and keep it.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        home, env = prepare(folder, args.rows)
        cpmai = [sys.executable, "-m", "cpmai"]
        command = [*cpmai, "--json", "monitor", "wide", "--env", "production", "--window", "1h",
                   "--version", "1.0.0", "--since", "25h"]  # fmt: skip
        shutil.rmtree(Home(home).cache("monitor"), ignore_errors=True)
        first = measure([*command, "--no-cache"], env)  # + the reference data's profile, once
        indexed = [measure([*command, "--no-cache"], env) for _ in range(args.runs)]
        folder = Home(home).env("wide", "production").logs
        aside = folder.parent / "index-aside"
        aside.mkdir(exist_ok=True)
        for index in folder.glob("*.idx"):  # the same log as a server without the index
            index.rename(aside / index.name)
        try:
            cold = [measure([*command, "--no-cache"], env) for _ in range(args.runs)]
            building = measure(command, env)
            warm = [measure(command, env) for _ in range(args.runs)]
        finally:
            for index in aside.glob("*.idx"):
                index.rename(folder / index.name)
    doc = indexed[-1][2]
    drift = doc["drift"]  # type: ignore[index]
    for other in (cold, warm):
        if drift["features"] != other[-1][2]["drift"]["features"]:  # type: ignore[index]
            sys.exit("the runs disagree on drift")
    print(f"machine: {fingerprint()}")
    for label, runs in (("first run for this artifact (profiles the reference data)", [first]),
                        ("server index", indexed), ("JSON only", cold),
                        ("JSON, building the parse cache", [building]),
                        ("JSON, parse cache warm", warm)):  # fmt: skip
        print(f"{label}: {', '.join(f'{r[0]:.2f} s / {r[1]:,.0f} MiB' for r in runs)}")
    print(f"result: {doc['traffic']['rows']:,} rows, {len(doc['windows'])} windows, drift "  # type: ignore[index]
          f"{drift['status']} ({', '.join(drift['drifted'])})")  # fmt: skip

    def median(runs: list[tuple[float, float, dict[str, object]]], i: int) -> float:
        return statistics.median(r[i] for r in runs)

    what = f"{args.rows:,} rows × 30 features"
    return verdicts(
        [
            (
                f"{what}, as a server writes it (median of {args.runs})",
                f"{median(indexed, 0):.2f} s",
                "< 5 s",
                median(indexed, 0) < 5,
            ),
            (
                "peak memory of the process tree",
                f"{median(indexed, 1):,.0f} MiB",
                "< 1,536 MiB",
                median(indexed, 1) < 1536,
            ),
            (
                f"{what}, JSON only, parsed whole (median of {args.runs})",
                f"{median(cold, 0):.2f} s",
                "(no target)",
                True,
            ),
            (
                f"{what}, JSON only, parse cache warm (median of {args.runs})",
                f"{median(warm, 0):.2f} s",
                "(no target)",
                True,
            ),
        ],
        ("what", "measured", "target"),
    )


if __name__ == "__main__":
    sys.exit(main())
