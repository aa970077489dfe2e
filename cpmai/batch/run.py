"""A batch run: rows from a file or a database, scored chunk by chunk, written to a file or a
table, sampled into the prediction log and recorded in the ledger.

Memory stays flat whatever the number of rows: one chunk is in memory at a time. A file output
is written to a temporary file renamed into place when complete; a table output is written a
chunk a transaction, with the run's progress (`cpmai.batch.runs`), so an interrupted run goes on
where it stopped when the same command runs again.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cpmai.batch.chunks import REFUSED, ChunkScorer, OnRefused, Scored
from cpmai.batch.files import READABLE, WRITABLE, FileWriter, read_chunks
from cpmai.batch.locations import FileLocation, SqlLocation
from cpmai.batch.sql import RUN_ID, SCORED_AT, VERSION, Chunk, SqlSink, SqlSource, check_key_values
from cpmai.errors import CpmaiError, UsageError

if TYPE_CHECKING:
    import pandas as pd

    from cpmai.batch.runs import Progress, Runs
    from cpmai.predlog.writer import PredictionLog
    from cpmai.runtime.predictor import Predictor

ACTION = "batch"
"""The ledger action of a batch run."""


@dataclass
class BatchJob:
    """What to score, with what, from where to where."""

    name: str
    version: str
    predictor: Predictor
    source: FileLocation | SqlLocation
    output: FileLocation | SqlLocation
    table: str | None = None
    query: str | None = None
    output_table: str | None = None
    key: list[str] = field(default_factory=list)
    probabilities: bool = False
    chunk_rows: int = 50_000
    run_id: str | None = None
    new_run: bool = False
    on_refused: OnRefused | None = None
    """None: `keep` for a table output, `stop` for a file."""
    engine: str = "local"
    task: str = "classification"


@dataclass
class BatchResult:
    name: str
    version: str
    run_id: str
    source: str
    output: str
    engine: str
    rows: int
    """Rows this invocation read."""
    scored: int
    refused: int
    chunks: int
    seconds: float
    resumed_after: int = 0
    """Rows an earlier invocation of the same run had written (0 for a new run)."""
    refused_reasons: dict[str, int] = field(default_factory=dict)
    """The most frequent reasons rows were refused, with their counts."""
    status: str = "done"

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "run_id": self.run_id,
            "engine": self.engine,
            "source": self.source,
            "output": self.output,
            "status": self.status,
            "rows": self.rows,
            "scored": self.scored,
            "refused": self.refused,
            "refused_reasons": self.refused_reasons,
            "resumed_after": self.resumed_after,
            "chunks": self.chunks,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
        }


def score_batch(
    job: BatchJob,
    *,
    log: PredictionLog | None = None,
    on_chunk: Callable[[int], None] | None = None,
    record: Callable[[BatchResult], None] | None = None,
) -> BatchResult:
    """Run `job`. `record` is called once with the result — finished, or failed with what was
    done so far — before this returns or raises (the ledger event)."""
    scorer = ChunkScorer(job.predictor, probabilities=job.probabilities)
    on_refused: OnRefused = job.on_refused or (
        "keep" if isinstance(job.output, SqlLocation) else "stop"
    )
    reader = _reader(job)
    sink: _FileSink | _TableSink
    if isinstance(job.output, SqlLocation):
        sink = _TableSink(job, scorer, reader)
    else:
        sink = _FileSink(job, reader)
    progress = sink.begin()
    result = BatchResult(
        name=job.name, version=job.version, run_id=progress.run_id, source=reader.shown,
        output=sink.shown, engine=job.engine, rows=0, scored=0, refused=0, chunks=0,
        seconds=0.0, resumed_after=progress.rows_read,
    )  # fmt: skip
    reasons: Counter[str] = Counter()
    start = time.perf_counter()
    try:
        for chunk in reader.chunks(job.chunk_rows, progress):
            where = reader.where_name
            scored = scorer.score(
                chunk.frame, on_refused=on_refused, where=where, first_row=chunk.first_row
            )
            sink.write(chunk, scored, progress)
            if log is not None:
                _log(log, chunk, scored, reader.key)
            result.rows += len(chunk.frame)
            result.scored += len(scored.served_rows)
            result.refused += len(scored.refused)
            reasons.update(scored.refused.values())
            result.chunks += 1
            if on_chunk is not None:
                on_chunk(len(chunk.frame))
        sink.close(progress)
    except BaseException as exc:
        sink.abort()
        result.seconds = time.perf_counter() - start
        result.refused_reasons = dict(reasons.most_common(5))
        result.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        if record is not None:
            record(result)
        raise
    result.seconds = time.perf_counter() - start
    result.refused_reasons = dict(reasons.most_common(5))
    if record is not None:
        record(result)
    return result


def _log(log: PredictionLog, chunk: Chunk, scored: Scored, key: list[str]) -> None:
    """The chunk's scored rows to the prediction log: one entry a row with its key as the
    request id when the input has a key (labels join on it), else one entry for the chunk."""
    if not scored.served_rows:
        return
    took = scored.model_seconds
    if not key:
        log.record("batch", 200, took, len(scored.served_rows), scored.served,
                   scored.served_labels, warnings=scored.warnings)  # fmt: skip
        return
    ids = row_ids(chunk.frame, key, scored.served_rows)
    each = took / len(ids)
    now = time.time()
    entries: list[Any] = [
        (now, 0.0, each, "batch", 200, 1, rid, None, None, False, i, None)
        for i, rid in enumerate(ids)
    ]
    if scored.warnings:
        first = list(entries[0])
        first[7] = scored.warnings
        entries[0] = tuple(first)
    log.served((scored.served, scored.served_labels, None), entries)


def row_ids(frame: pd.DataFrame, key: list[str], rows: list[int]) -> list[Any]:
    """The request ids the scored rows are logged under (`cpmai.predlog.entry.key_id`)."""
    from cpmai.predlog.entry import key_id

    columns = [frame[k].tolist() for k in key]
    return [key_id([column[i] for column in columns]) for i in rows]


# --- sources ----------------------------------------------------------------------------------


class _FileReader:
    def __init__(self, job: BatchJob, where: FileLocation) -> None:
        from cpmai.fsutil import not_regular

        path = where.path
        if job.table or job.query:
            raise UsageError("--table and --query are for database inputs")
        if path.suffix.lower() not in READABLE:
            raise UsageError(
                f"{path.name}: cannot read {path.suffix or 'this'} files (use "
                f"{', '.join(READABLE)}, or a database URL)"
            )
        why = not_regular(path)
        if why is not None:
            raise UsageError(f"{path}: {why}")
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
        self.path = path
        self.key = job.key
        self.shown = str(path)
        self.where_name = path.name
        stat = path.stat()
        self.identity = f"{path.resolve()} ({stat.st_size} bytes, mtime {stat.st_mtime_ns})"
        """What a resumed run must find again: the same file, unchanged (it resumes by row
        count, so a file rewritten meanwhile makes a new run, not a skipped head)."""

    def chunks(self, chunk_rows: int, progress: Progress) -> Iterator[Chunk]:
        """The file's rows after the `progress.rows_read` an earlier invocation wrote."""
        skip = progress.rows_read
        first = 0
        for frame in read_chunks(self.path, chunk_rows):
            if self.key:
                missing = [k for k in self.key if k not in frame.columns]
                if missing:
                    raise UsageError(f"--key: {self.path.name} has no column {', '.join(missing)}")
            if self.key:
                check_key_values(frame, self.key, first)
            if skip >= len(frame):
                skip -= len(frame)
                first += len(frame)
                continue
            if skip:
                frame = frame.iloc[skip:]
                first += skip
                skip = 0
            frame = frame.reset_index(drop=True)
            yield Chunk(frame, first, None)
            first += len(frame)


