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

import re

HEADER = "X-Cpmai-Traffic"
HEADER_KEY = HEADER.lower().encode()
"""The header's name as ASGI servers hand it over (lower case, bytes)."""
SYNTHETIC = "synthetic"
REAL = "real"
"""The `origin` label of requests that carry no mark."""
BENCH_SOURCE = "cpmai-bench"
MAX_SOURCE = 40
_VALUE = re.compile(r"\s*synthetic\s*(?:;\s*source\s*=\s*([^;]*?)\s*)?", re.IGNORECASE)
_SOURCE = re.compile(rf"[A-Za-z0-9._ /:+-]{{1,{MAX_SOURCE}}}")


def header_value(source: str | None = None) -> str:
    """What a client sends to mark its requests synthetic (`source` names the tool)."""
    return f"{SYNTHETIC}; source={source}" if source else SYNTHETIC


def parse(value: bytes | None) -> str | None:
    """None for a request without the header (real traffic); the source named (or "") for a
    synthetic one. Raises ValueError, with the reason, for a value that is not a mark."""
    if value is None:
        return None
    text = value.decode("latin-1")
    match = _VALUE.fullmatch(text)
    if match is None:
        shown = text if len(text) <= 60 and text.isprintable() else f"{text[:60]!r}…"
        raise ValueError(
            f"{HEADER}: {shown!r} is not understood; send 'synthetic', optionally with "
            f"'; source=NAME' (letters, digits, . _ - / : + and spaces, at most {MAX_SOURCE})"
        )
    source = (match.group(1) or "").strip('"')
    if source and _SOURCE.fullmatch(source) is None:
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
