"""Batch scoring as Ray Data tasks (`cpmai predict --engine ray`): the local engine's checks and
scoring (`ChunkScorer`), a block of `--chunk-rows` rows at a time, on a Ray cluster's CPUs. This
module is the driver; what runs on the workers is in `cpmai.batch.ray_tasks`.

Reads a Parquet file or folder, a CSV file, or a table or query (SQLite, PostgreSQL). A table
with a single integer key is read in ranges of it, one read task a range; anything else in one
task. (Ray's own `read_sql` sharding, `MOD(ABS(MD5(key)), n)`, works on neither database: SQLite
has no MD5, PostgreSQL no md5(integer) nor abs(text); Ray then reads in one task.) Arrow types
the values: a CSV or SQLite column that a later value does not fit ('many' among numbers) stops
the run, naming the value, where the local engine refuses the row.

Each block goes to a scoring actor that loads the model once. The pool grows from one actor to
one per CPU: one per CPU from the start would hold every CPU while the read waits for one. The
artifact reaches the actors through the object store, not a shared folder. Input and output
paths must be reachable from every node, though: the tasks read and write them.

Writes a Parquet folder (`OUT` or `OUT.parquet`): one file per block, in no particular order,
with the input's columns, `prediction`, the probabilities when asked and `refused`; built in a
hidden folder renamed into place at the end. Or a table, which the driver creates: each block
appended in a transaction of its own (`SqlSink`, COPY on PostgreSQL), the run recorded in
`cpmai_batch_runs` with its totals (`done` or `failed`). Refused rows are kept with their
reason. The prediction log is not written.

A Ray run does not resume (`--run-id` is refused): an interrupted run leaves no Parquet output,
and a table keeps the blocks it committed, under its run id (`DELETE … WHERE run_id = '…'`
drops them). The actors are not restarted, so no block is ever written twice.

Without `--address` a local cluster (a CPU a core) runs for the run only, with token
authentication and a token of its own: Ray would otherwise save one in ~/.ray/auth_token, which
every later `ray start` on the machine then demands of its drivers. It costs about 10 s on a
2-core machine (starting the cluster and its workers, stopping it), where the local engine was
faster at 200,000 rows and at 2,000,000 alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpmai.batch.chunks import REFUSED, ChunkScorer
from cpmai.batch.locations import FileLocation, SqlLocation
from cpmai.batch.ray_tasks import BlockScorer, Spec, artifact_files, error_of
from cpmai.batch.run import BatchJob, BatchResult
from cpmai.batch.runs import DONE, Runs, fingerprint, new_run_id
from cpmai.batch.sql import RUN_ID, SCORED_AT, VERSION, SqlSink, SqlSource, connect_error
from cpmai.errors import CpmaiError, UsageError

if TYPE_CHECKING:
    import pandas as pd
    from ray.data import Dataset

    from cpmai.artifacts import Artifact

MARK = ".cpmai-batch"
"""The file that marks a Parquet folder as this engine's output (one it may replace)."""
MAX_RANGES = 256
"""Read tasks for one table at most (ranges widen past this many blocks' worth of rows)."""
SQLITE_TIMEOUT_S = 300.0
"""How long a task waits for SQLite's lock (the tasks write one at a time)."""
FAILED = "failed"
"""The status in `cpmai_batch_runs` of a Ray run that stopped before its end."""


