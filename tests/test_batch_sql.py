"""`cpmai predict` from and to databases: SQLite (embedded) and a real PostgreSQL server.

Real subprocesses, real databases, a real SIGKILL in the middle of a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from _postgres import pg_db, postgres_url  # noqa: F401

from conftest import CPMAI, FEATURES, kill_midway, run_cpmai
from cpmai.artifacts import package
from cpmai.manifest_file import load_manifest

NAME = "churn-classifier"


def _rows(churn: Path, count: int) -> pd.DataFrame:
    """`count` rows drawn from the example's holdout, with a unique `customer_id`."""
    holdout = pd.read_csv(churn.parent / "data" / "holdout.csv")
    frame = holdout.sample(count, replace=count > len(holdout), random_state=7)
    frame = frame.reset_index(drop=True)
    frame.insert(0, "customer_id", np.arange(1, count + 1) * 3)  # keys are not row numbers
    return frame


def _url(kind: str, tmp_path: Path, pg: str) -> tuple[str, str]:
    """(the URL a user gives cpmai, the URL SQLAlchemy uses in the test)."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'scores.db'}"
        return url, url
    return pg.replace("postgresql+psycopg://", "postgresql://"), pg


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "sqlite":
        return _url("sqlite", tmp_path, "")
    return _url("postgresql", tmp_path, request.getfixturevalue("pg_db"))


def _load(url: str, frame: pd.DataFrame, table: str) -> None:
    """`frame` into a new table whose primary key is `customer_id`."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(pd.io.sql.get_schema(frame, table, keys="customer_id", con=conn)))
        frame.to_sql(table, conn, index=False, if_exists="append", chunksize=20_000)
    engine.dispose()


def _read(url: str, sql: str) -> pd.DataFrame:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        frame = pd.read_sql(sa.text(sql), conn)
    engine.dispose()
    return frame


@pytest.mark.slow
def test_table_to_table_round_trip(
    churn: Path, home: Path, tmp_path: Path, database: tuple[str, str]
) -> None:
    given, url = database
    package(load_manifest(churn), home, actor="t")
    frame = _rows(churn, 100_000)
    frame["support_calls"] = frame["support_calls"].astype(object)
    frame.loc[[10, 70_000], "support_calls"] = "many"  # refused, reported, not lost
    _load(url, frame, "customers")
    result = run_cpmai(
        "predict", NAME, "--input", given, "--table", "customers", "--key", "customer_id",
        "--output-table", "scored", "--probabilities", "--json", timeout=300,
    )  # fmt: skip
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["rows"] == 100_000 and summary["scored"] == 99_998
    assert summary["refused"] == 2 and summary["status"] == "done"
    (reason,) = summary["refused_reasons"]
    assert "support_calls" in reason and "many" in reason
    scored = _read(url, "SELECT * FROM scored ORDER BY customer_id")
    assert len(scored) == 100_000
    assert scored["customer_id"].tolist() == sorted(frame["customer_id"].tolist())
    assert set(scored["run_id"]) == {summary["run_id"]} and set(scored["version"]) == {"1.0.0"}
    refused = scored[scored["refused"].notna()]
    assert sorted(refused["customer_id"]) == sorted(frame.loc[[10, 70_000], "customer_id"])
    assert refused["prediction"].isna().all()
    good = frame.drop(index=[10, 70_000]).sort_values("customer_id")
    kept = scored[scored["refused"].isna()]
    model = joblib.load(churn.parent / "model.joblib")
    clean = good[FEATURES].astype({"support_calls": float})
    assert kept["prediction"].astype(int).tolist() == model.predict(clean).tolist()
    assert np.allclose(kept["probability_1"], model.predict_proba(clean)[:, 1], atol=1e-5)
    runs = _read(url, "SELECT * FROM cpmai_batch_runs")
    assert runs["status"].tolist() == ["done"] and runs["rows_read"].tolist() == [100_000]
    assert "password" not in runs["source"][0]
    ledger = [json.loads(line) for line in (home / "ledger.jsonl").read_text().splitlines()]
    (event,) = [e for e in ledger if e["action"] == "batch"]
    assert event["details"]["run_id"] == summary["run_id"] and event["env"] == "batch"
    assert event["details"]["rows"] == 100_000 and event["details"]["refused"] == 2


