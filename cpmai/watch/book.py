"""The alert lifecycle of one environment, as Alertmanager has it: an alert fires when a check
first finds its bound breached, is sent again every `repeat` while checks keep finding it, and
resolves when a check that could judge it finds it gone. One open alert per key
(`ENV/KIND[/FEATURE]`): a breach found by every check is sent once, not once a check.

A silence (`cpmai alerts silence`, recorded in the ledger) holds back what matches it until it
expires; an alert still firing then is sent as it is. A resolution is sent only for an alert
whose firing was sent.

`AlertBook` owns `state.json` (the open alerts and the rollback streak, rewritten atomically
after each check) and appends every event to `alerts.jsonl`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from cpmai.alerts.message import AlertMessage, Event, alert_key, text_of
from cpmai.clock import epoch, iso
from cpmai.fsutil import read_json_object, write_atomic
from cpmai.home import EnvFolders
from cpmai.manifest_watch import AlertKind
from cpmai.watch.findings import Finding, Verdict

STATE_FORMAT: Final = "cpmai-watch-state/1"
ONE_SHOT: Final = frozenset({"rollback"})
"""Kinds that are news, not conditions: sent once, never open, never resolved."""


@dataclass
class OpenAlert:
    """An alert that is firing (or held back by a silence)."""

    key: str
    kind: AlertKind
    feature: str | None
    version: str | None
    summary: str
    started_at: str
    checks: int = 0
    sent_at: str | None = None
    """When its firing (or last repeat) was sent; None: not sent yet (silenced)."""
    silenced_by: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Streak:
    """Checks in a row in which the live version breached a kind of `auto_rollback_on`."""

    version: str | None = None
    count: int = 0
    """The longest of `counts` (shown; what is acted on is per kind)."""
    kinds: list[str] = field(default_factory=list)
    """The kinds the last check found breached."""
    counts: dict[str, int] = field(default_factory=dict)
    """Checks in a row that found each kind breached."""
    gave_up: bool = False
    """A rollback was due and cannot be made (no earlier good version, or the version was put
    live by an automatic rollback already): said once, not every check."""
    failures: int = 0
    """Rollbacks tried and failed for this version (retried at the next breaching check)."""


@dataclass
class Silence:
    """A silence recorded in the ledger: what it matches and until when."""

    id: str
    env: str
    kind: str | None
    feature: str | None
    until: float
    reason: str
    actor: str

    def matches(self, env: str, kind: str, feature: str | None) -> bool:
        return (
            self.env == env
            and (self.kind is None or self.kind == kind)
            and (self.feature is None or self.feature == feature)
        )


class AlertBook:
    """One environment's open alerts and rollback streak (`state.json`), and its event log
    (`alerts.jsonl`)."""

    def __init__(self, folders: EnvFolders, name: str, env: str) -> None:
        self.folders = folders
        self.name = name
        self.env = env
        self.open: dict[str, OpenAlert] = {}
        self.streak = Streak()
        self.checks = 0
        self.damaged: str | None = None
        """Why the state file could not be read (it was started afresh), when it could not."""
        self._load()

    # --- state ---------------------------------------------------------------------------------

    def _load(self) -> None:
        from cpmai.fsutil import not_regular

        path = self.folders.alert_state
        if not path.exists():
            return
        if not_regular(path) is not None:  # a FIFO would block the watcher forever
            self.damaged = f"{path} {not_regular(path)}: the open alerts start afresh"
            if not path.is_dir():
                path.unlink()  # rewritten at the next save (a folder there: saving fails, said)
            return
        from pydantic import TypeAdapter, ValidationError

        data = read_json_object(path)
        try:
            if data is None or data.get("format") != STATE_FORMAT:
                raise ValueError("not a state file of this format")
            # typed here: a field of the wrong type must not pass and kill a later check
            opened = TypeAdapter(dict[str, OpenAlert]).validate_python(data["open"])
            streak = TypeAdapter(Streak).validate_python(data["streak"])
            checks = TypeAdapter(int).validate_python(data["checks"])
            for key, alert in opened.items():
                if key != alert.key:
                    raise ValueError(f"alert {key!r} names itself {alert.key!r}")
                for moment in (alert.started_at, alert.sent_at):
                    if moment is not None:
                        epoch(moment)
            self.open, self.streak, self.checks = opened, streak, checks
        except (KeyError, TypeError, ValueError, AttributeError, ValidationError) as exc:
            self.open, self.streak, self.checks = {}, Streak(), 0
            why = str(exc).splitlines()[0][:200]
            self.damaged = f"{path} could not be read ({why}): the open alerts start afresh"

    def save(self) -> None:
        self.folders.watch.mkdir(parents=True, exist_ok=True)
        data = {
            "format": STATE_FORMAT,
            "open": {k: asdict(v) for k, v in self.open.items()},
            "streak": asdict(self.streak),
            "checks": self.checks,
        }
        write_atomic(self.folders.alert_state, json.dumps(data, indent=1, default=str).encode())

    def record(self, line: dict[str, Any]) -> None:
        """Append one line to `alerts.jsonl`."""
        append_line(self.folders.alerts, {"at": iso(), **line})

    # --- the lifecycle -------------------------------------------------------------------------

    def step(
        self,
        verdict: Verdict,
        *,
        version: str | None,
        repeat_s: float,
        silences: list[Silence],
        now: float | None = None,
    ) -> list[AlertMessage]:
        """Apply one check's verdict; returns the messages to send (firing, repeat, resolved).
        Every event is recorded, sent or not."""
        now = time.time() if now is None else now
        self.checks += 1
        out: list[AlertMessage] = []
        found: set[str] = set()
        for finding in verdict.findings:
            key = alert_key(self.env, finding.kind, finding.feature)
            found.add(key)
            alert = self.open.get(key)
            if alert is None:
                alert = OpenAlert(
                    key, finding.kind, finding.feature, version, finding.summary, iso(now)
                )
                self.open[key] = alert
            alert.checks += 1
            alert.summary, alert.details, alert.version = (
                finding.summary, finding.details, version
            )  # fmt: skip
            silence = _matching(silences, self.env, finding, now)
            if silence is not None:
                if alert.silenced_by != silence.id:
                    self.record({"type": "silenced", "key": key, "silence": silence.id,
                                 "summary": alert.summary})  # fmt: skip
                alert.silenced_by = silence.id
                continue
            released = alert.silenced_by is not None
            alert.silenced_by = None
            if alert.sent_at is None or released:  # new, or still firing when its silence ended
                out.append(self._message(alert, "firing" if alert.sent_at is None else "repeat",
                                         now))  # fmt: skip
                alert.sent_at = iso(now)
            elif now - epoch(alert.sent_at) >= repeat_s:
                out.append(self._message(alert, "repeat", now))
                alert.sent_at = iso(now)
        for key, alert in list(self.open.items()):
            moved_on = alert.version != version and alert.kind != "check"
            if key in found or (not verdict.judges(alert.kind, alert.feature) and not moved_on):
                continue
            if moved_on:  # the version it was about is no longer live (a rollout, a rollback)
                alert.summary = f"{alert.summary} — {alert.version} is no longer live"
            del self.open[key]
            message = self._message(alert, "resolved", now)
            if alert.sent_at is not None:
                out.append(message)
            else:
                self.record({"type": "event", "sent": False, **_brief(message)})
        for message in out:
            self.record({"type": "event", "sent": True, **_brief(message)})
        return out

    def undelivered(self, key: str, started_at: str) -> None:
        """A firing (or repeat) that no channel took after all its retries: the alert counts
        as not sent, so the next check that still finds it sends it again."""
        alert = self.open.get(key)
        if alert is not None and alert.started_at == started_at:
            alert.sent_at = None

    def close_all(self, reason: str, now: float) -> list[AlertMessage]:
        """Resolve every open alert (the watcher stops: `reason`); returns the resolutions to
        send (of the alerts whose firing was sent)."""
        out = []
        for alert in self.open.values():
            alert.summary = f"{alert.summary} — {reason}"
            message = self._message(alert, "resolved", now)
            sent = alert.sent_at is not None and alert.kind != "check"
            self.record({"type": "event", "sent": sent, **_brief(message)})
            if sent:
                out.append(message)
        self.open.clear()
        return out

    def news(self, finding: Finding, *, version: str | None) -> AlertMessage:
        """A one-shot alert (an automatic rollback): recorded and sent, never open."""
        now = time.time()
        alert = OpenAlert(
            alert_key(self.env, finding.kind, finding.feature), finding.kind, finding.feature,
            version, finding.summary, iso(now), checks=1, details=finding.details,
        )  # fmt: skip
        message = self._message(alert, "firing", now)
        self.record({"type": "event", "sent": True, **_brief(message)})
        return message

    def _message(self, alert: OpenAlert, event: Event, now: float) -> AlertMessage:
        resolved = event == "resolved"
        return AlertMessage(
            id=f"{alert.key}@{alert.started_at}/{event}@{iso(now, 'milliseconds')}",
            event=event,
            status="resolved" if resolved else "firing",
            text=text_of(
                event, self.name, self.env, alert.version, alert.summary, alert.started_at
            ),
            name=self.name,
            env=self.env,
            version=alert.version,
            kind=alert.kind,
            feature=alert.feature,
            key=alert.key,
            summary=alert.summary,
            started_at=alert.started_at,
            resolved_at=iso(now) if resolved else None,
            at=iso(now),
            checks=alert.checks,
            details=alert.details,
        )


LINE_TYPES: Final = frozenset({"event", "delivery", "silenced"})
"""What a line of `alerts.jsonl` is: anything else is not the watcher's (and counted unreadable)."""
ROTATE_BYTES: Final = 16 * 2**20
"""A watcher's JSON-lines file past this size is renamed `NAME.1` (the one before is
dropped): a check every 10 s for a year must not fill the disk."""


