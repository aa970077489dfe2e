"""A request's log entry: what the server hands the prediction log for each request it answers.

A `typing.NamedTuple`, so still a tuple of scalars (cheap to build; the garbage collector soon
stops tracking it), read by field name. Built in one place, `new_entry`, by everyone who logs a
request: the server for a request its batch answered (`cpmai.serving.app`), and
`PredictionLog.record` for a refused one or one served outside the batcher (`cpmai predict`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

_ID_TYPES = (str, int, float, type(None))
ID_TYPE_SET = frozenset(_ID_TYPES)
"""The types of request id a log line holds as they are (JSON scalars)."""


class Entry(NamedTuple):
    """One request, as the log keeps it until its block is written."""

    t: float | None
    """Its time in epoch seconds, or None for `start` + `elapsed` on the `time.perf_counter`
    clock (the server's: made epoch seconds once a block, not once a request)."""
    start: float
    """When it arrived, on the `perf_counter` clock (0.0 when `t` is given)."""
    elapsed: float
    """Seconds from its arrival to its answer."""
    endpoint: str
    status: int
    rows: int
    """Rows it carried that the log keeps (0 for a refused one)."""
    id: Any
    """Its id (the writer makes it a JSON scalar with `log_id`)."""
    warnings: list[str] | None
    error: str | None
    want_proba: bool
    """Whether it asked for probabilities (and its batch has them)."""
    row_start: int
    """Where its rows start in its batch."""
    origin: str | None
    """None for real traffic, the source of synthetic traffic (`cpmai.serving.origin`)."""


_new = tuple.__new__


def new_entry(
    t: float | None,
    start: float,
    elapsed: float,
    endpoint: str,
    status: int,
    rows: int = 0,
    request_id: Any = None,
    warnings: list[str] | None = None,
    error: str | None = None,
    want_proba: bool = False,
    row_start: int = 0,
    origin: str | None = None,
) -> Entry:
    """The one way to make an `Entry`, its parameters in the order of its fields. A served
    request of a batch: `t` None, `start`, `elapsed`, `rows`, `row_start`; any other: `t`
    (epoch seconds), `start` 0.0. On the request path, call it with positional arguments:
    keywords cost a quarter more."""
    return _new(
        Entry,
        (t, start, elapsed, endpoint, status, rows, request_id, warnings, error, want_proba,
         row_start, origin),
    )  # fmt: skip


def log_id(request_id: Any) -> Any:
    """A request id the log can hold: a JSON scalar as it is, anything else as its repr."""
    return request_id if isinstance(request_id, _ID_TYPES) else repr(request_id)
