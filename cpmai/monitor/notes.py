"""One-line notes on what a log holds besides customers' answered traffic (synthetic
requests, requests answered but not logged), shared by every renderer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cpmai.clock import short_time

if TYPE_CHECKING:
    from cpmai.monitor.result import Lost, Synthetic


def synthetic_line(summary: Synthetic | None) -> str | None:
    """ "also served: 16,502 synthetic requests (cpmai-bench), not counted" from a
    `synthetic` summary (`cpmai.monitor.summaries.synthetic_summary`), or None when there were
    none."""
    if not summary or not summary.requests:
        return None
    sources = ", ".join(
        f"{source or 'no source named'}" + (f" {n:,}" if len(summary.by_source) > 1 else "")
        for source, n in summary.by_source.items()
    )
    requests = summary.requests
    counted = (
        "counted in (--include-synthetic)"
        if summary.included
        else "not counted (--include-synthetic counts them in)"
    )
    noun = "request" if requests == 1 else "requests"
    return f"also served: {requests:,} synthetic {noun} ({sources}), {counted}"


def lost_line(lost: Lost | None) -> str | None:
    """ "4,210 requests answered but not logged (No space left on device), 14:02–14:05 UTC" from
    a `lost` summary (`cpmai.monitor.summaries.lost_summary`), or None."""
    if not lost:
        return None
    return (
        f"{lost.requests:,} requests answered but not logged ({'; '.join(lost.reasons)}), "
        f"{short_time(lost.since)} – {short_time(lost.until)} UTC: no figure includes them"
    )
