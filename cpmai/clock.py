"""Time as cpmai writes and reads it: ISO 8601 in UTC with a `Z`, ages like `2h`.

A leaf: imports nothing of cpmai's but `errors`.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Literal

from cpmai.errors import UsageError

Precision = Literal["seconds", "milliseconds", "microseconds"]


def iso(moment: float | None = None, timespec: Precision = "seconds") -> str:
    """Epoch seconds (now when None) as `2026-11-26T10:00:00Z`."""
    when = datetime.fromtimestamp(time.time() if moment is None else moment, UTC)
    return when.isoformat(timespec=timespec).replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """An ISO time, `Z` or an offset or none (then UTC), as an aware datetime."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def epoch(text: str) -> float:
    """An ISO time as epoch seconds (UTC when it names no zone)."""
    return parse_time(text).timestamp()


def parse_moment(text: str, *, now: float) -> float:
    """An ISO time (`2026-11-26T10:00`, `2026-11-26`) or an age (`90m`, `2h`, `7d`) → epoch."""
    text = text.strip()
    try:
        return now - parse_duration(text)
    except UsageError:
        pass
    try:
        return parse_time(text).timestamp()
    except ValueError:
        raise UsageError(
            f"{text!r} is neither a time (2026-11-26T10:00) nor an age (30m, 2h, 7d)"
        ) from None


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """`30s`, `5m`, `1h`, `7d` → seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise UsageError(f"{text!r} is not a duration (e.g. 30s, 5m, 1h, 7d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def short_time(iso: str | None) -> str:
    """`2026-11-26T06:51:10.241Z` → `2026-11-26 06:51`."""
    if not iso:
        return "-"
    return iso.replace("T", " ")[:16]
