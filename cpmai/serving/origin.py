"""Traffic that is not customers: the request header that marks it, and what the server keeps.

A load test is served like any other request but is not business traffic: counted as usage it
inflates value and cost per prediction, and compared with the reference data it looks like
drift (the same few rows, thousands of times). So a client marks it:

    X-Cpmai-Traffic: synthetic
    X-Cpmai-Traffic: synthetic; source=locust

`cpmai bench` sends `synthetic; source=cpmai-bench`; wrk, k6 or locust users add the header
themselves. The server records the mark with the request in the prediction log (its source, or
"" when none is named) and labels it `origin="synthetic"` on /metrics; monitor, report and cost
leave such requests out unless asked to count them in (`--include-synthetic`).

Any other value is refused (400): a misspelt mark silently counted as customers is the very
mistake the header exists to prevent.
"""

from __future__ import annotations

HEADER = "X-Cpmai-Traffic"
HEADER_KEY = HEADER.lower().encode()
"""The header's name as ASGI servers hand it over (lower case, bytes)."""
SYNTHETIC = "synthetic"
REAL = "real"
"""The `origin` label of requests that carry no mark."""
BENCH_SOURCE = "cpmai-bench"
MAX_SOURCE = 40
MAX_VALUE = 100
"""Longer values are refused before they are looked at (the header is read before the token)."""
_SOURCE_CHARACTERS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._ /:+-"
)


def header_value(source: str | None = None) -> str:
    """What a client sends to mark its requests synthetic (`source` names the tool)."""
    return f"{SYNTHETIC}; source={source}" if source else SYNTHETIC


def parse(value: bytes | None) -> str | None:
    """None for a request without the header (real traffic); the source named (or "") for a
    synthetic one. Raises ValueError, with the reason, for a value that is not a mark."""
    if value is None:
        return None
    text = value[: MAX_VALUE + 1].decode("latin-1")
    mark, _, rest = text.partition(";")
    key, equals, source = rest.partition("=")
    if (
        len(value) > MAX_VALUE
        or mark.strip().lower() != SYNTHETIC
        or (rest and (key.strip().lower() != "source" or not equals))
    ):
        shown = text[:60] if text[:60].isprintable() else repr(text[:60])
        raise ValueError(
            f"{HEADER}: {shown!r}{'…' if len(value) > 60 else ''} is not understood; send "
            f"'synthetic', optionally with '; source=NAME' (letters, digits, . _ - / : + and "
            f"spaces, at most {MAX_SOURCE})"
        )
    source = source.strip().strip('"')
    if rest and not (0 < len(source) <= MAX_SOURCE and _SOURCE_CHARACTERS.issuperset(source)):
        raise ValueError(
            f"{HEADER}: source {source[:60]!r} is not a name (letters, digits, . _ - / : + and "
            f"spaces, at most {MAX_SOURCE})"
        )
    return source


def label(origin: str | None) -> str:
    """The `origin` label on /metrics: bounded (sources are kept in the log, not as labels)."""
    return REAL if origin is None else SYNTHETIC


def describe(source: str) -> str:
    """A source as people read it."""
    return source or "no source named"
