"""Deliveries not yet made: one JSON file per (message, channel) in the environment's
`outbox/` folder, retried with exponential backoff until they succeed or run out of retries.

Every change to a pending delivery is an atomic write (temp file + rename), so a process killed
at any point leaves each delivery either pending as it was or updated, never half written.
Delivery is at least once: killed between a successful send and the removal of its file, the
delivery is sent again on the next run; receivers dedupe on the message id (the webhook's
`X-Cpmai-Delivery-Id`). One process runs an outbox at a time (the watcher's own lock).

Order: deliveries of one alert key to one channel go out in the order they were enqueued, a
later one waiting while an earlier one is pending (a `resolved` never overtakes its `firing`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from cpmai.alerts.channels import DeliveryError, describe, send
from cpmai.alerts.message import AlertMessage
from cpmai.clock import iso
from cpmai.fsutil import fsync_dir, write_atomic
from cpmai.manifest_watch import Channel

FORMAT: Final = "cpmai-outbox/1"
MAX_BACKOFF_S: Final = 300.0
"""The wait between two attempts never exceeds 5 minutes, however many failed."""
STALE_TMP_S: Final = 3600.0
"""Temporary files older than this were left by a killed process: removed."""


@dataclass
class Delivery:
    """One message waiting to go through one channel."""

    message: AlertMessage
    channel: int
    """The channel's index in `monitoring.alerts.channels`."""
    channel_desc: str
    """`describe(channel)` when enqueued: checked against the manifest before each attempt."""
    attempts: int
    """Attempts made so far (all failed: a delivery that succeeds is gone)."""
    next_at: float
    """Epoch seconds when the next attempt is due."""
    last_error: str | None
    created_at: float
    file: str = ""
    """Its file's name in the outbox folder (also its place in the order)."""

    def to_json(self) -> dict[str, Any]:
        """What its file holds."""
        return {
            "format": FORMAT,
            "message": self.message.to_json(),
            "channel": self.channel,
            "channel_desc": self.channel_desc,
            "attempts": self.attempts,
            "next_at": self.next_at,
            "last_error": self.last_error,
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, data: Any, file: str) -> Delivery:
        """A delivery read back; ValueError (with what is wrong) when `data` is not one."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} document")
        try:
            channel, desc, attempts = data["channel"], data["channel_desc"], data["attempts"]
            last_error, message = data["last_error"], data["message"]
            next_at, created_at = data["next_at"], data["created_at"]
        except KeyError as missing:
            raise ValueError(f"no {missing} field") from None
        if type(channel) is not int or type(attempts) is not int or min(channel, attempts) < 0:
            raise ValueError("a negative or non-integer count")
        if not isinstance(desc, str) or not isinstance(last_error, str | None):
            raise ValueError("a field of the wrong type")
        if not all(isinstance(t, int | float) and math.isfinite(t) for t in (next_at, created_at)):
            raise ValueError("a time that is not a number")
        try:
            parsed = AlertMessage.model_validate(message)
        except ValueError:  # pydantic's ValidationError; its text quotes the input
            raise ValueError("a message that is not a valid alert") from None
        return cls(parsed, channel, desc, attempts, float(next_at), last_error,
                   float(created_at), file)  # fmt: skip


@dataclass
class Attempt:
    """One attempt at one delivery, as the caller records it (alerts.jsonl)."""

    key: str
    message_id: str
    event: str
    channel: str
    """The channel's description."""
    ok: bool
    attempt: int
    """1 for the first attempt; 0 when none was made (a delivery dropped unread or unmatched)."""
    error: str | None
    at: str
    seconds: float
    """How long the attempt took."""
    final: bool
    """True when nothing more will be tried: it succeeded, or no retry is left."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def backoff(attempts: int, backoff_s: float) -> float:
    """The wait after `attempts` failed attempts: `backoff_s`, doubled after each, at most 5
    minutes."""
    return min(backoff_s * 2.0 ** max(attempts - 1, 0), MAX_BACKOFF_S)


class Outbox:
    """The pending deliveries of one environment (`EnvFolders.outbox`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._last_ns = 0

    def enqueue(
        self, message: AlertMessage, channels: Sequence[Channel], *, now: float | None = None
    ) -> list[Delivery]:
        """One pending delivery per channel, due now (written before this returns)."""
        now = time.time() if now is None else now
        self.folder.mkdir(parents=True, exist_ok=True)
        made = []
        for index, channel in enumerate(channels):
            delivery = Delivery(message, index, describe(channel), 0, now, None, now)
            delivery.file = f"{self._stamp()}-{index:03d}.json"
            self._save(delivery)
            made.append(delivery)
        if made:
            fsync_dir(self.folder)
        return made

    def pending(self) -> list[Delivery]:
        """Every pending delivery, oldest first (unreadable files are left out)."""
        return self._load()[0]

    def due(self, now: float | None = None) -> list[Delivery]:
        """The deliveries to try at `now`, oldest first: due, and not behind an earlier pending
        delivery of the same alert key to the same channel."""
        now = time.time() if now is None else now
        return self._due(self.pending(), now)

    def run_due(
        self,
        channels: Sequence[Channel],
        *,
        base_dir: Path,
        retries: int,
        backoff_s: float,
        record: Callable[[Attempt], None],
        now: float | None = None,
    ) -> list[Attempt]:
        """Try every due delivery once through `channels` (the manifest's list now) and return
        the attempts, each also passed to `record` as it is made. A success removes the
        delivery; a failure schedules the next attempt `backoff` later while fewer than
        `retries` retries were made, else removes it (a final failed attempt). A delivery that
        an earlier success unblocks is tried in the same run. Unreadable files are moved aside
        as `*.bad`; deliveries whose channel left the manifest are dropped: both are reported
        as final failed attempts. Never raises for a delivery's sake."""
        now = time.time() if now is None else now
        attempts: list[Attempt] = []

        def report(attempt: Attempt) -> None:
            attempts.append(attempt)
            record(attempt)

        self._sweep_tmp()
        pending, bad = self._load()
        for file, why in bad:
            report(self._set_aside(file, why, now))
        tried: set[str] = set()
        while batch := [d for d in self._due(pending, now) if d.file not in tried]:
            for delivery in batch:
                tried.add(delivery.file)
                attempt = self._attempt(delivery, channels, base_dir, retries, backoff_s, now)
                if attempt.final:
                    pending.remove(delivery)
                report(attempt)
        return attempts

    # --- one attempt -------------------------------------------------------------------------

    def _attempt(
        self,
        delivery: Delivery,
        channels: Sequence[Channel],
        base_dir: Path,
        retries: int,
        backoff_s: float,
        now: float,
    ) -> Attempt:
        message = delivery.message
        channel = self._channel_of(delivery, channels)
        if channel is None:
            self._remove(delivery)
            return Attempt(
                message.key, message.id, message.event, delivery.channel_desc, False, 0,
                f"dropped: channel #{delivery.channel + 1} is no longer "
                f"{delivery.channel_desc!r} in the manifest", iso(now), 0.0, True,
            )  # fmt: skip
        started = time.monotonic()
        error: str | None = None
        try:
            send(channel, message, base_dir=base_dir)
        except DeliveryError as failed:
            error = failed.reason
        except Exception as bug:  # a channel's unexpected failure must not stop the others
            error = f"unexpected {type(bug).__name__}"
        seconds = round(time.monotonic() - started, 3)
        number = delivery.attempts + 1
        final = error is None or number > retries
        if final:
            self._remove(delivery)
        else:
            delivery.attempts = number
            delivery.last_error = error
            delivery.next_at = now + backoff(number, backoff_s)
            self._save(delivery)
        return Attempt(
            message.key, message.id, message.event, delivery.channel_desc, error is None,
            number, error, iso(now), seconds, final,
        )  # fmt: skip

    @staticmethod
    def _channel_of(delivery: Delivery, channels: Sequence[Channel]) -> Channel | None:
        """The delivery's channel in the manifest's list now: at its index when that still
        describes the same, else the one channel that does (the list was reordered), else
        None (it was removed or changed)."""
        if delivery.channel < len(channels):
            channel = channels[delivery.channel]
            if describe(channel) == delivery.channel_desc:
                return channel
        same = [c for c in channels if describe(c) == delivery.channel_desc]
        return same[0] if len(same) == 1 else None

    # --- the files ---------------------------------------------------------------------------

    @staticmethod
    def _due(pending: list[Delivery], now: float) -> list[Delivery]:
        blocked: set[tuple[str, str]] = set()
        due = []
        for delivery in pending:
            lane = (delivery.message.key, delivery.channel_desc)
            if lane in blocked:
                continue
            blocked.add(lane)
            if delivery.next_at <= now:
                due.append(delivery)
        return due

    def _load(self) -> tuple[list[Delivery], list[tuple[str, str]]]:
        """The readable deliveries oldest first, and (file, why) for the unreadable ones."""
        try:
            files = sorted(p for p in self.folder.glob("*.json") if not p.name.startswith("."))
        except OSError:
            return [], []
        good: list[Delivery] = []
        bad: list[tuple[str, str]] = []
        for path in files:
            try:
                data = json.loads(path.read_bytes())
            except FileNotFoundError:
                continue
            except OSError as error:
                bad.append((path.name, f"cannot be read ({error.strerror})"))
                continue
            except ValueError:
                bad.append((path.name, "is not valid JSON (truncated or edited?)"))
                continue
            try:
                good.append(Delivery.from_json(data, path.name))
            except ValueError as error:
                bad.append((path.name, f"holds {error}"))
        return good, bad

    def _set_aside(self, file: str, why: str, now: float) -> Attempt:
        source = self.folder / file
        try:
            source.replace(source.with_name(f"{file}.bad"))
            error = f"outbox file {file} {why}: moved aside as {file}.bad, not delivered"
        except OSError as failed:
            error = f"outbox file {file} {why}, and cannot be moved aside ({failed.strerror})"
        return Attempt("", "", "", "", False, 0, error, iso(now), 0.0, True)

    def _save(self, delivery: Delivery) -> None:
        data = json.dumps(delivery.to_json(), ensure_ascii=False, indent=1).encode()
        write_atomic(self.folder / delivery.file, data)

    def _remove(self, delivery: Delivery) -> None:
        (self.folder / delivery.file).unlink(missing_ok=True)

    def _sweep_tmp(self) -> None:
        """Remove temporary files a killed process left behind (never a recent one)."""
        now = time.time()
        try:
            for path in self.folder.glob(".*.tmp"):
                if now - path.stat().st_mtime > STALE_TMP_S:
                    path.unlink(missing_ok=True)
        except OSError:
            pass

    def _stamp(self) -> str:
        """A name prefix that sorts in creation order: nanoseconds, strictly increasing within
        this process, and a random tail against another process's same nanosecond."""
        import secrets

        self._last_ns = max(time.time_ns(), self._last_ns + 1)
        return f"{self._last_ns:020d}-{secrets.token_hex(3)}"
