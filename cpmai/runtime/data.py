"""Reading tabular data files (CSV, JSON, Parquet) into pandas."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cpmai.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd


def _finite(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """`frame`, unless a number in it is infinite (a model cannot score it, and statistics of it
    are meaningless): UsageError naming the column and the first row (missing values are
    fine: NaN)."""
    import numpy as np

    for column in frame.columns:
        values = frame[column]
        if values.dtype.kind != "f":
            continue
        bad = np.flatnonzero(np.isinf(values.to_numpy()))
        if len(bad):
            row = int(bad[0])
            raise UsageError(
                f"{path.name}: column {column!r} holds {values.iloc[row]} (row {row + 1} of the "
                f"data{', line ' + str(row + 2) if path.suffix.lower() in ('.csv', '.txt') else ''}"
                f"; {len(bad)} such value{'s' * (len(bad) > 1)}): numbers must be finite"
            )
    return frame


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV, JSON (records or lines) or Parquet file. Raises UsageError when unreadable."""
    import pandas as pd

    from cpmai.fsutil import not_regular

    why = not_regular(path)
    if why is not None:
        raise UsageError(f"{path}: {why}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".txt"):
            return _finite(pd.read_csv(path), path)
        if suffix == ".parquet":
            return _finite(pd.read_parquet(path), path)
        if suffix == ".jsonl":
            return _finite(pd.read_json(path, lines=True), path)
        if suffix == ".json":
            return _finite(pd.read_json(path, orient="records"), path)
    except ImportError as exc:
        raise UsageError(f"{path.name}: reading {suffix} files needs {exc.name or exc}") from None
    except FileNotFoundError:
        raise UsageError(f"{path}: file not found") from None
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path.name}: cannot read as {suffix[1:]}: {exc}") from None
    raise UsageError(f"{path.name}: unsupported data file (use .csv, .json, .jsonl or .parquet)")
