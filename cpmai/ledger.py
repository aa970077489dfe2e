"""The hash-chained, append-only event log (`ledger.jsonl`) and the state it replays to.

One JSON event a line. Each event carries `prev` (the previous event's hash) and `hash` (the
SHA-256 of its own canonical JSON without `hash`), so editing or removing any line breaks the
chain. Writers hold an exclusive lock on `ledger.lock`, append one line with a single write and
fsync it, then update `ledger.head` (the last seq and hash) so a removed *last* line is caught too.

A crash in the middle of a write leaves a last line without its newline: a torn tail. It is
never dropped or merged silently: writers refuse to append after it and `verify` fails until
`repair` moves the torn bytes aside (into a file kept for inspection) and records that it did.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from cpmai.clock import iso, parse_time
from cpmai.errors import IntegrityError
from cpmai.fsutil import write_atomic
from cpmai.home import Home

GENESIS = "0" * 64
# `Home.ledger_verified` holds how far the chain was verified: the prefix's length and SHA-256,
# and its last seq and hash. Hashing the prefix's bytes replaces re-hashing each of its events
# on every read. It is no weaker than the chain: whoever can rewrite it can recompute every hash
# too (docs/security.md: pin the head outside the machine).
_FIELDS = ("seq", "time", "actor", "action", "name", "version", "env", "details", "prev")
_KEYS = (*_FIELDS, "hash")


@dataclass(frozen=True)
class Event:
    """One ledger line."""

    seq: int
    time: str
    actor: str
    action: str
    name: str | None
    version: str | None
    env: str | None
    details: dict[str, Any]
    prev: str
    hash: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        return cls(*map(data.__getitem__, _KEYS))

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in (*_FIELDS, "hash")}

    @property
    def when(self) -> datetime:
        return parse_time(self.time)


def event_hash(body: dict[str, Any]) -> str:
    """SHA-256 of an event's canonical JSON, `hash` itself left out."""
    canonical = json.dumps(
        {key: body[key] for key in _FIELDS},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def hash_matches(body: dict[str, Any], recorded: Any) -> bool:
    """Whether `recorded` is the event's hash (`event_hash`). orjson's sorted compact JSON is
    the same bytes for the events cpmai writes and ten times faster to make; the standard
    library's, which the writer uses, decides when they differ."""
    try:
        fast = orjson.dumps({key: body[key] for key in _FIELDS}, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        fast = b""
    if hashlib.sha256(fast).hexdigest() == recorded:
        return True
    return bool(event_hash(body) == recorded)


def now_iso() -> str:
    """The time an event is recorded (tests set the clock by replacing this)."""
    return iso(timespec="microseconds")


@dataclass(frozen=True)
class TornTail:
    """Bytes after the last complete line: a write that did not finish."""

    line: int
    offset: int
    size: int

    def describe(self, path: Path) -> str:
        return (
            f"{path}:{self.line}: incomplete last line ({self.size} bytes, an interrupted write); "
            "the events before it are intact"
        )


class TornTailError(IntegrityError):
    def __init__(self, path: Path, torn: TornTail) -> None:
        super().__init__(
            torn.describe(path),
            hint="inspect it, then run `cpmai ledger repair` to move it aside",
        )
        self.torn = torn


@dataclass
class LedgerRead:
    events: list[Event]
    torn: TornTail | None = None


@dataclass
class VerifyReport:
    events: int = 0
    problems: list[str] = field(default_factory=list)
    torn: TornTail | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


class Ledger:
    """The ledger in `home`. Cheap to create; reads and writes go to disk every time."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.folders = Home(home)
        self.path = self.folders.ledger
        self.head_path = self.folders.ledger_head
        self.lock_path = self.folders.ledger_lock

    # --- reading ---------------------------------------------------------------------------

    def read(self) -> LedgerRead:
        """Every complete event, and the torn tail if there is one. Does not check hashes."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return LedgerRead(events=[])
        body, torn = _split_torn(raw)
        events = []
        for number, line in enumerate(body.splitlines(), start=1):
            try:
                events.append(Event.from_dict(json.loads(line)))
            except (ValueError, KeyError, TypeError):
                raise IntegrityError(
                    f"{self.path}:{number}: not a valid ledger event",
                    hint="run `cpmai ledger verify` for the full report",
                ) from None
        return LedgerRead(events=events, torn=torn)

    def events(self, name: str | None = None) -> list[Event]:
        """Every event, after checking the chain (`trusted`): what every command that acts on
        the ledger's word reads. IntegrityError (exit 5) naming the line otherwise."""
        events = self.trusted().events
        return events if name is None else [e for e in events if e.name == name]

    def trusted(self) -> LedgerRead:
        """`read()`, refused (IntegrityError naming the first problem) unless the chain holds
        (`check`)."""
        lines, torn = self.check()
        try:
            events = [Event.from_dict(orjson.loads(line)) for line in lines]
        except (ValueError, KeyError, TypeError):  # checked above: a line changed meanwhile
            self._refuse([f"{self.path.name}: changed while it was read"])
        return LedgerRead(events=events, torn=torn)

    def check(self) -> tuple[list[bytes], TornTail | None]:
        """Refuse (IntegrityError naming the first problem) unless every line's hash, its link
        to the line before and consecutive seqs hold, and the head file names an event on the
        chain. Lines verified before (`Home.ledger_verified`) are checked by one hash of their
        bytes, so a writer's check before appending reads only what was added since. Returns the
        complete lines and the torn tail, if any."""
        head = self._read_head()  # before the ledger: appends between the reads only add lines
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            raw = b""
        body, torn = _split_torn(raw)
        lines = body.splitlines()
        cached = self._verified(body)
        start, last = cached if cached else (0, GENESIS)
        parsed: list[Any] = [None] * start
        for number, line in enumerate(lines[start:], start=start + 1):
            try:
                parsed.append(orjson.loads(line))
            except ValueError:
                self._refuse([f"{self.path.name}:{number}: not a valid ledger event"])
        problems, _, newest = _chain(parsed[start:], start, self.path.name, first_only=True)
        first = parsed[start] if len(parsed) > start else None
        if start and isinstance(first, dict) and first.get("prev") != last:
            problems.insert(
                0,
                f"{self.path.name}:{start + 1}: prev does not match the hash of the line before "
                "(chain broken)",
            )
        if head is not None and 1 <= head[0] <= start and head[0] != start:
            try:  # the head names an event verified before: read just that one
                parsed[head[0] - 1] = json.loads(lines[head[0] - 1])
            except ValueError:
                parsed[head[0] - 1] = {}
        elif head is not None and head[0] == start and start:
            parsed[start - 1] = {"hash": last}
        problems += _head_problems(head, parsed, self.path.name)
        if problems:
            self._refuse(problems[:1])
        if len(lines) > start:
            self._remember(body, len(lines), newest)
        return lines, torn

    def _refuse(self, problems: list[str]) -> Any:
        raise IntegrityError(
            "the ledger does not verify, so nothing it says is acted on: " + "; ".join(problems),
            hint="run `cpmai ledger verify` for the full report",
        )

    def _verified(self, body: bytes) -> tuple[int, str] | None:
        """(events, last hash) of the prefix of `body` verified before, if it is unchanged."""
        try:
            data = json.loads(self.folders.ledger_verified.read_text())
            size, count, last = int(data["bytes"]), int(data["events"]), str(data["hash"])
            if size <= len(body) and hashlib.sha256(body[:size]).hexdigest() == data["sha256"]:
                return count, last
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    def _remember(self, body: bytes, count: int, last: str) -> None:
        doc = {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(), "events": count,
               "hash": last}  # fmt: skip
        try:
            self.folders.ledger_verified.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.folders.ledger_verified, json.dumps(doc).encode())
        except OSError:  # a read-only state folder: the next read checks every line again
            pass

    # --- writing ---------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Hold the writer lock: read state and append events without another writer between."""
        self.home.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                yield Transaction(self, fd)
            finally:
                os.close(fd)
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)

    def append(
        self,
        action: str,
        *,
        actor: str,
        name: str | None = None,
        version: str | None = None,
        env: str | None = None,
        details: dict[str, Any] | None = None,
        sign_with: Path | None = None,
    ) -> Event:
        with self.transaction() as tx:
            return tx.append(
                action, actor=actor, name=name, version=version, env=env, details=details,
                sign_with=sign_with,
            )  # fmt: skip

    def repair(self, *, actor: str) -> TornTail | None:
        """Move a torn tail aside (kept next to the ledger) and record a `repair` event."""
        with self.transaction() as tx:
            torn = tx.torn_tail()
            if torn is None:
                return None
            os.lseek(tx.fd, torn.offset, os.SEEK_SET)
            kept = os.read(tx.fd, torn.size)
            aside = self.folders.ledger_torn(now_iso().replace(":", ""))
            write_atomic(aside, kept)
            os.ftruncate(tx.fd, torn.offset)
            os.fsync(tx.fd)
            tx.append(
                "repair",
                actor=actor,
                details={"removed_bytes": torn.size, "line": torn.line, "saved_to": aside.name},
            )
            return torn

    # --- checking --------------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Re-hash the whole chain (no cache); every problem names its line."""
        report = VerifyReport()
        head = self._read_head()
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            raw = b""
        body, report.torn = _split_torn(raw)
        if report.torn:
            report.problems.append(report.torn.describe(self.path))
        events: list[Any] = []
        for number, line in enumerate(body.splitlines(), start=1):
            try:
                events.append(orjson.loads(line))
            except ValueError:
                events.append(None)
                report.problems.append(f"{self.path.name}:{number}: not a valid ledger event")
        problems, report.events, _ = _chain(events, 0, self.path.name, first_only=False)
        report.problems += problems
        report.problems += _head_problems(head, events, self.path.name)
        return report

    def head(self) -> tuple[int, str] | None:
        """The last event's (seq, hash) — what to pin outside the machine — after `trusted`."""
        events = self.trusted().events
        return (events[-1].seq, events[-1].hash) if events else None

    def _read_head(self) -> tuple[int, str] | None:
        try:
            data = json.loads(self.head_path.read_text())
            return int(data["seq"]), str(data["hash"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return (0, "?")


class Transaction:
    """Appends under the ledger lock. Obtain one from `Ledger.transaction()`."""

    def __init__(self, ledger: Ledger, fd: int) -> None:
        self.ledger = ledger
        self.fd = fd
        self._last: Event | None = None
        self._last_read = False

    def events(self) -> list[Event]:
        read = self.ledger.trusted()
        if read.torn:
            raise TornTailError(self.ledger.path, read.torn)
        return read.events

    def torn_tail(self) -> TornTail | None:
        size = os.fstat(self.fd).st_size
        if size == 0:
            return None
        os.lseek(self.fd, size - 1, os.SEEK_SET)
        if os.read(self.fd, 1) == b"\n":
            return None
        start = _last_line_start(self.fd, size)
        os.lseek(self.fd, 0, os.SEEK_SET)
        lines = _count_newlines(self.fd, start) + 1
        return TornTail(line=lines, offset=start, size=size - start)

    def last(self) -> Event | None:
        if not self._last_read:
            torn = self.torn_tail()
            if torn:
                raise TornTailError(self.ledger.path, torn)
            self.ledger.check()  # nothing is chained after a line that does not verify
            size = os.fstat(self.fd).st_size
            if size == 0:
                self._last = None
            else:
                start = _last_line_start(self.fd, size - 1)
                os.lseek(self.fd, start, os.SEEK_SET)
                line = os.read(self.fd, size - start)
                try:
                    self._last = Event.from_dict(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    raise IntegrityError(
                        f"{self.ledger.path}: the last event is not valid",
                        hint="run `cpmai ledger verify`",
                    ) from None
            self._last_read = True
        return self._last

    def append(
        self,
        action: str,
        *,
        actor: str,
        name: str | None = None,
        version: str | None = None,
        env: str | None = None,
        details: dict[str, Any] | None = None,
        sign_with: Path | None = None,
    ) -> Event:
        """Append one event; `sign_with` (an SSH key) signs it (`cpmai.signatures`)."""
        last = self.last()
        body: dict[str, Any] = {
            "seq": last.seq + 1 if last else 1,
            "time": now_iso(),
            "actor": actor,
            "action": action,
            "name": name,
            "version": version,
            "env": env,
            "details": details or {},
            "prev": last.hash if last else GENESIS,
        }
        if sign_with is not None:
            from cpmai import signatures

            body["details"] = {**body["details"], "signature": signatures.sign(body, sign_with)}
        body["hash"] = event_hash(body)
        line = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        data = (line + "\n").encode("utf-8")
        size = os.fstat(self.fd).st_size
        try:
            written = os.write(self.fd, data)
            if written != len(data):  # a full disk mid-line: take the part back (we hold the lock)
                os.ftruncate(self.fd, size)
                raise OSError(errno.ENOSPC, "short write (no space left on device?)")
            os.fsync(self.fd)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"{exc.strerror}: the {action} event was NOT recorded",
                exc.filename or str(self.ledger.path),
            ) from None
        event = Event.from_dict(body)
        # the event is recorded: a head that cannot be updated lags behind, as readers allow
        with contextlib.suppress(OSError):
            write_atomic(
                self.ledger.head_path, json.dumps({"seq": event.seq, "hash": event.hash}).encode()
            )
        self._last = event
        self._last_read = True
        return event


def _chain(
    events: list[Any], start: int, file: str, *, first_only: bool
) -> tuple[list[str], int, str]:
    """Problems of `events` (parsed lines; None for one that is not JSON), which begin at line
    `start` + 1: each one's hash, its link to the one before, consecutive seqs. Returns the
    problems, the events checked and the last hash."""
    problems: list[str] = []
    prev = events[0].get("prev") if start and events and isinstance(events[0], dict) else GENESIS
    expected = start + 1
    checked = 0
    for offset, data in enumerate(events):
        where = f"{file}:{start + offset + 1}"
        try:
            if data is None:
                raise ValueError
            recorded, seq = data["hash"], data["seq"]
            intact = hash_matches(data, recorded)
        except (ValueError, KeyError, TypeError):
            if data is not None:
                problems.append(f"{where}: not a valid ledger event")
            prev, expected = "?", expected + 1
        else:
            if seq != expected:
                problems.append(
                    f"{where}: seq {seq} where {expected} was expected (a line removed or "
                    "inserted?)"
                )
            if data["prev"] != prev and prev != "?":
                problems.append(
                    f"{where}: prev does not match the hash of the line before (chain broken)"
                )
            if not intact:
                problems.append(f"{where}: content does not match its hash (edited?)")
            prev, expected = recorded, (seq if isinstance(seq, int) else expected) + 1
            checked += 1
        if problems and first_only:
            break
    return problems, checked, str(prev)


def _head_problems(head: tuple[int, str] | None, events: list[Any], file: str) -> list[str]:
    """The head file (read before the ledger) must name an event on the chain; it may lag the
    ledger (appends since), and may be missing only while the ledger holds one event at most
    (a crash between the first append and its head)."""
    count = len(events)
    if head is None:
        if count >= 2:
            return [
                f"ledger.head is missing while {file} holds {count} events (removed, with "
                "events from the end?)"
            ]
        return []
    seq, digest = head
    if seq > count:
        return [
            f"{file}: ends at seq {count} but ledger.head records seq {seq} (events removed "
            "from the end?)"
        ]
    if seq >= 1:
        data = events[seq - 1]
        if not isinstance(data, dict) or data.get("hash") != digest:
            return [f"{file}:{seq}: the event's hash differs from ledger.head (rewritten?)"]
    elif count:
        return [f"ledger.head is not readable while {file} holds {count} events"]
    return []


def _split_torn(raw: bytes) -> tuple[bytes, TornTail | None]:
    if not raw or raw.endswith(b"\n"):
        return raw, None
    start = raw.rfind(b"\n") + 1
    torn = TornTail(line=raw.count(b"\n", 0, start) + 1, offset=start, size=len(raw) - start)
    return raw[:start], torn


def _last_line_start(fd: int, end: int) -> int:
    """Offset just after the last newline before `end` (0 if none)."""
    chunk = 65536
    pos = end
    while pos > 0:
        step = min(chunk, pos)
        pos -= step
        os.lseek(fd, pos, os.SEEK_SET)
        block = os.read(fd, step)
        found = block.rfind(b"\n")
        if found != -1:
            return pos + found + 1
    return 0


def _count_newlines(fd: int, end: int) -> int:
    count, pos = 0, 0
    while pos < end:
        block = os.read(fd, min(1 << 20, end - pos))
        if not block:
            break
        count += block.count(b"\n")
        pos += len(block)
    return count
