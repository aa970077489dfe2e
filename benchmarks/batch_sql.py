"""`cpmai predict` PostgreSQL → model → PostgreSQL, beside bare pandas scripts doing the same work
(issue #25's targets: rows/s ≥ 0.5× a pandas `read_sql` → predict → `to_sql` script, in the same
run; peak memory at 10,000,000 rows ≤ 1.2× that at 1,000,000).

    python benchmarks/batch_sql.py [--rows 1000000] [--big-rows 10000000] [--runs 1]

Starts a throwaway PostgreSQL server (Debian's, as the tests do: tests/_postgres.py), trains the
churn example, loads `--rows` customers (the example's holdout drawn with replacement, a unique
integer primary key) and runs, side by side on the same table:

- `cpmai`: `cpmai predict churn-classifier --input postgresql://… --table customers
  --output-table …` (chunks of 50,000, the prediction log written, as a user runs it);
- `cpmai --no-log`: the same without the prediction log;
- `pandas`: `pd.read_sql(chunksize=50_000)` → the joblib model's `predict` → `to_sql(append)`,
  the script a user would write by hand (its writes are INSERTs);
- `pandas+COPY`: the same script writing through psycopg's COPY.

Each contender writes the same columns (key, prediction, version, run id, time). Wall time is
the subprocess's, start-up included; peak memory is the subprocess's own maximum resident set
(`wait4`). Then `cpmai` (the prediction log written) again on `--big-rows` rows for the memory
ratio. Exits 4 when a
target is missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from _report import fingerprint, verdicts  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

NAME = "churn-classifier"
CHUNK = 50_000

PANDAS = textwrap.dedent(
    """
    import sys, time, uuid
    from datetime import datetime, timezone
    import joblib, pandas as pd, sqlalchemy as sa
    url, model_path, out, copy = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "copy"
    model = joblib.load(model_path)
    features = list(model.feature_names_in_)
    engine = sa.create_engine(url)
    run = uuid.uuid4().hex

    def copy_rows(table, conn, keys, data_iter):
        raw = conn.connection.dbapi_connection
        columns = ", ".join(f'"{k}"' for k in keys)
        with raw.cursor() as cur, cur.copy(f'COPY "{table.name}" ({columns}) FROM STDIN') as cp:
            for row in data_iter:
                cp.write_row(row)

    with engine.connect() as reader:
        reader = reader.execution_options(stream_results=True)
        for chunk in pd.read_sql("SELECT * FROM customers ORDER BY customer_id", reader,
                                 chunksize=50_000):
            out_frame = pd.DataFrame({
                "customer_id": chunk["customer_id"],
                "prediction": model.predict(chunk[features]),
                "version": "1.0.0", "run_id": run,
                "scored_at": datetime.now(timezone.utc),
            })
            with engine.begin() as writer:
                out_frame.to_sql(out, writer, index=False, if_exists="append",
                                 method=copy_rows if copy else None)
    """
)


def _train(folder: Path) -> Path:
    shutil.copytree(ROOT / "examples" / "churn", folder, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(".cpmai", "*.html", "*.md"))  # fmt: skip
    subprocess.run([sys.executable, "train.py"], cwd=folder, check=True, capture_output=True)
    return folder / "cpmai.yaml"


def _load(url: str, rows: int, folder: Path) -> None:
    """`rows` customers into a new `customers` table (COPY), primary key customer_id."""
    import numpy as np
    import pandas as pd
    import psycopg

    holdout = pd.read_csv(folder / "data" / "holdout.csv").drop(columns=["churned"])
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS customers")
        conn.execute(
            "CREATE TABLE customers (customer_id BIGINT PRIMARY KEY, tenure_months BIGINT, "
            "monthly_charges DOUBLE PRECISION, support_calls BIGINT, late_payments BIGINT, "
            "plan TEXT, contract TEXT, payment_method TEXT, region TEXT)"
        )
        rng = np.random.default_rng(3)
        done = 0
        with conn.cursor() as cur, cur.copy("COPY customers FROM STDIN") as copy:
            while done < rows:
                n = min(500_000, rows - done)
                part = holdout.iloc[rng.integers(0, len(holdout), n)].reset_index(drop=True)
                part.insert(0, "customer_id", np.arange(done + 1, done + n + 1))
                copy.write(part.to_csv(sep="\t", header=False, index=False))
                done += n
        conn.execute("ANALYZE customers")


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak resident MiB) of one subprocess."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])}… failed ({proc.returncode}): {err[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def _count(url: str, table: str) -> int:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        row = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()
        assert row is not None
        return int(row[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--big-rows", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()

    from _postgres import find_bin, postgres_server

    bin_ = find_bin()
    if bin_ is None:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
    work = Path(tempfile.mkdtemp(prefix="cpmai-bench-sql-"))
    try:
        manifest = _train(work / "churn")
        env = {**os.environ, "CPMAI_HOME": str(work / "home"), "CPMAI_ACTOR": "bench"}
        cpmai = [sys.executable, "-m", "cpmai"]
        subprocess.run([*cpmai, "package", str(manifest)], env=env, check=True,
                       capture_output=True)  # fmt: skip
        script = work / "pandas_batch.py"
        script.write_text(PANDAS)
        with postgres_server(bin_) as server:
            url = server.url()
            plain = url.replace("postgresql+psycopg://", "postgresql://")
            print(f"# cpmai predict, PostgreSQL → PostgreSQL — {fingerprint()}")
            print(f"loading {args.rows:,} rows …", file=sys.stderr)
            _load(url, args.rows, work / "churn")
            model = str(work / "churn" / "model.joblib")
            contenders = {
                "cpmai": lambda out: [*cpmai, "predict", NAME, "--input", plain, "--table",
                                      "customers", "--output-table", out, "--new-run"],
                "cpmai --no-log": lambda out: [*cpmai, "predict", NAME, "--input", plain,
                                               "--table", "customers", "--output-table", out,
                                               "--new-run", "--no-log"],
                "pandas": lambda out: [sys.executable, str(script), url, model, out, "insert"],
                "pandas+COPY": lambda out: [sys.executable, str(script), url, model, out, "copy"],
            }  # fmt: skip
            times: dict[str, list[float]] = {name: [] for name in contenders}
            memory: dict[str, float] = {}
            for run in range(args.runs):
                for index, (name, argv) in enumerate(contenders.items()):
                    out = f"out_{index}_{run}"
                    seconds, peak = _run(argv(out), env)
                    assert _count(url, out) == args.rows, (name, _count(url, out))
                    times[name].append(seconds)
                    memory[name] = max(memory.get(name, 0.0), peak)
                    print(f"  {name}: {seconds:.1f} s, {peak:.0f} MiB", file=sys.stderr)
            print()
            print("| contender | median s | rows/s | peak MiB |")
            print("| --- | ---: | ---: | ---: |")
            rate = {}
            for name, values in times.items():
                median = statistics.median(values)
                rate[name] = args.rows / median
                print(f"| {name} | {median:.1f} | {rate[name]:,.0f} | {memory[name]:.0f} |")
            print()
            big_peak = None
            if args.big_rows:
                print(f"loading {args.big_rows:,} rows …", file=sys.stderr)
                _load(url, args.big_rows, work / "churn")
                seconds, big_peak = _run(contenders["cpmai"]("out_big"), env)
                assert _count(url, "out_big") == args.big_rows
                rate_big = args.big_rows / seconds
                print(f"cpmai on {args.big_rows:,} rows: {seconds:.1f} s "
                      f"({rate_big:,.0f} rows/s), peak {big_peak:.0f} MiB")  # fmt: skip
                print()
        ratio = rate["cpmai"] / rate["pandas"]
        rows = [
            ("cpmai ÷ pandas read_sql/to_sql (rows/s)", f"{ratio:.2f}", "≥ 0.5", ratio >= 0.5),
            ("cpmai ÷ pandas+COPY (rows/s)", f"{rate['cpmai'] / rate['pandas+COPY']:.2f}",
             "(reported)", True),
        ]  # fmt: skip
        if big_peak is not None:
            grown = big_peak / memory["cpmai"]
            rows.append((f"peak memory {args.big_rows:,} ÷ {args.rows:,} rows", f"{grown:.2f}",
                         "≤ 1.2", grown <= 1.2))  # fmt: skip
        return verdicts(rows, ("what", "measured", "target"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
