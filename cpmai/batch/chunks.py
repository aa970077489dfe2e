"""One chunk of rows, checked and scored: the step every batch engine shares (files, databases,
Ray Data tasks).

Each chunk is checked against the signature exactly as a request would be (the same Validator).
A refused row is either fatal (`stop`: the error names the row) or kept beside the scored ones
with its reason (`keep`: a nightly run does not stop at one bad row, and nothing is lost).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from cpmai.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

    from cpmai.runtime.predictor import Predictor
    from cpmai.serving.validation import Validator

OnRefused = Literal["stop", "keep"]
PREDICTION = "prediction"
PROBABILITY = "probability_"
REFUSED = "refused"


@dataclass
class Scored:
    """A chunk's outcome, in the chunk's row order."""

    predictions: list[Any]
    """One per row; None for a refused row."""
    probabilities: dict[str, list[float | None]]
    """`probability_<class>` → one per row (None for a refused row); empty unless asked."""
    refused: dict[int, str] = field(default_factory=dict)
    """Row position in the chunk → why it was refused."""
    served: dict[str, list[Any]] = field(default_factory=dict)
    """The checked inputs of the scored rows (what the prediction log keeps)."""
    served_rows: list[int] = field(default_factory=list)
    """Positions of the scored rows."""
    served_labels: list[Any] = field(default_factory=list)
    warnings: list[str] | None = None
    model_seconds: float = 0.0

    def columns(self) -> dict[str, list[Any]]:
        """The output columns: prediction, probabilities (when asked)."""
        return {PREDICTION: self.predictions, **self.probabilities}


class ChunkScorer:
    """Checks and scores chunks (DataFrames) for one predictor."""

    def __init__(self, predictor: Predictor, *, probabilities: bool = False) -> None:
        from cpmai.serving.validation import Validator

        if probabilities and not predictor.has_proba:
            raise UsageError(f"--probabilities: {predictor.no_proba_reason}")
        self.predictor = predictor
        self.probabilities = probabilities
        self.validator: Validator = Validator(predictor.inputs)

    @property
    def output_names(self) -> list[str]:
        names = [PREDICTION]
        if self.probabilities and self.predictor.classes:
            names += [f"{PROBABILITY}{label}" for label in self.predictor.classes]
        return names

    def check_columns(self, columns: list[str], where: str) -> None:
        missing = [n for n in self.validator.names if n not in columns]
        if missing:
            raise UsageError(
                f"{where}: missing column(s) {', '.join(missing)} "
                f"(the model takes {', '.join(self.validator.names)})"
            )

    def score(
        self, frame: pd.DataFrame, *, on_refused: OnRefused, where: str, first_row: int = 0
    ) -> Scored:
        """Score `frame`. `where` and `first_row` (its first row's 0-based number in the whole
        input) name a refused row in the error when `on_refused` is `stop`."""
        from cpmai.serving.validation import RequestError

        self.check_columns(list(frame.columns), where)
        validator = self.validator
        raw = {name: python_values(frame[name], validator.kinds[name]) for name in validator.names}
        rows = len(frame)
        refused: dict[int, str] = {}
        try:
            columns, _count, warnings = validator.columns(raw)
            keep = list(range(rows))
        except RequestError as whole:
            bad = _bad_rows(validator, raw, first_only=on_refused == "stop")
            if on_refused == "stop":
                if not bad:  # the chunk as a whole (no rows at all, unequal lengths)
                    raise UsageError(
                        f"{where} rows {first_row + 1}–{first_row + rows}: {whole.message}"
                    ) from None
                (row, why), *_ = bad.items()
                raise UsageError(f"{where} row {first_row + row + 1}: {why}") from None
            refused = bad
            keep = [i for i in range(rows) if i not in refused]
            columns, warnings = {}, None
            if keep:
                kept = {name: [values[i] for i in keep] for name, values in raw.items()}
                columns, _count, warnings = validator.columns(kept)
                raw = kept
        predictions: list[Any] = [None] * rows
        names = self.output_names[1:]
        probabilities: dict[str, list[float | None]] = {n: [None] * rows for n in names}
        labels: list[Any] = []
        seconds = 0.0
        if keep:
            started = time.perf_counter()
            out, probs = self.predictor.run(columns, self.probabilities)
            seconds = time.perf_counter() - started
            labels = out.tolist()  # plain values: numpy scalars reach no database driver
            if len(keep) == rows:
                predictions = labels
            else:
                for position, label in zip(keep, labels, strict=True):
                    predictions[position] = label
            if probs is not None and names:
                for i, name in enumerate(names):
                    column = probs[:, i].tolist()
                    if len(keep) == rows:
                        probabilities[name] = column
                    else:
                        for position, p in zip(keep, column, strict=True):
                            probabilities[name][position] = p
        return Scored(
            predictions=predictions,
            probabilities=probabilities,
            refused=refused,
            served=raw if keep else {},
            served_rows=keep,
            served_labels=labels,
            warnings=warnings,
            model_seconds=seconds,
        )


def _bad_rows(
    validator: Validator, raw: dict[str, list[Any]], *, first_only: bool
) -> dict[int, str]:
    """The rows (0-based, in this chunk) the validator refuses, and why: looked for only once a
    chunk has been refused, so each can be named."""
    from cpmai.serving.validation import RequestError

    rows = len(next(iter(raw.values()), []))
    bad: dict[int, str] = {}
    for i in range(rows):
        try:
            validator.columns({name: [values[i]] for name, values in raw.items()})
        except RequestError as exc:
            bad[i] = exc.message
            if first_only:
                break
    return bad


def python_values(column: pd.Series, kind: str = "string") -> list[Any]:
    """Plain Python values with missing ones as None (pandas gives NaN). A number column that
    pandas read as text in this chunk (one bad value makes the whole chunk text) gets its
    numbers back, so only the bad value is refused, by its row."""
    if kind in ("number", "integer") and column.dtype.kind == "O":
        # Decimal: a database's NUMERIC (money) column, a number like any other
        numbers = [_number(v) for v in column.tolist()]
        return [None if isinstance(v, float) and math.isnan(v) else v for v in numbers]
    values: list[Any] = column.tolist()
    if column.dtype.kind in "fO" or str(column.dtype) in ("str", "string"):
        return [None if isinstance(v, float) and math.isnan(v) else v for v in values]
    return values


def _number(value: Any) -> Any:
    """A numeric string as the number pandas would have read ('12', '1e3', ' 3 '); anything else
    as it is, for the validator to refuse by its row."""
    if isinstance(value, Decimal):  # inf and NaN as floats: refused, and missing
        integral = value.is_finite() and value == value.to_integral_value()
        return int(value) if integral else float(value)
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
