"""A request's log entry: what the server hands the prediction log for each request it answers.

A plain tuple of scalars, typed: `Entry` names its shape, so mypy checks every place that
builds one (the server for a request its batch answered, `cpmai.serving.app`; and
`PredictionLog.record` for a refused one or one served outside the batcher), and readers take
fields by the named positions below. Not a NamedTuple and not built by a factory function: once
a request, either would cost the request path more than the rest of the log's per-request work
(docs/performance.md, "What the log costs").

Fields, in order:
- `t`: its time in epoch seconds, or None for `start` + `elapsed` on the `time.perf_counter`
  clock (the server's: made epoch seconds once a block, not once a request);
- `start`: when it arrived, on the `perf_counter` clock (0.0 when `t` is given);
- `elapsed`: seconds from its arrival to its answer;
- `endpoint`, `status`;
- `rows`: rows it carried that the log keeps (0 for a refused one);
- `id`: its id (the writer makes it a JSON scalar with `log_id`);
- `warnings`, `error`;
- `want_proba`: whether it asked for probabilities (and its batch has them);
- `row_start`: where its rows start in its batch;
- `origin`: None for real traffic, the source of synthetic traffic (`cpmai.serving.origin`).
"""

from __future__ import annotations

from typing import Any, Final

Entry = tuple[
    float | None,
    float,
    float,
    str,
    int,
    int,
    Any,
    list[str] | None,
    str | None,
    bool,
    int,
    str | None,
]
FIELDS = ("t", "start", "elapsed", "endpoint", "status", "rows", "id", "warnings", "error",
          "want_proba", "row_start", "origin")  # fmt: skip
T: Final = 0
START: Final = 1
ELAPSED: Final = 2
ENDPOINT: Final = 3
STATUS: Final = 4
ROWS: Final = 5
ID: Final = 6
WARNINGS: Final = 7
ERROR: Final = 8
WANT_PROBA: Final = 9
ROW_START: Final = 10
ORIGIN: Final = 11

_ID_TYPES = (str, int, float, type(None))
ID_TYPE_SET = frozenset(_ID_TYPES)
"""The types of request id a log line holds as they are (JSON scalars)."""


def log_id(request_id: Any) -> Any:
    """A request id the log can hold: a JSON scalar as it is, anything else as its repr."""
    return request_id if isinstance(request_id, _ID_TYPES) else repr(request_id)


def key_id(values: list[Any]) -> Any:
    """The request id a batch row is logged under, from its key's values (`cpmai predict
    --key`), and what a labels query's key is matched by: one value as a JSON scalar (dates in
    ISO form, a UUID or Decimal as its text), several joined by `|`."""
    if len(values) == 1:
        return log_id(_key_scalar(values[0]))
    return "|".join(str(_key_scalar(v)) for v in values)


def _key_scalar(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):  # a numpy scalar
        value = value.item()
    return value if value is None or isinstance(value, str | int | float) else str(value)
