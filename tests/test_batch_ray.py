"""`cpmai predict --engine ray` on a real local Ray cluster: the same predictions, row for row, as
the local engine, from a Parquet file to a Parquet folder, from a SQLite table to a table and
from a PostgreSQL query to a table."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from _postgres import pg_db, postgres_url  # noqa: F401

from conftest import run_cpmai
from cpmai.artifacts import package
from cpmai.manifest_file import load_manifest

pytest.importorskip("ray.data", reason="the ray extra is not installed (make test installs it)")

NAME = "churn-classifier"
RAY_TIMEOUT = 120.0
"""A Ray run here takes about 10 s, most of it starting and stopping the local cluster."""


def _holdout(churn: Path) -> pd.DataFrame:
    """The example's holdout rows with an id column of their own (output files are joined on
    it: the Ray engine writes one file per block, in no particular order)."""
    frame = pd.read_csv(churn.parent / "data" / "holdout.csv")
    frame.insert(0, "row_id", range(1, len(frame) + 1))
    return frame


@pytest.mark.slow
def test_ray_engine_scores_parquet_as_the_local_engine_does(
    churn: Path, home: Path, tmp_path: Path
) -> None:
    package(load_manifest(churn), home, actor="t")
    frame = _holdout(churn)
    source = tmp_path / "holdout.parquet"
    frame.to_parquet(source, index=False)
    local_out, ray_out = tmp_path / "local.parquet", tmp_path / "ray.parquet"

    local = run_cpmai("predict", NAME, "-i", source, "-o", local_out, "--probabilities", "--json")
    assert local.code == 0, local.err
    chunk = 250
    ray = run_cpmai("predict", NAME, "-i", source, "-o", ray_out, "--probabilities",
                    "--engine", "ray", "--chunk-rows", str(chunk), "--json",
                    timeout=RAY_TIMEOUT)  # fmt: skip
    assert ray.code == 0, ray.err
    assert ray.err == ""  # nothing of Ray's on the terminal
    summary = json.loads(ray.out)
    assert summary["engine"] == "ray" and summary["status"] == "done"
    assert summary["rows"] == summary["scored"] == len(frame) and summary["refused"] == 0
    assert summary["chunks"] == math.ceil(len(frame) / chunk)

    assert ray_out.is_dir()
    files = sorted(p.name for p in ray_out.iterdir() if p.name != ".cpmai-batch")
    assert len(files) == summary["chunks"] and all(n.endswith(".parquet") for n in files)
    assert (ray_out / ".cpmai-batch").is_file()  # the mark of a folder it may replace
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial folder
    by_local = pd.read_parquet(local_out)
    by_ray = pd.read_parquet(ray_out)
    assert list(by_ray.columns) == [*by_local.columns, "refused"]
    assert by_ray.drop(columns="refused").dtypes.equals(by_local.dtypes)
    assert by_ray["refused"].isna().all()
    joined = by_local.merge(by_ray, on="row_id", suffixes=("_local", "_ray"), validate="1:1")
    assert len(joined) == len(frame)
    for column in [c for c in by_local.columns if c != "row_id"]:
        assert joined[f"{column}_local"].tolist() == joined[f"{column}_ray"].tolist(), column

    # a Ray run does not resume: --run-id is refused before a cluster starts
    again = run_cpmai("predict", NAME, "-i", source, "-o", ray_out, "--engine", "ray",
                      "--run-id", "r1")  # fmt: skip
    assert again.code == 2 and "--run-id: a Ray run does not resume" in again.err


def test_a_table_with_an_integer_key_is_read_in_ranges(tmp_path: Path) -> None:
    """One read task a range of the key (no Ray needed to see the statements): every row in
    exactly one, gaps in the key and all; a table keyed otherwise is read whole."""
    from cpmai.batch.locations import location
    from cpmai.batch.ray_engine import _Source
    from cpmai.batch.run import BatchJob

    database = tmp_path / "keys.db"
    ids = [*range(1, 950), *range(5000, 5051)]  # 1,000 rows, a gap
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x REAL)")
        conn.execute("CREATE TABLE named (name TEXT PRIMARY KEY, x REAL)")
        conn.executemany("INSERT INTO t VALUES (?, 0.5)", [(i,) for i in ids])
    where = location(f"sqlite:///{database}", option="--input")

    def statements(table: str) -> list[str]:
        job = BatchJob(name=NAME, version="1", predictor=None, source=where,  # type: ignore[arg-type]
                       output=where, table=table, chunk_rows=100)  # fmt: skip
        return _Source(job).statements

    ranges = statements("t")
    assert len(ranges) == 10
    with sqlite3.connect(database) as conn:
        read = [row[0] for sql in ranges for row in conn.execute(sql)]
    assert sorted(read) == ids
    assert len(statements("named")) == 1


@pytest.mark.slow
def test_ray_engine_scores_a_sqlite_table_as_the_local_engine_does(
    churn: Path, home: Path, tmp_path: Path
) -> None:
    package(load_manifest(churn), home, actor="t")
    frame = _holdout(churn).rename(columns={"row_id": "id"})
    frame.loc[frame.index[[3, 400]], "monthly_charges"] = None  # refused, kept with the reason
    database = tmp_path / "shop.db"
    with sqlite3.connect(database) as conn:
        conn.execute(
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, tenure_months INTEGER, "
            "monthly_charges REAL, support_calls INTEGER, late_payments INTEGER, plan TEXT, "
            "contract TEXT, payment_method TEXT, region TEXT, churned INTEGER)"
        )
        frame.to_sql("customers", conn, if_exists="append", index=False)
    url = f"sqlite:///{database}"

    local = run_cpmai("predict", NAME, "-i", url, "--table", "customers", "--output-table",
                      "local_scores", "--chunk-rows", "100", "--json")  # fmt: skip
    assert local.code == 0, local.err
    ray = run_cpmai("predict", NAME, "-i", url, "--table", "customers",
                    "--output-table", "ray_scores", "--chunk-rows", "100", "--engine", "ray",
                    "--json", timeout=RAY_TIMEOUT)  # fmt: skip
    assert ray.code == 0, ray.err
    summary = json.loads(ray.out)
    counts = (summary["rows"], summary["scored"], summary["refused"])
    assert counts == (len(frame), len(frame) - 2, 2)
    assert summary["chunks"] == math.ceil(len(frame) / 100)
    assert summary["refused_reasons"] == json.loads(local.out)["refused_reasons"]

    with sqlite3.connect(database) as conn:
        by_local = pd.read_sql("SELECT * FROM local_scores ORDER BY id", conn)
        by_ray = pd.read_sql("SELECT * FROM ray_scores ORDER BY id", conn)
        runs = pd.read_sql("SELECT * FROM cpmai_batch_runs", conn).set_index("run_id")
    assert list(by_ray.columns) == list(by_local.columns)
    assert by_ray["id"].tolist() == by_local["id"].tolist() == frame["id"].tolist()
    for column in ("prediction", "refused", "version"):  # a refused row's prediction is NULL
        pd.testing.assert_series_equal(by_ray[column], by_local[column])
    assert by_ray["refused"].notna().sum() == 2
    assert set(by_ray["run_id"]) == {summary["run_id"]}
    run = runs.loc[summary["run_id"]]
    assert (run["status"], run["output"]) == ("done", "ray_scores")
    assert (run["rows_read"], run["rows_scored"], run["rows_refused"], run["chunks"]) == (
        len(frame), len(frame) - 2, 2, summary["chunks"],
    )  # fmt: skip


@pytest.mark.slow
def test_ray_engine_scores_a_postgresql_table_and_query_as_the_local_engine_does(
    churn: Path,
    home: Path,
    pg_db: str,  # noqa: F811
) -> None:
    """A table read in ranges of its key and a query read by one task (through psycopg), both
    written with COPY by each task."""
    import sqlalchemy as sa

    package(load_manifest(churn), home, actor="t")
    frame = _holdout(churn).rename(columns={"row_id": "id"})
    engine = sa.create_engine(pg_db)
    try:
        frame.to_sql("customers", engine, index=False)
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE customers ADD PRIMARY KEY (id)"))
        common = ["-i", pg_db, "--chunk-rows", "100", "--json"]
        local = run_cpmai("predict", NAME, *common, "--table", "customers",
                          "--output-table", "local_scores")  # fmt: skip
        assert local.code == 0, local.err
        summaries = {}
        for table, source in (
            ("ray_table", ["--table", "customers"]),
            ("ray_query", ["--query", "SELECT * FROM customers WHERE id % 2 = 0", "--key", "id"]),
        ):
            ray = run_cpmai("predict", NAME, *common, *source, "--output-table", table,
                            "--engine", "ray", timeout=RAY_TIMEOUT)  # fmt: skip
            assert ray.code == 0, ray.err
            summaries[table] = json.loads(ray.out)
        with engine.connect() as conn:
            scores = {
                table: pd.read_sql(f"SELECT * FROM {table} ORDER BY id", conn)
                for table in ("local_scores", "ray_table", "ray_query")
            }
            runs = pd.read_sql("SELECT * FROM cpmai_batch_runs", conn).set_index("run_id")
    finally:
        engine.dispose()
    assert summaries["ray_table"]["rows"] == summaries["ray_table"]["scored"] == len(frame)
    assert summaries["ray_table"]["chunks"] == math.ceil(len(frame) / 100)
    assert summaries["ray_query"]["rows"] == len(frame) // 2
    for summary in summaries.values():
        assert runs.loc[summary["run_id"], "status"] == "done"
        assert runs.loc[summary["run_id"], "rows_read"] == summary["rows"]
    local_scores = scores["local_scores"]
    halves = {"ray_table": local_scores, "ray_query": local_scores[local_scores["id"] % 2 == 0]}
    for table, expected in halves.items():
        got = scores[table]
        assert got["id"].tolist() == expected["id"].tolist(), table
        for column in ("prediction", "refused", "version"):
            pd.testing.assert_series_equal(
                got[column].reset_index(drop=True), expected[column].reset_index(drop=True)
            )
