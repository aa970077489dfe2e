"""Files a batch run reads and writes: CSV, JSON lines, JSON arrays (read only) and Parquet,
a chunk at a time. A file output carries the input's columns (ids, labels pass through) with
`prediction` and, when asked, one `probability_<class>` column per class.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpmai.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

READABLE = (".csv", ".jsonl", ".json", ".parquet")
WRITABLE = (".csv", ".jsonl", ".parquet")


def read_chunks(source: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The file's rows, `chunk_rows` at a time."""
    import pandas as pd

    suffix = source.suffix.lower()
    try:
        if suffix == ".csv":
            yield from pd.read_csv(source, chunksize=chunk_rows)
        elif suffix == ".jsonl":
            yield from pd.read_json(source, lines=True, chunksize=chunk_rows)
        elif suffix == ".json":  # a JSON array cannot be streamed: read whole, score in chunks
            frame = pd.read_json(source, orient="records")
            for start in range(0, len(frame), chunk_rows):
                yield frame.iloc[start : start + chunk_rows]
        else:
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise UsageError("reading Parquet needs pyarrow (pip install pyarrow)") from None
            for batch in pq.ParquetFile(source).iter_batches(batch_size=chunk_rows):
                yield batch.to_pandas()
    except FileNotFoundError:
        raise UsageError(f"{source}: no such file") from None
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UsageError(f"{source.name}: cannot read: {exc}") from None


class FileWriter:
    """Appends chunks to a temporary file, renamed into place when complete: an interrupted run
    never leaves a half-written output that looks finished."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.tmp = output.with_name(f".{output.name}.partial")
        self.first = True
        self.parquet: Any = None

    def write(self, frame: pd.DataFrame) -> None:
        suffix = self.output.suffix.lower()
        if suffix == ".csv":
            frame.to_csv(self.tmp, mode="w" if self.first else "a", header=self.first, index=False)
        elif suffix == ".jsonl":
            with self.tmp.open("w" if self.first else "a", encoding="utf-8") as handle:
                text = frame.to_json(orient="records", lines=True)
                handle.write(text if text.endswith("\n") or not text else text + "\n")
        else:
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError:
                raise UsageError("writing Parquet needs pyarrow (pip install pyarrow)") from None
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self.parquet is None:
                self.parquet = pq.ParquetWriter(self.tmp, table.schema)
            self.parquet.write_table(table)
        self.first = False

    def close(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        if self.first:  # no rows at all: still write a valid, empty output
            self.tmp.write_text("")
        self.tmp.replace(self.output)

    def abort(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        self.tmp.unlink(missing_ok=True)
