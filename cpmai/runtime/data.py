"""Reading tabular data files (CSV, JSON, Parquet) into pandas."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cpmai.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV, JSON (records or lines) or Parquet file. Raises UsageError when unreadable."""
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".txt"):
            return pd.read_csv(path)
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix == ".jsonl":
            return pd.read_json(path, lines=True)
        if suffix == ".json":
            return pd.read_json(path, orient="records")
    except ImportError as exc:
        raise UsageError(f"{path.name}: reading {suffix} files needs {exc.name or exc}") from None
    except FileNotFoundError:
        raise UsageError(f"{path}: file not found") from None
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path.name}: cannot read as {suffix[1:]}: {exc}") from None
    raise UsageError(f"{path.name}: unsupported data file (use .csv, .json, .jsonl or .parquet)")
