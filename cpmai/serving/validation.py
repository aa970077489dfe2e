"""Checking request data against the signature, and turning it into model-ready columns.

Refused (HTTP 422, naming the field): a missing or unknown input, a value of the wrong type, a
category the model was not trained on (unless the input is `open`: the model encodes unseen
values), a missing value where none is allowed, inputs of unequal length. Accepted with a
warning: a number outside the reference data's range, an unseen value of an open category (that
is what drift is made of; `cpmai monitor` counts them).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cpmai.manifest import InputSpec

MAX_LISTED = 8
_SCALARS = (str, int, bool)


class RequestError(Exception):
    """A request cannot be served as sent. `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Spec:
    """One input's rules as plain slots, copied once from its `InputSpec` (the request path
    reads these, not the pydantic model)."""

    __slots__ = ("allowed", "kind", "max", "min", "name", "nullable", "open", "shown")

    def __init__(self, spec: InputSpec) -> None:
        self.name: str = spec.name
        self.kind: str = spec.type
        self.min: float | None = spec.min
        self.max: float | None = spec.max
        self.nullable: bool = spec.nullable
        self.open: bool = spec.open
        categories = spec.categories or []
        self.allowed = frozenset(categories)
        self.shown = ", ".join(repr(c) for c in categories[:MAX_LISTED]) + (
            ", ..." if len(categories) > MAX_LISTED else ""
        )


class Validator:
    """Validates column data for one signature. Built once per server; cheap per request."""

    def __init__(self, inputs: list[InputSpec]) -> None:
        self.specs = [_Spec(spec) for spec in inputs]
        self.names = [spec.name for spec in self.specs]
        self.name_set = frozenset(self.names)
        self.kinds = {spec.name: spec.kind for spec in self.specs}

    def columns(
        self, raw: dict[str, list[Any]]
    ) -> tuple[dict[str, list[Any]], int, list[str] | None]:
        """Check `raw` (name → list of values); returns (the same lists keyed in signature order,
        rows, warnings or None). Lists, not arrays: the batcher joins requests' lists and the runner
        makes one array per batch, which costs less than one per request."""
        if raw.keys() != self.name_set:
            self._name_problems(raw)
        rows = -1
        out: dict[str, Any] = {}
        warnings: list[str] = []
        for spec in self.specs:
            values = raw[spec.name]
            if rows == -1:
                rows = len(values)
            elif len(values) != rows:
                raise RequestError(
                    422, f"input {spec.name!r} has {len(values)} values, the others {rows}"
                )
            out[spec.name] = self._column(spec, values, warnings)
        if rows == 0:
            raise RequestError(422, "no rows to score")
        return out, rows, warnings or None

    def _name_problems(self, raw: dict[str, list[Any]]) -> None:
        unknown = [str(k) for k in raw if k not in self.name_set]
        missing = [n for n in self.names if n not in raw]
        parts = []
        if missing:
            parts.append(f"missing input{'s' * (len(missing) > 1)} {_listing(missing)}")
        if unknown:
            parts.append(f"unknown input{'s' * (len(unknown) > 1)} {_listing(unknown)}")
        raise RequestError(422, "; ".join(parts) + f" (the model takes {_listing(self.names)})")

    def _column(self, spec: _Spec, values: list[Any], warnings: list[str]) -> list[Any]:
        kind = spec.kind
        if kind in ("number", "integer"):
            has_null = False
            for value in values:
                kind_of = type(value)
                if kind_of is float or kind_of is int:
                    if kind_of is float and not math.isfinite(value):
                        raise RequestError(422, f"input {spec.name!r}: {value} is not a number")
                    continue
                if value is None and spec.nullable:
                    has_null = True
                    continue
                raise RequestError(422, _wrong(spec, value, "a number"))
            if spec.min is not None and spec.max is not None:
                present = [v for v in values if v is not None] if has_null else values
                if present and (min(present) < spec.min or max(present) > spec.max):
                    warnings.append(
                        f"{spec.name}: outside the reference range [{spec.min:g}, {spec.max:g}]"
                    )
            return values
        if kind == "category":
            unseen = 0
            for value in values:
                if type(value) in _SCALARS and value in spec.allowed:
                    continue
                if value is None:
                    if spec.nullable:
                        continue
                    raise RequestError(422, _wrong(spec, value, "a category"))
                if spec.open and type(value) in _SCALARS:
                    unseen += 1
                    if unseen == 1:
                        warnings.append(f"{spec.name}: unseen category {_short(value)}")
                    continue
                raise RequestError(
                    422, f"input {spec.name!r}: {_short(value)} is not one of {spec.shown}"
                )
            return values
        if kind == "string":
            for value in values:
                if type(value) is str or (value is None and spec.nullable):
                    continue
                raise RequestError(422, _wrong(spec, value, "a string"))
            return values
        for value in values:  # boolean
            if type(value) is bool or (value is None and spec.nullable):
                continue
            raise RequestError(422, _wrong(spec, value, "true or false"))
        return values


def _wrong(spec: _Spec, value: Any, expected: str) -> str:
    if value is None:
        return f"input {spec.name!r}: a value is required (the signature does not allow nulls)"
    return f"input {spec.name!r}: expected {expected}, got {_short(value)}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _listing(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")
