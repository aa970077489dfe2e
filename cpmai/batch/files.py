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
        self.schema: Any = None

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
                # a column with no value yet (all missing) is typed by the chunks after it
                self.schema = pa.schema(
                    [f.with_type(pa.string()) if pa.types.is_null(f.type) else f
                     for f in table.schema]
                )  # fmt: skip
                self.parquet = pq.ParquetWriter(self.tmp, self.schema)
            elif table.schema != self.schema:
                # a chunk with a refused row has a NULL among integer predictions: pandas
                # made them floats; the file keeps the first chunk's types
                try:
                    table = table.cast(self.schema)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
                    raise UsageError(self._mismatch(table)) from None
            self.parquet.write_table(table)
        self.first = False

    def _mismatch(self, table: Any) -> str:
        """Which column of a later chunk does not fit the type the first chunk gave it."""
        import pyarrow as pa

        for field in self.schema:
            column = table.column(field.name) if field.name in table.column_names else None
            if column is None:
                return f"{self.output.name}: a chunk has no column {field.name!r}"
            try:
                column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
                return (
                    f"{self.output.name}: column {field.name!r} is {field.type} in the first "
                    f"chunk, and a later chunk has a value that is not ({exc}); a Parquet file "
                    "has one type a column: write CSV or JSON lines, or clean the input"
                )
        return f"{self.output.name}: a chunk's columns differ from the first chunk's"

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