@pytest.mark.slow
def test_a_run_killed_midway_resumes_with_every_row_once(
    churn: Path, home: Path, tmp_path: Path, database: tuple[str, str]
) -> None:
    given, url = database
    package(load_manifest(churn), home, actor="t")
    frame = _rows(churn, 60_000)
    _load(url, frame, "customers")
    command = [*CPMAI, "predict", NAME, "--input", given, "--table", "customers",
               "--output-table", "scored", "--key", "customer_id", "--chunk-rows", "500",
               "--json"]  # fmt: skip
    engine = sa.create_engine(url)

    def five_chunks_written() -> bool:
        try:
            with engine.connect() as conn:
                chunks = conn.execute(sa.text("SELECT chunks FROM cpmai_batch_runs")).scalar()
        except (sa.exc.OperationalError, sa.exc.ProgrammingError):
            return False  # not created yet
        return bool(chunks and chunks >= 5)

    try:
        kill_midway(command[3:], five_chunks_written)
    finally:
        engine.dispose()
    partial = _read(url, "SELECT count(*) AS n FROM scored")["n"][0]
    assert 0 < partial < 60_000 and partial % 500 == 0  # whole chunks only
    again = run_cpmai(*command[3:], timeout=300)
    assert again.code == 0, again.err
    summary = json.loads(again.out)
    assert summary["resumed_after"] == partial and summary["rows"] == 60_000 - partial
    scored = _read(url, "SELECT customer_id, run_id FROM scored")
    assert len(scored) == 60_000 and scored["customer_id"].is_unique
    assert set(scored["customer_id"]) == set(frame["customer_id"])
    assert set(scored["run_id"]) == {summary["run_id"]}
    runs = _read(url, "SELECT status, rows_read FROM cpmai_batch_runs")
    assert runs.to_dict("records") == [{"status": "done", "rows_read": 60_000}]
    # the same command once more is a new run (tonight's scoring), not a resumed one
    third = run_cpmai(*command[3:], timeout=300)
    assert third.code == 0 and json.loads(third.out)["resumed_after"] == 0


