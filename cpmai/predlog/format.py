"""What the prediction log looks like on disk: format versions, file names, and what a line holds.

One file per server process and day, `predictions-YYYY-MM-DD-PID.jsonl`, one JSON line per
*block* of requests (a second's worth at most), in columns; resource samples beside it in
`resources-YYYY-MM-DD-PID.jsonl`; the columnar index of each log file in
`predictions-YYYY-MM-DD-PID.jsonl.VERSION.idx` (`cpmai.predlog.index`).

A block line (format "cpmai-predlog/2"):

    {"format": "cpmai-predlog/2", "model": ..., "version": ..., "pid": ..., "sample_rate": ...,
     "requests": {"t": [epoch seconds], "endpoint": [...], "status": [...],
                  "latency_ms": [...], "rows": [...], "id": [...],
                  "warnings": [null | [...]], "error": [null | "..."],
                  "origin": [null | "source"]},
     "inputs": {name: [one value per served row]}, "outputs": [one per served row],
     "probabilities": null | [null | [p, ...] per served row],
     "refused": [{"request": i, "inputs": {name: [...]}}]}

`origin`, present only in a block that holds synthetic traffic (`cpmai.serving.origin`): null
for a real request, the source named for a synthetic one ("" when none was named).

Served rows are those of successful requests (status < 400), in the order of `requests` (a
batch's requests together, once all were answered: a refusal meanwhile may come first); `rows`
says how many each request carried (0 for a refused one). `refused` keeps the inputs of refused
requests that had parseable, small inputs (what unseen categories are counted from).

The file is JSON lines (`jq '.inputs.tenure_months'` works). A leaf: imports nothing of cpmai's.
"""

from __future__ import annotations

import glob
import os
import re
from datetime import UTC, datetime
from pathlib import Path

FORMAT = "cpmai-predlog/2"
"""The format of a block line (and of a `lost` line)."""
LOST = "lost"
"""A line `{"format", "model", "version", "pid", "lost": {"requests", "since", "until",
"reason"}}`: requests that were answered but could not be logged (a full disk, a log that fell
behind), written with the next block that could be."""
INDEX_FORMAT = 1
"""The format of an index record (`cpmai.predlog.index`)."""
INDEX_MAGIC = b"CPMI"
"""The first bytes of every index record."""
CACHE_FORMAT = 4
"""The format of the reader's cache of parsed log files (`cpmai.predlog.cache`)."""

PREDICTIONS = "predictions"
RESOURCES = "resources"
"""The two kinds of log file (`KIND-YYYY-MM-DD-PID.jsonl`)."""
_DAY = re.compile(r"-(\d{4}-\d{2}-\d{2})-\d+\.jsonl$")

KINDS = {"number": "numeric", "integer": "numeric", "category": "categorical"}
KINDS["boolean"] = "categorical"


def feature_kind(signature_type: str) -> str:
    """How an input of this signature type is indexed and compared ("text" is neither)."""
    return KINDS.get(signature_type, "text")


def day_of(moment: float) -> str:
    """The UTC day (`YYYY-MM-DD`) that names the file a line written at `moment` goes to."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d")


def today_file(folder: Path, kind: str) -> Path:
    """This process's file of `kind` for today: `KIND-YYYY-MM-DD-PID.jsonl`."""
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    return folder / f"{kind}-{day}-{os.getpid()}.jsonl"


def index_file(log: Path, version: str) -> Path:
    """The index of `log` written by a server of `version`."""
    return log.with_name(f"{log.name}.{version}.idx")


def index_files(log: Path) -> list[Path]:
    """Every index of `log` (one per version that wrote to it), in name order."""
    return sorted(log.parent.glob(f"{glob.escape(log.name)}.*.idx"))


def log_files(folder: Path, kind: str, since: float | None, until: float | None) -> list[Path]:
    """`kind`-DAY-PID.jsonl files whose day can hold a line in [since, until]."""
    if not folder.is_dir():
        return []
    first = day_of(since) if since is not None else None
    last = day_of(until) if until is not None else None
    out = []
    for path in sorted(folder.glob(f"{kind}-*.jsonl")):
        match = _DAY.search(path.name)
        if match is None:
            continue
        day = match.group(1)
        if (first is None or day >= first) and (last is None or day <= last):
            out.append(path)
    return out