class _TableReader:
    def __init__(self, job: BatchJob, where: SqlLocation) -> None:
        self.source = SqlSource(where, table=job.table, query=job.query, key=job.key)
        self.key = self.source.key
        self.shown = self.source.shown
        self.identity = self.shown
        self.where_name = job.table or "the query"

    def chunks(self, chunk_rows: int, progress: Progress) -> Iterator[Chunk]:
        yield from self.source.chunks(chunk_rows, progress.last_key, progress.rows_read)


def _reader(job: BatchJob) -> _FileReader | _TableReader:
    if isinstance(job.source, SqlLocation):
        return _TableReader(job, job.source)
    return _FileReader(job, job.source)


# --- outputs ----------------------------------------------------------------------------------


class _FileSink:
    """A file output: complete or absent (never resumed; a rerun starts over)."""

    def __init__(self, job: BatchJob, reader: _FileReader | _TableReader) -> None:
        assert isinstance(job.output, FileLocation)
        output = job.output.path
        if job.output_table:
            raise UsageError("--output-table is for database outputs")
        if output.suffix.lower() not in WRITABLE:
            raise UsageError(
                f"{output.name}: cannot write {output.suffix or 'this'} files "
                f"(use {', '.join(WRITABLE)}, or a database URL)"
            )
        if isinstance(reader, _FileReader) and output.resolve() == reader.path.resolve():
            raise UsageError("--output must not be the input file")
        if job.run_id is not None or job.new_run:
            option = "--run-id" if job.run_id is not None else "--new-run"
            raise UsageError(f"{option} is for table outputs (a file output is never resumed)")
        self.writer = FileWriter(output)
        self.shown = str(output)
        self.keep = job.on_refused == "keep"
        """Kept refusals have a `refused` column from the first chunk on (one header, one
        schema), whether or not that chunk had one."""

    def begin(self) -> Progress:
        from cpmai.batch.runs import Progress, new_run_id

        return Progress(new_run_id())

    def write(self, chunk: Chunk, scored: Scored, progress: Progress) -> None:
        import pandas as pd

        out = chunk.frame.copy()
        for name, values in scored.columns().items():
            # with a refused row's None among them, integer labels stay integers (Int64)
            out[name] = pd.array(values) if scored.refused else values
        if self.keep:
            refused = [scored.refused.get(i) for i in range(len(out))]
            out[REFUSED] = pd.Series(refused, index=out.index, dtype="string")
        self.writer.write(out)

    def close(self, progress: Progress) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