def score_on_ray(
    job: BatchJob,
    *,
    artifact: Artifact,
    address: str | None,
    record: Callable[[BatchResult], None] | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> BatchResult:
    """Run `job` on the Ray cluster at `address`, or on a local one started for the run.
    `artifact`: the verified artifact `job.predictor` was loaded from. `on_chunk` gets each
    block's row count once written; `record` the result once — finished, or failed with what
    was done so far — before this returns or raises."""
    if job.run_id is not None:
        raise UsageError("--run-id: a Ray run does not resume; run without it, or locally")
    if job.on_refused == "stop":
        raise UsageError("--on-refused stop: the Ray engine keeps refused rows with their reason")
    scorer = ChunkScorer(job.predictor, probabilities=job.probabilities)
    source = _Source(job)
    output = _Output(job, scorer, source)
    scorer.check_columns(list(source.peek.columns), source.where)
    spec = output.spec(job, artifact, source)
    result = BatchResult(
        name=job.name, version=job.version, run_id=spec.run_id, source=source.shown,
        output=output.shown, engine="ray", rows=0, scored=0, refused=0, chunks=0, seconds=0.0,
    )  # fmt: skip
    reasons: Counter[str] = Counter()
    start = time.perf_counter()

    def finish(status: str) -> None:
        result.seconds = time.perf_counter() - start
        result.refused_reasons = dict(reasons.most_common(5))
        result.status = status
        if record is not None:
            record(result)

    try:
        shipped = artifact_files(artifact)
        with _cluster(address) as cpus:
            import ray

            dataset = source.dataset(job.chunk_rows)
            output.begin(spec, result)
            with warnings.catch_warnings():  # max_restarts has no named parameter (yet)
                warnings.simplefilter("ignore", DeprecationWarning)
                scored = dataset.map_batches(
                    BlockScorer, batch_size=job.chunk_rows, batch_format="pandas",
                    concurrency=(1, max(1, cpus)), num_cpus=1, max_restarts=0,
                    fn_constructor_kwargs={"spec": spec, "shipped": [ray.put(shipped)]},
                )  # fmt: skip
            try:
                stats: Any  # one row of counts a block
                for stats in scored.iter_batches(batch_size=None, batch_format="pandas"):
                    for row in stats.to_dict("records"):
                        if row["error"]:
                            raise error_of(str(row["error_kind"]), str(row["error"]))
                        result.rows += int(row["rows"])
                        result.scored += int(row["scored"])
                        result.refused += int(row["refused"])
                        reasons.update(json.loads(row["reasons"]))
                        result.chunks += 1
                        if on_chunk is not None:
                            on_chunk(int(row["rows"]))
            except Exception as exc:
                raise _plain(exc, source.shown) from None
    except BaseException as exc:
        output.abort(result)
        finish("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
        raise
    output.close(result)
    finish("done")
    return result


# --- sources ----------------------------------------------------------------------------------


class _Source:
    """The input, checked on the driver before Ray starts, then read as a Dataset."""

    def __init__(self, job: BatchJob) -> None:
        self.key, self.statements = list(job.key), list[str]()
        self.sql: SqlSource | None = None
        if isinstance(job.source, SqlLocation):
            self._init_sql(job, job.source)
        else:
            self._init_file(job, job.source)
        missing = [k for k in self.key if k not in self.peek.columns]
        if missing:
            raise UsageError(f"--key: {self.where} has no column {', '.join(missing)}")

    def _init_file(self, job: BatchJob, where: FileLocation) -> None:
        import pyarrow as pa
        import pyarrow.csv as csv
        import pyarrow.dataset as ds

        from cpmai.fsutil import not_regular

        if job.table or job.query:
            raise UsageError("--table and --query are for database inputs")
        self.path, suffix = where.path.resolve(), where.path.suffix.lower()
        self.shown, self.where = str(where.path), where.path.name
        self.kind = "parquet" if self.path.is_dir() else suffix[1:]
        if self.path.is_dir() and not any(self.path.rglob("*.parquet")):
            raise UsageError(f"{where.path}: no .parquet files in this folder")
        if self.kind not in ("parquet", "csv"):
            raise UsageError(
                f"{where.path.name}: the Ray engine reads a Parquet file or a folder of them, a "
                "CSV file, or a database table or query"
            )
        why = None if self.path.is_dir() else not_regular(self.path)
        if why or not self.path.exists():
            raise UsageError(f"{where.path}: {why or 'no such file'}")
        try:  # no rows: the columns, typed as Ray's readers type them
            if self.kind == "csv":
                with csv.open_csv(self.path, convert_options=_csv_options()) as reader:
                    schema = reader.schema
            else:
                schema = ds.dataset(self.path, format="parquet", partitioning="hive").schema
        except (OSError, pa.ArrowException) as exc:
            raise UsageError(f"{self.shown}: cannot read: {_first_line(exc)}") from None
        self.peek: pd.DataFrame = schema.empty_table().to_pandas()

    def _init_sql(self, job: BatchJob, where: SqlLocation) -> None:
        import pandas as pd
        from sqlalchemy import literal_column, select

        if where.dialect == "sqlite" and where.sqlite_file() is None:
            raise UsageError(f"--input {where.shown}: tasks cannot share an in-memory database")
        source = self.sql = SqlSource(where, table=job.table, query=job.query, key=job.key)
        self.key, self.location, self.kind = list(source.key), _absolute(where), "sql"
        self.shown, self.where = source.shown, job.table or "the query"
        if source.table is not None:  # the first row: the columns, the key's types
            first = select(source.table).limit(1)
        else:
            inner, _keys = source.selectable()
            first = select(literal_column("*")).select_from(inner).limit(1)
        try:
            with source.engine.connect() as conn:
                found = conn.execute(first)
                self.peek = pd.DataFrame(found.fetchall(), columns=list(found.keys()))
        except Exception as exc:
            raise connect_error(source.where, exc) from None
        self.statements = self._statements(source, job.chunk_rows)

    def _statements(self, source: SqlSource, chunk_rows: int) -> list[str]:
        """One SELECT a read task: ranges of a table's single integer key, else it all."""
        from sqlalchemy import Integer, func, select

        if source.table is None:
            return [str(source.query)]
        table, column = source.table, source.table.c[self.key[0]]
        if len(self.key) != 1 or not isinstance(column.type, Integer):
            return [self._sql(select(table))]
        counts = select(func.min(column), func.max(column), func.count(), func.count(column))
        try:
            with source.engine.connect() as conn:
                low, high, rows, keyed = conn.execute(counts).one()
        except Exception as exc:
            raise connect_error(source.where, exc) from None
        if keyed < rows:
            raise UsageError(f"--key {column.name}: {rows - keyed:,} row(s) have no key (NULL)")
        if not rows:
            return [self._sql(select(table))]
        if not (isinstance(low, int) and isinstance(high, int)):  # SQLite stores what it is given
            return [self._sql(select(table))]
        ranges = max(1, min(MAX_RANGES, math.ceil(rows / chunk_rows), high - low + 1))
        width = math.ceil((high - low + 1) / ranges)
        statements = []
        starts = list(range(low, high + 1, width))
        for i, start in enumerate(starts):
            # the first and last ranges are open: a value between the integers (SQLite keeps
            # 9.5 in an INTEGER column) still falls in one of them
            where = [] if i == 0 else [column >= start]
            if i < len(starts) - 1:
                where.append(column < start + width)
            statements.append(self._sql(select(table).where(*where)))
        return statements

    def _sql(self, statement: Any) -> str:
        assert self.sql is not None
        binds = {"literal_binds": True}
        return str(statement.compile(dialect=self.sql.engine.dialect, compile_kwargs=binds))

    def dataset(self, chunk_rows: int) -> Dataset:
        """The input as a Dataset of blocks of `chunk_rows` rows at most."""
        import ray.data

        if self.kind == "parquet":
            dataset = ray.data.read_parquet(str(self.path))
        elif self.kind == "csv":
            dataset = ray.data.read_csv(str(self.path), convert_options=_csv_options())
        else:
            connect = _connector(self.location)
            parts = [ray.data.read_sql(s, connect, override_num_blocks=1) for s in self.statements]
            dataset = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
        return dataset.repartition(target_num_rows_per_block=chunk_rows)


def _csv_options() -> Any:
    """Empty strings and `NA`-like text as missing values, as pandas (the local engine) reads."""
    import pyarrow.csv as csv

    return csv.ConvertOptions(strings_can_be_null=True)


def _absolute(where: SqlLocation) -> SqlLocation:
    """A SQLite URL with its file's absolute path (a task's working folder is not the driver's)
    and a lock timeout long enough for tasks writing one after another."""
    from sqlalchemy.engine import make_url

    path = where.sqlite_file()
    if path is None:
        return where
    url = make_url(where.url).set(database=str(path.resolve()))
    if "timeout" not in url.query:
        url = url.update_query_dict({"timeout": str(SQLITE_TIMEOUT_S)})
    return dataclasses.replace(where, url=url.render_as_string(hide_password=False))


def _connector(where: SqlLocation) -> Callable[[], Any]:
    """A DB-API connection factory for `ray.data.read_sql` (picklable: the tasks run it)."""
    import functools
    import sqlite3

    from sqlalchemy.engine import make_url

    url = make_url(where.url)
    if where.dialect == "sqlite":
        return functools.partial(sqlite3.connect, str(url.database), timeout=SQLITE_TIMEOUT_S)
    import psycopg  # the postgres extra, there when the URL was accepted

    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    return functools.partial(psycopg.connect, conninfo)


# --- outputs ----------------------------------------------------------------------------------


class _Output:
    """A Parquet folder or a table, checked on the driver before Ray starts."""

    def __init__(self, job: BatchJob, scorer: ChunkScorer, source: _Source) -> None:
        self.job, self.scorer, self.key = job, scorer, source.key
        self.sink: SqlSink | None = None
        self.runs: Runs | None = None
        self.folder: Path | None = None
        self.partial: Path | None = None
        if isinstance(job.output, SqlLocation):
            self._init_table(job, job.output, scorer)
            return
        path, folder = job.output.path, job.output.path.resolve()
        if job.output_table:
            raise UsageError("--output-table is for database outputs")
        if path.suffix.lower() not in ("", ".parquet"):
            raise UsageError(
                f"{path.name}: the Ray engine writes a Parquet folder (OUT or OUT.parquet), one "
                "file per block, or a database table"
            )
        if source.kind != "sql" and (
            folder.is_relative_to(source.path) or source.path.is_relative_to(folder)
        ):
            raise UsageError("--output must not be the input, inside it, nor hold it")
        if folder.exists() and not (folder / MARK).is_file():
            # only a folder this engine wrote is replaced: anything else may be the user's
            raise UsageError(
                f"--output {path}: exists and is not an output of `cpmai predict --engine ray` "
                "(remove it, or name another)"
            )
        self.folder, self.shown = folder, str(path)

    def _init_table(self, job: BatchJob, where: SqlLocation, scorer: ChunkScorer) -> None:
        if not job.output_table:
            raise UsageError(f"--output {where.shown}: name the table with --output-table T")
        if not self.key:
            raise UsageError("--key: name the column(s) that identify a row in the output table")
        if where.dialect == "sqlite" and where.sqlite_file() is None:
            raise UsageError(f"--output {where.shown}: tasks cannot share an in-memory database")
        clash = [k for k in self.key
                 if k in (*scorer.output_names, VERSION, RUN_ID, SCORED_AT, REFUSED)]  # fmt: skip
        if clash:
            raise UsageError(f"--key {','.join(clash)}: the output table has a column of that name")
        self.location = _absolute(where)
        self.sink = SqlSink(self.location, job.output_table)
        self.runs, self.shown = Runs(self.sink), self.sink.shown

    def spec(self, job: BatchJob, artifact: Artifact, source: _Source) -> Spec:
        from sqlalchemy import Text

        from cpmai.batch.sql import column_type, output_types, prediction_type

        run_id, predictor, peek, table = new_run_id(), job.predictor, source.peek, bool(self.sink)
        outputs = output_types(self.scorer.output_names, predictor.classes, job.task)
        kind = prediction_type(predictor.classes, job.task).__name__
        arrow = {"BigInteger": "int64", "Boolean": "bool", "Float": "float64"}.get(kind, "string")
        if self.folder is not None:
            self.partial = self.folder.with_name(f".{self.folder.name}.partial-{run_id}")
        return Spec(
            name=job.name, version=job.version, digest=artifact.digest, meta=artifact.meta,
            runtime=str(predictor.runtime.get("runtime", predictor.flavor)),
            probabilities=job.probabilities, where=source.where, key=tuple(self.key),
            check_key=bool(self.key) and (source.kind == "sql" or table), run_id=run_id,
            folder=str(self.partial) if self.partial else None,
            sql=self.location if table else None, table=job.output_table if table else None,
            key_types={k: column_type(peek[k]) if len(peek) or source.kind != "sql" else Text
                       for k in self.key},
            outputs=outputs, prediction_type=arrow,
        )  # fmt: skip

    def begin(self, spec: Spec, result: BatchResult) -> None:
        """The hidden folder made, or the output table created and the run recorded."""
        if self.partial is not None:
            self.partial.mkdir(parents=True)
            return
        assert self.sink is not None and self.runs is not None
        self.sink.prepare(spec.key_types, spec.outputs)
        job = self.job
        mark = fingerprint(
            model=job.name, version=job.version, source=result.source, output=self.sink.shown,
            key=self.key, probabilities=job.probabilities, engine="ray", run_id=spec.run_id,
        )  # fmt: skip
        self.runs.begin(mark, model=job.name, version=job.version, source=result.source,
                        run_id=spec.run_id, new_run=True)  # fmt: skip

    def close(self, result: BatchResult) -> None:
        """The run recorded as done, or the written folder renamed into place."""
        if self.runs is not None:
            self._settle(result, DONE)
            return
        assert self.folder is not None and self.partial is not None
        for leftover in self.partial.glob(".*"):  # a file a task did not finish
            leftover.unlink()
        old = self.folder.with_name(f".{self.folder.name}.old-{result.run_id}")
        if self.folder.exists():  # an earlier output, replaced (as the local engine does)
            self.folder.rename(old)
        (self.partial / MARK).write_text(json.dumps({"run_id": result.run_id}) + "\n")
        self.partial.rename(self.folder)
        if old.is_dir():
            shutil.rmtree(old)
        old.unlink(missing_ok=True)

    def abort(self, result: BatchResult) -> None:
        """The run recorded as failed (a table); the hidden folder removed."""
        if self.partial is not None:
            shutil.rmtree(self.partial, ignore_errors=True)
        if self.runs is not None:
            with contextlib.suppress(CpmaiError):  # the database failed: the error says why
                self._settle(result, FAILED)

    def _settle(self, result: BatchResult, status: str) -> None:
        from sqlalchemy import update

        assert self.runs is not None
        t, now = self.runs.table, datetime.now(UTC)
        done = update(t).where(t.c.run_id == result.run_id).values(
            status=status, rows_read=result.rows, rows_scored=result.scored,
            rows_refused=result.refused, chunks=result.chunks, updated_at=now, finished_at=now,
        )  # fmt: skip
        try:
            with self.runs.sink.engine.begin() as conn:
                conn.execute(done)
        except Exception as exc:
            raise connect_error(self.runs.sink.where, exc) from None


# --- the cluster ------------------------------------------------------------------------------


@contextmanager
def _cluster(address: str | None) -> Iterator[int]:
    """Connected to the cluster at `address` (disconnected at the end), or to a local one
    started for the run (shut down at the end); yields its CPU count. Ray's own messages stay
    in its session's logs; the process's settings and environment are restored at the end."""
    import logging
    import secrets

    import ray
    import ray.data

    context = ray.data.DataContext.get_current()
    settings = {
        "enable_progress_bars": False, "print_on_execution_start": False,
        "enable_auto_log_stats": False,
        # Ray cuts a read into 200 blocks at least (600 rows: 200 blocks of 3); the repartition
        # after the read cuts blocks to the chunk size instead
        "read_op_min_num_blocks": 1,
        # numpy-backed frames, as the local engine's: in an Arrow-backed column a missing value
        # is pd.NA, which the checks refuse as a value ("expected a number, got <NA>")
        "enable_arrow_backed_pandas_conversion": False,
    }  # fmt: skip
    own = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled" or address is not None:
        del own["RAY_AUTH_TOKEN"]
    owned = not ray.is_initialized()
    loggers = [logging.getLogger(name) for name in ("ray", "ray.data")]  # tasks' tracebacks
    saved_settings = {name: getattr(context, name) for name in settings}
    saved_levels = [logger.level for logger in loggers]
    saved_env = {name: os.environ.get(name) for name in (*own, "RAY_AUTH_MODE")}  # init sets it
    try:
        for name, value in settings.items():
            setattr(context, name, value)
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        if owned and address is None:
            os.environ.update(own)
        try:
            if owned:
                _connect(address)
            resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
            yield int(resources.get("CPU", 1))
        finally:
            if owned:
                ray.shutdown()
    finally:
        for name, value in saved_settings.items():
            setattr(context, name, value)
        for logger, level in zip(loggers, saved_levels, strict=True):
            logger.setLevel(level)
        for name, text in saved_env.items():
            if text is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = text


def _connect(address: str | None) -> None:
    import logging
    import re
    import socket

    import ray

    options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        ray.init("local", num_cpus=cpus or 1, include_dashboard=False, **options)
        return
    found = re.fullmatch(r"\[?([\w.:-]+?)\]?:(\d+)", address)  # ray://… and auto: Ray's to try
    try:  # nothing listening: said now (Ray would retry for minutes)
        if found is not None:
            socket.create_connection((found.group(1), int(found.group(2))), timeout=10).close()
        ray.init(address=address, **options)
    except (OSError, ValueError, RuntimeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _first_line(exc)
        raise UsageError(f"--address {address}: no Ray cluster there ({reason})") from None


def _plain(exc: BaseException, shown: str) -> BaseException:
    """What a task raised, without Ray's wrapping: cpmai's errors as they are, a value the
    column's type cannot hold as a UsageError; anything else as it came."""
    import pyarrow as pa

    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        cause = getattr(current, "cause", None)  # a RayTaskError's: the task's own exception
        current = cause if isinstance(cause, BaseException) else current.__cause__
    for found in reversed(seen):  # the innermost: Ray's wrappers say where, not what
        if isinstance(found, CpmaiError):
            return found if found is exc else error_of(type(found).__name__, found.message)
        if isinstance(found, pa.ArrowInvalid):
            return UsageError(f"{shown}: cannot read: {_first_line(found)}")
    return exc


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
