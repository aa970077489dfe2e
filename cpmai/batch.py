"""Batch scoring of a file, chunk by chunk: memory stays flat whatever the number of rows.

Each chunk is checked against the signature exactly as a request would be (the same Validator),
scored, and appended to the output with the input columns, `prediction` and, when asked, one
`probability_<class>` column per class. Columns the model does not take (ids, labels) pass
through untouched.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpmai.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

    from cpmai.predlog.writer import PredictionLog
    from cpmai.runtime.predictor import Predictor
    from cpmai.serving.validation import RequestError, Validator

READABLE = (".csv", ".jsonl", ".json", ".parquet")
WRITABLE = (".csv", ".jsonl", ".parquet")


@dataclass
class BatchResult:
    rows: int
    chunks: int
    seconds: float
    output: Path

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "chunks": self.chunks,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "output": str(self.output),
        }


def score_file(
    predictor: Predictor,
    source: Path,
    output: Path,
    *,
    chunk_rows: int = 50_000,
    probabilities: bool = False,
    log: PredictionLog | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> BatchResult:
    """Score `source` into `output` (.csv, .jsonl or .parquet)."""
    from cpmai.serving.validation import RequestError, Validator

    if source.suffix.lower() not in READABLE:
        raise UsageError(
            f"{source.name}: cannot read {source.suffix or 'this'} files "
            f"(use {', '.join(READABLE)})"
        )
    if output.suffix.lower() not in WRITABLE:
        raise UsageError(
            f"{output.name}: cannot write {output.suffix or 'this'} files "
            f"(use {', '.join(WRITABLE)})"
        )
    if output.resolve() == source.resolve():
        raise UsageError("--output must not be the input file")
    if probabilities and not predictor.has_proba:
        raise UsageError(f"--probabilities: {predictor.no_proba_reason}")
    validator = Validator(predictor.inputs)
    writer = _Writer(output)
    start = time.perf_counter()
    rows = chunks = 0
    try:
        for frame in _chunks(source, chunk_rows):
            missing = [n for n in validator.names if n not in frame.columns]
            if missing:
                raise UsageError(
                    f"{source.name}: missing column(s) {', '.join(missing)} "
                    f"(the model takes {', '.join(validator.names)})"
                )
            raw = {
                name: _python_values(frame[name], validator.kinds[name]) for name in validator.names
            }
            try:
                columns, count, warnings = validator.columns(raw)
            except RequestError as refused:
                bad = _first_bad_row(validator, raw)
                if bad is None:  # the chunk as a whole (no rows at all, unequal lengths)
                    where, why = f"rows {rows + 1}–{rows + len(frame)}", refused
                else:
                    where, why = f"row {rows + bad[0] + 1}", bad[1]
                raise UsageError(f"{source.name} {where}: {why.message}") from None
            chunk_start = time.perf_counter()
            labels, probs = predictor.run(columns, probabilities)
            out = frame.copy()
            out["prediction"] = labels
            if probs is not None and predictor.classes:
                for i, label in enumerate(predictor.classes):
                    out[f"probability_{label}"] = probs[:, i]
            writer.write(out)
            if log is not None:
                log.record(
                    "batch",
                    200,
                    time.perf_counter() - chunk_start,
                    count,
                    raw,
                    labels.tolist(),
                    warnings=warnings,
                )
            rows += count
            chunks += 1
            if on_chunk is not None:
                on_chunk(count)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return BatchResult(rows=rows, chunks=chunks, seconds=time.perf_counter() - start, output=output)


def _chunks(source: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
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


def _first_bad_row(
    validator: Validator, raw: dict[str, list[Any]]
) -> tuple[int, RequestError] | None:
    """The first row (0-based, in this chunk) the validator refuses, and why: looked for only
    once a chunk has been refused, so the message can name the row."""
    from cpmai.serving.validation import RequestError

    rows = len(next(iter(raw.values()), []))
    for i in range(rows):
        try:
            validator.columns({name: [values[i]] for name, values in raw.items()})
        except RequestError as exc:
            return i, exc
    return None


def _python_values(column: pd.Series, kind: str = "string") -> list[Any]:
    """Plain Python values with missing ones as None (pandas gives NaN). A number column that
    pandas read as text in this chunk (one bad value makes the whole chunk text) gets its
    numbers back, so only the bad value is refused, by its row."""
    if kind in ("number", "integer") and column.dtype.kind == "O":
        numbers = [_number(v) for v in column.tolist()]
        return [None if isinstance(v, float) and math.isnan(v) else v for v in numbers]
    values: list[Any] = column.tolist()
    if column.dtype.kind in "fO" or str(column.dtype) in ("str", "string"):
        return [None if isinstance(v, float) and math.isnan(v) else v for v in values]
    return values


def _number(value: Any) -> Any:
    """A numeric string as the number pandas would have read ('12', '1e3', ' 3 '); anything else
    as it is, for the validator to refuse by its row."""
    if not isinstance(value, str) or "_" in value:
        return value  # Python's '1_000' is no number in a CSV
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return value
    return value if number != number else number  # 'nan' stays text: refused, not missing


class _Writer:
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
