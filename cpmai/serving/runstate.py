"""What the local target and an environment's server processes tell each other: the files under
`runs/NAME/ENV/` and their typed records.

    run.json          ServerRecord, written by the command that started the server
    server.json       ServerRecord, written by the server itself as it starts (what runs, even
                      when the starting command died before writing run.json)
    routes.json       RouteTable: what the server should serve, rewritten by deploy, promote,
                      rollback and canary steps (atomically; every write a new file)
    workers/PID.json  WorkerStatus: what each worker process serves and has counted, written
                      every REPORT_SECONDS and after each switch
    auth.json         the SHA-256 of the bearer token the server requires (owner-only)
    server.log        the server process's output
    rollout.lock      held by one rollout at a time

Both sides read and write these through this module only.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from cpmai.fsutil import read_json_object, write_atomic
from cpmai.home import Home

_BAD = (KeyError, TypeError, ValueError, AttributeError, OverflowError)
"""What reading a hand-edited or damaged record may raise: it then reads as absent."""
MAX_PID = 2**22  # Linux's highest pid_max
MAX_SEQ = 2**62

POLL_SECONDS = 0.05
"""How often a worker looks at routes.json (one stat call)."""
REPORT_SECONDS = 1.0
"""How often a worker writes its status; a reader that needs counters up to a moment waits for
reports written after it (`RunFiles.reports_after`)."""


@dataclass(frozen=True)
class ServerRecord:
    """The server process of an environment: `run.json` / `server.json`."""

    pid: int
    created: float
    """The process's start time (psutil): tells it from a later process given the same pid."""
    host: str
    port: int
    workers: int = 1

    @classmethod
    def of(cls, data: dict[str, Any] | None) -> ServerRecord | None:
        if data is None:
            return None
        try:
            return cls(
                pid=_whole(data["pid"], 1, MAX_PID),
                created=_number(data["created"], 0.0, 1e12),
                host=_text(data["host"]),
                port=_whole(data["port"], 1, 65535),
                workers=_whole(data.get("workers", 1), 1, 10_000),
            )
        except _BAD:
            return None

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))


@dataclass(frozen=True)
class RouteTable:
    """What an environment's server serves: the live version, maybe a canary taking `weight` of
    the unversioned predictions, and versions kept loaded for a quick rollback. `seq` grows
    with every table written; a worker applies only a newer one."""

    seq: int
    live: str | None
    canary: str | None = None
    weight: float = 0.0
    keep: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, data: dict[str, Any] | None) -> RouteTable | None:
        if data is None:
            return None
        try:
            canary = _text_or_none(data.get("canary")) or None
            return cls(
                seq=_whole(data.get("seq", 0), 0, MAX_SEQ),
                live=_text_or_none(data.get("live")),
                canary=canary,
                weight=_number(data.get("weight", 0.0), 0.0, 1.0) if canary else 0.0,
                keep=_texts(data.get("keep", [])),
            )
        except _BAD:
            return None

    def versions(self) -> list[str]:
        """Every version the table names: live, canary, kept."""
        named = [self.live, self.canary, *self.keep]
        return [v for v in named if v]

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))


@dataclass(frozen=True)
class Counters:
    """One version's prediction requests, errors (any non-2xx) and latency histogram (the
    server's LATENCY_BUCKETS, per-bucket counts) since the worker started."""

    requests: int = 0
    errors: int = 0
    buckets: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class WorkerStatus:
    """One worker process's report: `workers/PID.json`."""

    pid: int
    time: float
    started: float
    seq: int
    """The route table applied."""
    failed_seq: int
    """The last table the worker could not apply (a version failed to load)."""
    live: str | None
    canary: str | None
    weight: float
    loaded: list[str]
    errors: dict[str, str]
    """Load errors per version."""
    counters: dict[str, Counters]

    @classmethod
    def of(cls, data: dict[str, Any] | None) -> WorkerStatus | None:
        if data is None:
            return None
        try:
            return cls(
                pid=_whole(data["pid"], 1, MAX_PID),
                time=_number(data.get("time", 0.0), 0.0, 1e12),
                started=_number(data.get("started", 0.0), 0.0, 1e12),
                seq=_whole(data.get("seq", 0), 0, MAX_SEQ),
                failed_seq=_whole(data.get("failed_seq", 0), 0, MAX_SEQ),
                live=_text_or_none(data.get("live")),
                canary=_text_or_none(data.get("canary")),
                weight=_number(data.get("weight", 0.0), 0.0, 1.0),
                loaded=_texts(data.get("loaded", [])),
                errors={_text(k): _text(v) for k, v in (data.get("errors") or {}).items()},
                counters={
                    _text(version): _counters(c)
                    for version, c in (data.get("counters") or {}).items()
                },
            )
        except _BAD:
            return None

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    def load_errors(self) -> str:
        return "; ".join(f"{version}: {error}" for version, error in self.errors.items())


