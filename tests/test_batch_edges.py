"""`cpmai predict` with databases at the edges a review found: keys that could have skipped or
repeated rows, NUMERIC features, secrets in a URL's query string, two runs at once, a file
rewritten between a run and its resume. Real SQLite files and a real PostgreSQL server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from _postgres import pg_db, postgres_url  # noqa: F401

from conftest import FEATURES, kill_midway, run_cpmai
from cpmai.artifacts import package
from cpmai.manifest_file import load_manifest

NAME = "churn-classifier"


def _holdout(churn: Path, rows: int) -> pd.DataFrame:
    frame = pd.read_csv(churn.parent / "data" / "holdout.csv")
    return frame.sample(rows, replace=True, random_state=5).reset_index(drop=True)


def _refused(*args: object) -> str:
    result = run_cpmai("predict", NAME, *map(str, args))
    assert result.code == 2 and "Traceback" not in result.err, (args, result.code, result.err)
    return result.err


def test_keys_that_would_skip_or_repeat_rows_are_refused(
    churn: Path,
    home: Path,
    tmp_path: Path,
    pg_db: str,  # noqa: F811
) -> None:
    package(load_manifest(churn), home, actor="t")
    frame = _holdout(churn, 100)
    pg = sa.create_engine(pg_db)
    given = pg_db.replace("postgresql+psycopg://", "postgresql://")
    with pg.begin() as conn:
        # NULLs sort last on PostgreSQL and are never `> last`: only a whole check sees them
        frame.assign(k=[None if i % 10 == 9 else i for i in range(100)]).to_sql("nulls", conn)
        # a float4 key read as a double and bound again is `>` itself
        frame.assign(k=np.arange(1, 101) / 10).to_sql(
            "reals", conn, dtype={"k": sa.REAL()}, index=False
        )
        # a repeat straddling two chunks
        frame.assign(k=[i if i != 11 else 10 for i in range(100)]).to_sql(
            "twice", conn, index=False
        )
    query = ("--query", "SELECT * FROM nulls", "--key", "k", "--chunk-rows", "20")
    assert "no key (NULL)" in _refused("--input", given, *query, "--output-table", "o1")
    assert "floating-point key" in _refused(
        "--input",
        given,
        "--table",
        "reals",
        "--key",
        "k",
        "--chunk-rows",
        "3",
        "--output-table",
        "o2",
    )
    assert "appears more than once" in _refused(
        "--input",
        given,
        "--table",
        "twice",
        "--key",
        "k",
        "--chunk-rows",
        "10",
        "--output-table",
        "o3",
    )
    lite = f"sqlite:///{tmp_path / 'keys.db'}"
    engine = sa.create_engine(lite)
    with engine.begin() as conn:  # two values the column's collation makes equal
        conn.execute(sa.text("CREATE TABLE cased (k TEXT COLLATE NOCASE, "
                             + ", ".join(f'"{c}"' for c in FEATURES) + ")"))  # fmt: skip
    frame[FEATURES].assign(k=[f"k{i:03d}" if i != 21 else "K020" for i in range(100)]).to_sql(
        "cased", engine, index=False, if_exists="append"
    )
    assert "appears more than once" in _refused("--input", lite, "--table", "cased", "--key", "k",
                                                "--chunk-rows", "10")  # fmt: skip
    nothing = _read_count(pg_db, "o1") + _read_count(pg_db, "o2") + _read_count(pg_db, "o3")
    assert nothing == 0  # refused before a row was written
    # and forgotten: the corrected command is a run of its own, not the failed one resumed
    assert _read_count(pg_db, "cpmai_batch_runs") == 0
    pg.dispose()
    engine.dispose()


def _read_count(url: str, table: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())
    except (sa.exc.ProgrammingError, sa.exc.OperationalError):  # no table yet
        return 0
    finally:
        engine.dispose()


def test_numeric_features_and_uuid_keys_from_postgresql(
    churn: Path,
    home: Path,
    pg_db: str,  # noqa: F811
) -> None:
    """Money columns are NUMERIC (psycopg gives Decimal); UUID keys are common: both score,
    and labels keyed by a UUID are matched."""
    import uuid

    package(load_manifest(churn), home, actor="t")
    frame = _holdout(churn, 300)
    frame.insert(0, "id", [uuid.UUID(int=i * 7919) for i in range(300)])
    pg = sa.create_engine(pg_db)
    frame.to_sql(
        "customers", pg, index=False,
        dtype={"monthly_charges": sa.Numeric(10, 2), "id": sa.Uuid()},
    )  # fmt: skip
    given = pg_db.replace("postgresql+psycopg://", "postgresql://")
    done = run_cpmai("predict", NAME, "--input", given, "--table", "customers", "--key", "id",
                     "--output-table", "scored", "--json")  # fmt: skip
    assert done.code == 0, done.err
    summary = json.loads(done.out)
    assert summary["refused"] == 0 and summary["scored"] == 300
    with pg.begin() as conn:
        conn.execute(sa.text("CREATE TABLE outcomes AS SELECT id, churned FROM customers"))
    monitor = run_cpmai(
        "monitor",
        NAME,
        "--env",
        "batch",
        "--labels",
        given,
        "--labels-query",
        "SELECT id, churned FROM outcomes",
        "--labels-key",
        "id",
        "--json",
    )
    assert monitor.code in (0, 4), monitor.err
    assert json.loads(monitor.out)["model_quality"]["labelled_rows"] == 300
    pg.dispose()


def test_secrets_in_a_urls_query_string_are_never_shown(
    churn: Path, home: Path, tmp_path: Path
) -> None:
    package(load_manifest(churn), home, actor="t")
    url = f"sqlite:///{tmp_path / 's.db'}"
    _holdout(churn, 50).assign(k=range(50)).to_sql("t", sa.create_engine(url), index=False)
    failed = run_cpmai(
        "predict",
        NAME,
        "--input",
        "postgresql://u@127.0.0.1:1/db?password=Hunter2pw",
        "--table",
        "t",
    )
    assert failed.code == 2 and "Hunter2pw" not in failed.err and "password=***" in failed.err
    done = run_cpmai("predict", NAME, "--input", url, "--table", "t", "--key", "k", "--output",
                     f"{url}?timeout=5", "--output-table", "o")  # fmt: skip
    assert done.code == 0, done.err
    assert "Hunter2pw" not in (home / "ledger.jsonl").read_text()


def test_two_runs_of_one_command_and_a_file_rewritten_before_resume(
    churn: Path, home: Path, tmp_path: Path
) -> None:
    package(load_manifest(churn), home, actor="t")
    source = tmp_path / "rows.csv"
    _holdout(churn, 20_000).assign(k=range(20_000)).to_csv(source, index=False)
    url = f"sqlite:///{tmp_path / 'o.db'}"
    command = ["predict", NAME, "-i", str(source), "-o", url, "--output-table", "o", "--key",
               "k", "--chunk-rows", "200", "--json"]  # fmt: skip
    kill_midway(command, lambda: _read_count(url, "o") >= 1_000, timeout=60)
    engine = sa.create_engine(url)
    # the same command under a new id while the first is unfinished: one unfinished run a
    # command, so the second insert is refused rather than scoring everything twice
    said = _refused(*command[2:], "--run-id", "second")
    assert "another process started this same run" in said
    # the file rewritten: not the run that was killed (it resumes by row count), a new one
    _holdout(churn, 20_000).assign(k=range(100_000, 120_000)).to_csv(source, index=False)
    fresh = run_cpmai(*command, timeout=300)
    assert fresh.code == 0, fresh.err
    assert json.loads(fresh.out)["resumed_after"] == 0
    with engine.connect() as conn:
        runs = conn.execute(sa.text("SELECT status FROM cpmai_batch_runs ORDER BY started_at"))
        assert [r[0] for r in runs] == ["running", "done"]
    engine.dispose()


@pytest.mark.slow
def test_the_ray_engine_never_replaces_a_folder_it_did_not_write(
    churn: Path, home: Path, tmp_path: Path
) -> None:
    package(load_manifest(churn), home, actor="t")
    data = tmp_path / "data"
    data.mkdir()
    _holdout(churn, 50).to_parquet(data / "customers.parquet")
    _holdout(churn, 5).to_parquet(data / "precious.parquet")
    said = _refused("-i", data / "customers.parquet", "-o", data, "--engine", "ray")
    assert "must not be the input" in said
    other = tmp_path / "other"
    other.mkdir()
    _holdout(churn, 5).to_parquet(other / "mine.parquet")
    said = _refused("-i", data / "customers.parquet", "-o", other, "--engine", "ray")
    assert "is not an output of" in said
    assert sorted(p.name for p in data.iterdir()) == ["customers.parquet", "precious.parquet"]
    assert [p.name for p in other.iterdir()] == ["mine.parquet"]


def test_a_labels_database_that_is_down_leaves_the_rest_judged(
    churn: Path, home: Path, tmp_path: Path
) -> None:
    package(load_manifest(churn), home, actor="t")
    source = tmp_path / "rows.csv"
    _holdout(churn, 300).to_csv(source, index=False)
    assert run_cpmai("predict", NAME, "-i", source, "-o", tmp_path / "out.csv").code == 0
    gone = f"sqlite:///{tmp_path / 'gone.db'}"
    text = churn.read_text()
    churn.write_text(text.replace("\nmonitoring:\n", f"\nmonitoring:\n  labels:\n    url: {gone}\n"
                                  "    query: SELECT id, label FROM outcomes\n", 1))  # fmt: skip
    watched = run_cpmai("monitor", churn, "--env", "batch", "--json")
    assert watched.code in (0, 4), watched.err
    doc = json.loads(watched.out)
    assert doc["model_quality"] is None and "no such database file" in doc["labels_error"]
    assert doc["traffic"]["rows"] == 300  # drift, SLO and data quality are still there
    secret = churn.read_text().replace(gone, "postgresql://u:Hunter2pw@127.0.0.1:1/db")
    (churn.parent / "secret.yaml").write_text(secret)
    refused = run_cpmai("validate", churn.parent / "secret.yaml")
    assert refused.code == 2 and "holds a password" in refused.err
    assert "Hunter2pw" not in refused.err
    asked = run_cpmai("monitor", NAME, "--env", "batch", "--labels", gone, "--labels-query",
                      "SELECT id, label FROM outcomes")  # fmt: skip
    assert asked.code == 2 and "no such database file" in asked.err


def test_a_querys_colons_and_trailing_comment_are_its_own(
    churn: Path, home: Path, tmp_path: Path
) -> None:
    package(load_manifest(churn), home, actor="t")
    url = f"sqlite:///{tmp_path / 'q.db'}"
    frame = _holdout(churn, 40).assign(
        k=range(40), tag=[":vip" if i % 2 else "x" for i in range(40)]
    )
    frame.to_sql("t", sa.create_engine(url), index=False)
    out = tmp_path / "out.csv"
    done = run_cpmai("predict", NAME, "--input", url, "--key", "k", "-o", out, "--json",
                     "--query", "SELECT * FROM t WHERE tag = ':vip' -- the VIPs")  # fmt: skip
    assert done.code == 0, done.err
    assert json.loads(done.out)["rows"] == 20