def append_line(path: Path, data: dict[str, Any]) -> None:
    """Append one JSON line (one write, O_APPEND: lines never interleave), first moving a file
    past ROTATE_BYTES aside. The watcher is its files' only writer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size > ROTATE_BYTES:
            path.replace(path.with_name(path.name + ".1"))
    line = (json.dumps(data, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _matching(silences: list[Silence], env: str, finding: Finding, now: float) -> Silence | None:
    for silence in silences:
        if silence.until > now and silence.matches(env, finding.kind, finding.feature):
            return silence
    return None


def _brief(message: AlertMessage) -> dict[str, Any]:
    return {
        "event": message.event,
        "key": message.key,
        "kind": message.kind,
        "feature": message.feature,
        "version": message.version,
        "summary": message.summary,
        "started_at": message.started_at,
        "id": message.id,
    }


def silences_of(events: list[Any], name: str) -> list[Silence]:
    """The silences recorded for `name` in the ledger's events, less the expired by hand
    (`unsilence`); expired by time ones are kept (the caller compares `until`)."""
    found: dict[str, Silence] = {}
    for event in events:
        if event.name != name:
            continue
        details = event.details or {}
        if event.action == "silence":
            try:
                found[str(details["id"])] = Silence(
                    id=str(details["id"]),
                    env=str(event.env),
                    kind=details.get("kind"),
                    feature=details.get("feature"),
                    until=epoch(str(details["until"])),
                    reason=str(details.get("reason") or ""),
                    actor=str(event.actor),
                )
            except (KeyError, TypeError, ValueError):
                continue  # the chain vouches for the line; a shape this code does not know
        elif event.action == "unsilence":
            found.pop(str(details.get("id")), None)
    return list(found.values())


def read_events(path: Path, limit: int = 1000) -> list[dict[str, Any]]:
    """The last `limit` lines of an `alerts.jsonl` (unreadable lines are skipped and counted in
    a final `{"type": "unreadable", "lines": n}`)."""
    from cpmai.fsutil import not_regular

    if not path.exists() or not_regular(path) is not None:
        return []
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        return []
    out: list[dict[str, Any]] = []
    bad = 0
    for line in lines[-limit:]:
        try:
            item = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(item, dict) and item.get("type") in LINE_TYPES:
            out.append(item)
        else:
            bad += 1
    if bad:
        out.append({"type": "unreadable", "lines": bad})
    return out