@dataclass(frozen=True)
class RunFiles:
    """The files of one environment's run folder (see the module's docstring)."""

    folder: Path
    run: Path
    server: Path
    routes: Path
    auth: Path
    log: Path
    lock: Path
    workers: Path

    @classmethod
    def of(cls, home: Path, name: str, env: str) -> RunFiles:
        return cls.at(Home(home).env(name, env).run)

    @classmethod
    def at(cls, folder: Path) -> RunFiles:
        names = ("run.json", "server.json", "routes.json", "auth.json", "server.log",
                 "rollout.lock", "workers")  # fmt: skip
        return cls(folder, *(folder / name for name in names))

    def worker(self, pid: int) -> Path:
        return self.workers / f"{pid}.json"

    # --- reading and writing -------------------------------------------------------------------

    def read_routes(self) -> RouteTable | None:
        return RouteTable.of(read_json_object(self.routes))

    def write_routes(self, table: RouteTable) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.routes, table.to_json())

    def read_server(self, path: Path) -> ServerRecord | None:
        return ServerRecord.of(read_json_object(path))

    def write_server(self, path: Path, record: ServerRecord) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(path, record.to_json())

    def write_status(self, status: WorkerStatus) -> None:
        self.workers.mkdir(parents=True, exist_ok=True)
        write_atomic(self.worker(status.pid), status.to_json())

    def statuses(self) -> list[WorkerStatus]:
        """The reports of worker processes that are alive (a dead one's file is removed)."""
        import psutil

        out = []
        for path in sorted(self.workers.glob("*.json")):
            status = WorkerStatus.of(read_json_object(path))
            if status is None:
                continue
            if psutil.pid_exists(status.pid):
                out.append(status)
            else:
                path.unlink(missing_ok=True)
        return out

    def clear_statuses(self) -> None:
        for path in self.workers.glob("*.json"):
            path.unlink(missing_ok=True)

    def reports_after(self, moment: float, timeout: float = 3 * REPORT_SECONDS) -> None:
        """Wait until every live worker has reported after `moment` (epoch seconds), so its
        counters include everything served before it; gives up after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(status.time > moment for status in self.statuses()):
                return
            time.sleep(POLL_SECONDS)

    def recorded_token(self) -> str | None:
        """The SHA-256 of the environment's recorded bearer token, if it has one."""
        doc = read_json_object(self.auth)
        value = doc.get("sha256") if doc else None
        return value if isinstance(value, str) and len(value) == 64 else None

    def record_token(self, digest: str, at: str) -> None:
        """Keep the token's SHA-256, readable by the owner only."""
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self.auth.with_name(f".{self.auth.name}.{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(orjson.dumps({"sha256": digest, "set": at}))
        temporary.replace(self.auth)


# --- reading what another process wrote ---------------------------------------------------------


def _whole(value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"expected a whole number in [{low}, {high}], got {value!r}")
    return value


def _number(value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"expected a number in [{low}, {high}], got {value!r}")
    return float(value)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {value!r}")
    return value


def _text_or_none(value: Any) -> str | None:
    return None if value is None else _text(value)


def _texts(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {value!r}")
    return [_text(v) for v in value]


def _counters(data: Any) -> Counters:
    from cpmai.serving.metrics import LATENCY_BUCKETS

    buckets = data["buckets"]
    if not isinstance(buckets, list) or len(buckets) != len(LATENCY_BUCKETS) + 1:
        raise ValueError("expected one count per latency bucket")
    return Counters(
        _whole(data["requests"], 0, MAX_SEQ),
        _whole(data["errors"], 0, MAX_SEQ),
        [_whole(count, 0, MAX_SEQ) for count in buckets],
    )