class _TableSink:
    """A table output: a chunk a transaction, with the run's progress."""

    def __init__(
        self, job: BatchJob, scorer: ChunkScorer, reader: _FileReader | _TableReader
    ) -> None:
        from cpmai.batch.runs import Runs, fingerprint

        assert isinstance(job.output, SqlLocation)
        if not job.output_table:
            raise UsageError(f"--output {job.output.shown}: name the table with --output-table T")
        if not reader.key:
            raise UsageError(
                "--key: name the column(s) that identify a row (the output table must say which "
                "row each prediction is for, and a resumed run where to go on)"
            )
        self.job = job
        self.scorer = scorer
        self.key = reader.key
        self.sink = SqlSink(job.output, job.output_table)
        clash = [
            k for k in self.key if k in (*scorer.output_names, VERSION, RUN_ID, SCORED_AT, REFUSED)
        ]
        if clash:
            raise UsageError(f"--key {','.join(clash)}: the output table has a column of that name")
        self.runs: Runs = Runs(self.sink)
        self.print = fingerprint(
            model=job.name, version=job.version, source=reader.identity, output=self.sink.shown,
            key=self.key, probabilities=job.probabilities,
        )  # fmt: skip
        self.shown = self.sink.shown
        self.source_shown = reader.shown
        self.prepared = False
        self.progress: Progress | None = None

    def begin(self) -> Progress:
        progress = self.runs.begin(
            self.print, model=self.job.name, version=self.job.version, source=self.source_shown,
            run_id=self.job.run_id, new_run=self.job.new_run,
        )  # fmt: skip
        if progress.resumed:
            held = self.sink.count_run(progress.run_id)
            if held != progress.rows_read:
                raise UsageError(
                    f"run {progress.run_id}: cpmai_batch_runs says {progress.rows_read:,} rows "
                    f"were written, {self.sink.name} holds {held:,} under that run id; going on "
                    "would skip or repeat rows: start a new run with --new-run"
                )
        self.progress = progress
        return progress

    def _prepare(self, frame: pd.DataFrame) -> None:
        from cpmai.batch.sql import column_type, output_types

        predictor = self.job.predictor
        keys = {k: column_type(frame[k]) for k in self.key}
        outputs = output_types(self.scorer.output_names, predictor.classes, self.job.task)
        self.sink.prepare(keys, outputs)
        self.prepared = True

    def write(self, chunk: Chunk, scored: Scored, progress: Progress) -> None:
        from cpmai.batch.sql import connect_error

        if not self.prepared:
            self._prepare(chunk.frame)
        frame = chunk.frame
        count = len(frame)
        rows: dict[str, list[Any]] = {k: frame[k].tolist() for k in self.key}
        rows.update(scored.columns())
        rows[VERSION] = [self.job.version] * count
        rows[RUN_ID] = [progress.run_id] * count
        rows[SCORED_AT] = [datetime.now(UTC)] * count
        rows[REFUSED] = [scored.refused.get(i) for i in range(count)]
        try:
            with self.sink.engine.begin() as conn:
                self.sink.write(conn, rows)
                self.runs.advance(conn, progress, read=count, scored=len(scored.served_rows),
                                  refused=len(scored.refused), last_key=chunk.last_key)  # fmt: skip
        except UsageError:
            raise
        except Exception as exc:
            raise connect_error(self.sink.where, exc) from None
        progress.rows_read += count
        progress.rows_scored += len(scored.served_rows)
        progress.rows_refused += len(scored.refused)
        progress.chunks += 1
        progress.last_key = chunk.last_key

    def close(self, progress: Progress) -> None:
        if not self.prepared and progress.chunks == 0:
            from cpmai.batch.sql import output_types

            predictor = self.job.predictor
            outputs = output_types(self.scorer.output_names, predictor.classes, self.job.task)
            if self.sink.table is None:  # no rows at all: still an output table to read
                from sqlalchemy import Text

                self.sink.prepare(dict.fromkeys(self.key, Text), outputs)
        self.runs.finish(progress)

    def abort(self) -> None:
        """What was committed is whole chunks, recorded in the progress: kept, for the same
        command to go on. A new run that wrote nothing (a key or a column refused at the first
        chunk) is forgotten, so the command, once corrected, is a run of its own."""
        progress = self.progress
        if progress is not None and not progress.resumed and progress.chunks == 0:
            with contextlib.suppress(CpmaiError):  # the database is gone: the error says why
                self.runs.forget(progress)
