"""Batch runs kept in the output database: which run wrote which rows, and how far it got.

`cpmai_batch_runs` (beside the output table, created when absent) holds one row a run: its id,
what it scores with and from where to where (a fingerprint of those), its status (`running`,
`done`), the rows read, scored and refused so far, the chunks written and the last key written.
A chunk's rows and the run's progress are committed in one transaction, and the progress is
advanced only from the value this process read (`WHERE chunks = :seen`): a run advanced by
another process at the same time stops with a message instead of writing a row twice.

The same command again finds the unfinished run with the same fingerprint and goes on after its
last key: every input row ends in the output exactly once, however often a run was killed.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cpmai.batch.sql import SqlSink, connect_error, key_json
from cpmai.errors import UsageError

if TYPE_CHECKING:
    from sqlalchemy import Connection, Table

TABLE = "cpmai_batch_runs"
RUNNING = "running"
DONE = "done"
ABANDONED = "abandoned"
"""A run left unfinished and given up by `--new-run`."""


def fingerprint(**parts: Any) -> str:
    """What makes two invocations the same run: model, version, source, output, key, options."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def new_run_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


@dataclass
class Progress:
    run_id: str
    rows_read: int = 0
    rows_scored: int = 0
    rows_refused: int = 0
    chunks: int = 0
    last_key: list[Any] | None = None
    resumed: bool = False
    """Whether this invocation goes on with a run an earlier one started."""