def test_query_input_file_output_and_bad_requests(
    churn: Path, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package(load_manifest(churn), home, actor="t")
    url = f"sqlite:///{tmp_path / 'in.db'}"
    frame = _rows(churn, 300)
    _load(url, frame, "customers")
    out = tmp_path / "out.csv"
    monkeypatch.setenv("SCORES_DB", url)
    ok = run_cpmai(
        "predict", NAME, "--input", "env:SCORES_DB",
        "--query", "SELECT * FROM customers WHERE plan = 'basic';", "--key", "customer_id",
        "--output", out, "--json",
    )  # fmt: skip
    assert ok.code == 0, ok.err
    basic = frame[frame["plan"] == "basic"]
    scored = pd.read_csv(out)
    assert scored["customer_id"].tolist() == sorted(basic["customer_id"])
    assert scored.columns.tolist() == [*frame.columns, "prediction"]

    def refused(*args: Any) -> str:
        result = run_cpmai("predict", NAME, *map(str, args))
        assert result.code == 2, (args, result.code, result.err)
        assert "Traceback" not in result.err
        return result.err

    assert "no table 'nope'" in refused("--input", url, "--table", "nope")
    assert "--key" in refused("--input", url, "--query", "SELECT * FROM customers", "-o", out)
    assert "give --table T or --query" in refused("--input", url, "-o", out)
    assert "mysql" in refused("--input", "mysql://u@h/db", "--table", "t")
    assert "not set" in refused("--input", "env:NO_SUCH_VARIABLE_HERE", "--table", "t")
    missing = f"sqlite:///{tmp_path / 'absent.db'}"
    assert "no such database file" in refused("--input", missing, "--table", "t")
    assert not (tmp_path / "absent.db").exists()
    assert "syntax error" in refused("--input", url, "--query", "SELEC nothing", "--key", "a",
                                     "-o", out)  # fmt: skip
    with sa.create_engine(url).begin() as conn:
        conn.execute(sa.text("CREATE TABLE twice (customer_id INTEGER, plan TEXT)"))
        conn.execute(sa.text("CREATE TABLE other (customer_id INTEGER, prediction TEXT)"))
    frame.assign(customer_id=1).to_sql("dupes", sa.create_engine(url), index=False)
    assert "appears more than once" in refused(
        "--input", url, "--table", "dupes", "--key", "customer_id"
    )
    assert "without column(s)" in refused(
        "--input", url, "--table", "customers", "--key", "customer_id", "--output-table", "other"
    )
    assert "--run-id" in refused("--input", url, "--table", "customers", "-o", out,
                                 "--key", "customer_id", "--run-id", "x")  # fmt: skip
    pg_ok = run_cpmai("predict", NAME, "--input", "postgresql://nobody@127.0.0.1:1/none",
                      "--table", "t")  # fmt: skip
    assert pg_ok.code == 2 and "127.0.0.1" in pg_ok.err and "Traceback" not in pg_ok.err


@pytest.mark.slow
def test_labels_from_a_table_arrive_late_and_are_matched(
    churn: Path, home: Path, tmp_path: Path, database: tuple[str, str]
) -> None:
    from sklearn.metrics import accuracy_score, f1_score

    given, url = database
    package(load_manifest(churn), home, actor="t")
    frame = _rows(churn, 4_000)
    _load(url, frame, "customers")
    scored = run_cpmai("predict", NAME, "--input", given, "--table", "customers",
                       "--output-table", "scored", "--chunk-rows", "1000")  # fmt: skip
    # (the key: the table's primary key, customer_id)
    assert scored.code == 0, scored.err
    outcomes = frame[["customer_id", "churned"]].rename(columns={"churned": "outcome"})
    engine = sa.create_engine(url)
    outcomes.head(2_500).to_sql("outcomes", engine, index=False)  # the rest arrive later
    engine.dispose()

    def quality(*how: str) -> dict[str, Any]:
        result = run_cpmai("monitor", *how, "--env", "batch", "--json")
        assert result.code in (0, 4), result.err
        doc: dict[str, Any] = json.loads(result.out)["model_quality"]
        return doc

    def expected(labelled: pd.DataFrame) -> tuple[float, float]:
        said = _read(url, "SELECT customer_id, prediction FROM scored")
        joined = labelled.merge(said, on="customer_id")
        return (
            accuracy_score(joined["outcome"], joined["prediction"]),
            f1_score(joined["outcome"], joined["prediction"]),
        )

    flags = ("--labels", given, "--labels-query", "SELECT customer_id, outcome FROM outcomes",
             "--labels-key", "customer_id")  # fmt: skip
    early = quality(NAME, *flags)
    assert early["join"] == "key" and early["labelled_rows"] == 2_500
    accuracy, f1 = expected(outcomes.head(2_500))
    assert early["metrics"]["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert early["metrics"]["f1"] == pytest.approx(f1, abs=1e-6)

    engine = sa.create_engine(url)
    outcomes.iloc[2_500:].to_sql("outcomes", engine, index=False, if_exists="append")
    engine.dispose()
    labels = (
        "\nmonitoring:\n  labels:\n"
        f"    url: {given}\n"
        "    query: SELECT customer_id, outcome FROM outcomes\n"
        "    key: [customer_id]\n"
        "    label: outcome\n"
    )
    text = churn.read_text()
    assert "\nmonitoring:\n" in text
    churn.write_text(text.replace("\nmonitoring:\n", labels, 1))
    late = quality(str(churn))  # the manifest's monitoring.labels, no flags
    assert late["join"] == "key" and late["labelled_rows"] == 4_000
    accuracy, _f1 = expected(outcomes)
    assert late["metrics"]["accuracy"] == pytest.approx(accuracy, abs=1e-6)


def test_a_damaged_run_record_is_refused_not_trusted(
    churn: Path, home: Path, tmp_path: Path
) -> None:
    package(load_manifest(churn), home, actor="t")
    url = f"sqlite:///{tmp_path / 'scores.db'}"
    _load(url, _rows(churn, 1_000), "customers")
    command = ("predict", NAME, "--input", url, "--table", "customers", "--chunk-rows", "100")
    assert run_cpmai(*command).code == 0
    engine = sa.create_engine(url)

    def edit(sql: str) -> str:
        with engine.begin() as conn:
            conn.execute(sa.text(sql))
        result = run_cpmai(*command)
        assert result.code == 2 and "Traceback" not in result.err, result.err
        return result.err

    # an unfinished run whose record no longer matches its rows: neither skipped nor repeated
    said = edit("UPDATE cpmai_batch_runs SET status = 'running', rows_read = 500, "
                "rows_scored = 500, last_key = '[1500]'")  # fmt: skip
    assert "says 500 rows were written" in said and "holds 1,000" in said
    assert "is damaged" in edit("UPDATE cpmai_batch_runs SET last_key = '{oops'")
    assert "is damaged" in edit("UPDATE cpmai_batch_runs SET last_key = '[3]', rows_read = -1")
    fresh = run_cpmai(*command, "--new-run", "--json")
    assert fresh.code == 0 and json.loads(fresh.out)["rows"] == 1_000
    engine.dispose()


def test_kept_refusals_in_files_keep_one_header_and_integer_labels(
    churn: Path, home: Path, tmp_path: Path
) -> None:
    package(load_manifest(churn), home, actor="t")
    frame = _rows(churn, 300)
    frame.loc[250, "monthly_charges"] = np.inf  # refused, in the third chunk
    source = tmp_path / "in.parquet"
    frame.to_parquet(source)
    for suffix in (".csv", ".parquet", ".jsonl"):
        out = tmp_path / f"out{suffix}"
        result = run_cpmai("predict", NAME, "-i", source, "-o", out, "--on-refused", "keep",
                           "--chunk-rows", "100", "--json")  # fmt: skip
        assert result.code == 0, result.err
        assert json.loads(result.out)["refused"] == 1
        read = {".csv": pd.read_csv, ".parquet": pd.read_parquet}.get(suffix)
        got = read(out) if read else pd.read_json(out, lines=True)
        assert got.columns.tolist() == [*frame.columns, "prediction", "refused"]
        assert got["refused"].notna().tolist() == [i == 250 for i in range(300)]
        assert "monthly_charges" in got.loc[250, "refused"]
        labels = got["prediction"].drop(index=250)
        assert set(labels.astype(int)) <= {0, 1} and (labels == labels.astype(int)).all()
    text = (tmp_path / "out.csv").read_text().splitlines()
    assert len(text) == 301 and all(line.count(",") >= 10 for line in text[1:])
    assert text[252].split(",")[-2] in ("0", "1") and "." not in text[252].split(",")[-2]


def test_keys_of_other_types_page_and_resume_exactly(
    churn: Path,
    home: Path,
    tmp_path: Path,
    pg_db: str,  # noqa: F811
) -> None:
    """A timestamp key and a text key on PostgreSQL (typed comparisons), the next chunk bound
    from the last row read and a resumed run from the JSON kept in cpmai_batch_runs; on SQLite a
    date key is refused (it compares as text there), a text key pages."""
    package(load_manifest(churn), home, actor="t")
    frame = _rows(churn, 1_000).drop(columns=["customer_id"])
    frame.insert(0, "seen_at", pd.date_range("2026-01-01", periods=1_000, freq="37min", tz="UTC"))
    frame.insert(1, "code", [f"c-{i:05d}" for i in range(1_000)])
    engine = sa.create_engine(pg_db)
    frame.to_sql("events", engine, index=False)
    given = pg_db.replace("postgresql+psycopg://", "postgresql://")
    for key in ("seen_at", "code"):
        command = ("predict", NAME, "--input", given, "--table", "events", "--key", key,
                   "--output-table", f"by_{key}", "--chunk-rows", "64", "--json")  # fmt: skip
        first = run_cpmai(*command)
        assert first.code == 0, first.err
        assert json.loads(first.out)["rows"] == 1_000
        # as if the run had been killed after 8 chunks: its record and rows cut back to them
        with engine.begin() as conn:
            keys = conn.execute(sa.text(f"SELECT {key} FROM by_{key} ORDER BY {key}")).scalars()
            kept = list(keys)[:512]
            conn.execute(sa.text(f"DELETE FROM by_{key} WHERE {key} > :last"), {"last": kept[-1]})
            last = json.dumps([kept[-1].isoformat() if key == "seen_at" else kept[-1]])
            conn.execute(
                sa.text("UPDATE cpmai_batch_runs SET status = 'running', rows_read = 512, "
                        "rows_scored = 512, chunks = 8, last_key = :last WHERE output = :out"),
                {"last": last, "out": f"by_{key}"},
            )  # fmt: skip
        again = run_cpmai(*command)
        assert again.code == 0, again.err
        assert json.loads(again.out)["resumed_after"] == 512
        got = _read(pg_db, f"SELECT {key} FROM by_{key}")[key]
        assert len(got) == 1_000 and got.is_unique
    engine.dispose()

    lite = f"sqlite:///{tmp_path / 'events.db'}"
    frame.to_sql("events", sa.create_engine(lite), index=False)
    refused = run_cpmai("predict", NAME, "--input", lite, "--table", "events", "--key", "seen_at")
    assert refused.code == 2 and "compares dates" in refused.err
    paged = run_cpmai("predict", NAME, "--input", lite, "--table", "events", "--key", "code",
                      "--chunk-rows", "64", "--json")  # fmt: skip
    assert paged.code == 0 and json.loads(paged.out)["rows"] == 1_000
    assert _read(lite, "SELECT count(DISTINCT code) AS n FROM events_predictions")["n"][0] == 1_000