class Runs:
    """The runs table of one output database."""

    def __init__(self, sink: SqlSink) -> None:
        self.sink = sink
        self.table = self._table()

    def _table(self) -> Table:
        from sqlalchemy import BigInteger, Column, DateTime, Index, MetaData, Table, Text

        table = Table(
            TABLE,
            MetaData(),
            Column("run_id", Text, primary_key=True),
            Column("fingerprint", Text, nullable=False),
            Column("model", Text, nullable=False),
            Column("version", Text, nullable=False),
            Column("source", Text, nullable=False),
            Column("output", Text, nullable=False),
            Column("status", Text, nullable=False),
            Column("rows_read", BigInteger, nullable=False),
            Column("rows_scored", BigInteger, nullable=False),
            Column("rows_refused", BigInteger, nullable=False),
            Column("chunks", BigInteger, nullable=False),
            Column("last_key", Text),
            Column("started_at", DateTime(timezone=True), nullable=False),
            Column("updated_at", DateTime(timezone=True), nullable=False),
            Column("finished_at", DateTime(timezone=True)),
            schema=self.sink.schema,
        )
        # one unfinished run a command: two processes starting the same command at once do
        # not both score everything (the second one's insert fails)
        Index(
            f"{TABLE}_one_running",
            table.c.fingerprint,
            unique=True,
            sqlite_where=table.c.status == RUNNING,
            postgresql_where=table.c.status == RUNNING,
        )
        return table

    def begin(
        self,
        print_: str,
        *,
        model: str,
        version: str,
        source: str,
        run_id: str | None,
        new_run: bool,
    ) -> Progress:
        """The run this invocation writes: the named one (`--run-id`), else the unfinished run
        with the same fingerprint, else a new one."""
        from sqlalchemy import select, update
        from sqlalchemy.exc import IntegrityError

        t = self.table
        try:
            with self.sink.engine.begin() as conn:
                t.create(conn, checkfirst=True)
                for index in t.indexes:  # a table from before the index
                    index.create(conn, checkfirst=True)
                if run_id is not None:
                    row = conn.execute(select(t).where(t.c.run_id == run_id)).mappings().first()
                    if row is not None:
                        if row["status"] == DONE:
                            raise UsageError(
                                f"--run-id {run_id}: that run finished at {row['finished_at']} "
                                f"({row['rows_read']:,} rows); choose another id to score again"
                            )
                        if row["fingerprint"] != print_:
                            raise UsageError(
                                f"--run-id {run_id}: that run scored {row['source']} with "
                                f"{row['model']} {row['version']} into {row['output']}; this "
                                "command differs, so it cannot go on with it"
                            )
                        return _progress(row)
                elif not new_run:
                    row = (
                        conn.execute(
                            select(t)
                            .where(t.c.fingerprint == print_, t.c.status == RUNNING)
                            .order_by(t.c.started_at.desc())
                        )
                        .mappings()
                        .first()
                    )
                    if row is not None:
                        return _progress(row)
                now = datetime.now(UTC)
                if new_run:  # the unfinished run is given up: its rows stay under its id
                    conn.execute(
                        update(t)
                        .where(t.c.fingerprint == print_, t.c.status == RUNNING)
                        .values(status=ABANDONED, updated_at=now)
                    )
                progress = Progress(run_id or new_run_id())
                conn.execute(
                    t.insert().values(
                        run_id=progress.run_id, fingerprint=print_, model=model,
                        version=version, source=source, output=self.sink.name,
                        status=RUNNING, rows_read=0, rows_scored=0, rows_refused=0, chunks=0,
                        last_key=None, started_at=now, updated_at=now,
                    )
                )  # fmt: skip
                return progress
        except UsageError:
            raise
        except IntegrityError:
            raise UsageError(
                "another process started this same run meanwhile (same model, version, source, "
                f"output and key; see {TABLE}); run again once it ends, or use --new-run"
            ) from None
        except Exception as exc:
            raise connect_error(self.sink.where, exc) from None

    def advance(self, conn: Connection, progress: Progress, *, read: int, scored: int,
                refused: int, last_key: list[Any] | None) -> None:  # fmt: skip
        """Record one more chunk, in the transaction that wrote its rows."""
        from sqlalchemy import update

        t = self.table
        done = conn.execute(
            update(t)
            .where(t.c.run_id == progress.run_id, t.c.chunks == progress.chunks)
            .values(
                rows_read=progress.rows_read + read,
                rows_scored=progress.rows_scored + scored,
                rows_refused=progress.rows_refused + refused,
                chunks=progress.chunks + 1,
                last_key=key_json(last_key),
                updated_at=datetime.now(UTC),
            )
        )
        if done.rowcount != 1:
            raise UsageError(
                f"run {progress.run_id}: another process wrote to this run meanwhile; "
                "this one stopped without writing its chunk"
            )

    def forget(self, progress: Progress) -> None:
        """Remove a run that wrote no row (only while still unwritten: `chunks = 0`)."""
        from sqlalchemy import delete

        t = self.table
        try:
            with self.sink.engine.begin() as conn:
                conn.execute(delete(t).where(t.c.run_id == progress.run_id, t.c.chunks == 0))
        except Exception as exc:
            raise connect_error(self.sink.where, exc) from None

    def finish(self, progress: Progress) -> None:
        from sqlalchemy import update

        t = self.table
        now = datetime.now(UTC)
        try:
            with self.sink.engine.begin() as conn:
                conn.execute(
                    update(t)
                    .where(t.c.run_id == progress.run_id)
                    .values(status=DONE, finished_at=now, updated_at=now)
                )
        except Exception as exc:
            raise connect_error(self.sink.where, exc) from None


def _progress(row: Any) -> Progress:
    """A run's progress as the table holds it; a row edited into nonsense is refused, not
    trusted (going on from a wrong place would skip or repeat rows)."""
    try:
        last = row["last_key"]
        key = None if last is None else json.loads(last)
        counts = [int(row[c]) for c in ("rows_read", "rows_scored", "rows_refused", "chunks")]
        if key is not None and not isinstance(key, list):
            raise ValueError("last_key is not a list")
        if min(counts) < 0 or counts[1] + counts[2] != counts[0]:
            raise ValueError("the row counts do not add up")
    except (ValueError, TypeError) as exc:
        raise UsageError(
            f"run {row['run_id']} in {TABLE} is damaged ({exc}); cpmai cannot tell where it "
            "stopped: start a new run with --new-run (its rows stay under the old run id)"
        ) from None
    return Progress(
        run_id=row["run_id"],
        rows_read=counts[0],
        rows_scored=counts[1],
        rows_refused=counts[2],
        chunks=counts[3],
        last_key=key,
        resumed=True,
    )
