"""One environment's watcher: a check on schedule, alerts through their lifecycle, deliveries
retried, and — when the environment opts in — the previous good version put back live after a
sustained breach.

A check is `cpmai monitor` over the last `window` (never before the live version went live:
after a rollout or a rollback only the version now live is judged), reading only what was
logged since the previous check (`IndexMemo`). It is made in two steps: `measure` (the
monitor's statistics: the watcher process runs it on a thread niced below the server) and
`conclude` (the alert lifecycle, its messages put in the outbox, the state saved, the check's
line in `checks.jsonl`, gauges for /metrics, triggers fired as `cpmai monitor` fires them —
and last, when due, the automatic rollback).
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpmai.alerts.message import AlertMessage
from cpmai.alerts.outbox import Attempt, Outbox
from cpmai.clock import epoch, iso, parse_duration
from cpmai.errors import CpmaiError
from cpmai.home import Home
from cpmai.ledger import Ledger
from cpmai.replay import replay
from cpmai.watch.book import AlertBook, Silence, append_line, silences_of
from cpmai.watch.findings import Finding, Verdict, failed_check, verdict_of

if TYPE_CHECKING:
    from cpmai.manifest import Manifest
    from cpmai.manifest_watch import Channel
    from cpmai.monitor.result import MonitorResult
    from cpmai.predlog.parts import IndexMemo
    from cpmai.replay import State

ACTOR = "cpmai-watcher"
DRIFT_ROWS = 200_000
"""Drift is judged on at most this many rows of a check's window (evenly spaced in the rows'
time order): the statistics are as sure at that size, and a check's cost stays bounded under
heavy traffic."""
DRAIN_S = 10.0
"""How long a stopping watcher goes on delivering what is pending."""


@dataclass
class CheckRecord:
    """One check, as `checks.jsonl` keeps it."""

    at: str
    seconds: float
    version: str | None
    since: str | None
    until: str
    requests: int
    rows: int
    findings: list[dict[str, Any]]
    judged: list[str]
    sent: list[str] = field(default_factory=list)
    triggers: list[str] = field(default_factory=list)
    rollback: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class Live:
    """What is live in the environment now, and the manifest that governs it."""

    version: str
    since: float
    manifest: Manifest
    by: str
    """Who put it live (`cpmai-watcher` after an automatic rollback)."""
    how: str
    base_dir: Path
    """The folder of the manifest it was packaged from: where relative alert files and
    commands start (the artifact's own folder is not theirs)."""
    previous_good: str | None


@dataclass
class Measured:
    """What `measure` found, for `conclude`."""

    now: float
    started: float
    live: Live | None
    since: float | None
    verdict: Verdict
    result: MonitorResult | None = None


class Watcher:
    """Checks one environment of one model; owns its `watch/NAME/ENV/` files but the process
    record (`cpmai.watch.process`)."""

    def __init__(
        self, home: Path, name: str, env: str, say: Callable[[str], None] = lambda _: None
    ) -> None:
        """`say` hears what goes wrong beside the checks' records (the process's log)."""
        self.say = say
        self.home = home
        self.name = name
        self.env = env
        self.folders = Home(home).env(name, env)
        self.book = AlertBook(self.folders, name, env)
        self.outbox = Outbox(self.folders.outbox)
        self.stopping = False
        """Set when an interruption reached the watcher inside a rollback it made."""
        self._memo: IndexMemo | None = None
        self._manifests: dict[str, Manifest] = {}
        self._live: tuple[tuple[int, int], Live | None] | None = None
        self._taken: set[str] = set()
        """Messages a channel took (this process's deliveries)."""
        self._given_up: set[str] = set()
        """Firings a channel gave up on, while another channel may still take them."""
        self.last_live: Live | None = None
        self._silences: list[Silence] = []
        """The model's silences, read with the live version (`live`)."""

    # --- what is live ----------------------------------------------------------------------

    def live(self) -> Live | None:
        """The live version and its manifest, or None when nothing is live here (read again
        only when the ledger changed)."""
        stamp = _stamp(Home(self.home).ledger)
        if self._live is not None and self._live[0] == stamp:
            return self._live[1]
        events = Ledger(self.home).events()
        state = replay(events)
        self._silences = silences_of(events, self.name)
        env_state = state.env(self.name, self.env)
        rollout = env_state.live
        found = None
        if rollout is not None:
            manifest = self._manifest(rollout.version)
            previous = env_state.previous_good()
            found = Live(
                rollout.version, epoch(rollout.time), manifest, rollout.actor, rollout.action,
                project_folder(state, self.home, self.name, rollout.version),
                previous.version if previous else None,
            )  # fmt: skip
            self.last_live = found
        self._live = (stamp, found)
        return found

    def _manifest(self, version: str) -> Manifest:
        manifest = self._manifests.get(version)
        if manifest is None:
            from cpmai.artifacts import open_artifact

            manifest = open_artifact(self.home, self.name, version).manifest()
            self._manifests[version] = manifest
        return manifest

    # --- one check -------------------------------------------------------------------------

    def check(self, now: float | None = None) -> CheckRecord:
        """Run one check and act on it (`measure`, then `conclude`)."""
        return self.conclude(self.measure(now))

    def measure(self, now: float | None = None) -> Measured:
        """The monitor's judgement of the window; never raises (a failure is a `check`
        finding)."""
        from cpmai.monitor.run import monitor
        from cpmai.predlog.parts import IndexMemo

        started = time.perf_counter()
        now = time.time() if now is None else now
        try:
            live = self.live()
        except CpmaiError as exc:
            return Measured(now, started, None, None, failed_check(exc.message))
        except Exception as exc:
            return Measured(now, started, None, None, self._bug("reading the ledger", exc))
        if live is None:
            return Measured(
                now, started, None, None, failed_check(f"nothing is live in {self.env}")
            )
        schedule = live.manifest.monitoring.schedule
        since = max(now - parse_duration(schedule.window if schedule else "1h"), live.since)
        if self._memo is None:
            self._memo = IndexMemo()
        try:
            result = monitor(
                self.home, self.name, self.env,
                window_s=max(now - since, 1.0), since=since, until=now, now=now,
                version=live.version, memo=self._memo, drift_rows=DRIFT_ROWS,
            )  # fmt: skip
        except CpmaiError as exc:
            return Measured(now, started, live, since, failed_check(exc.message))
        except Exception as exc:  # a bug must not stop the watching: said, kept, alerted
            self._memo = None  # what it remembered may be what failed
            return Measured(now, started, live, since, self._bug("the check", exc))
        min_requests = schedule.min_requests if schedule else 20
        return Measured(now, started, live, since, verdict_of(result, min_requests=min_requests),
                        result)  # fmt: skip

    def conclude(self, measured: Measured) -> CheckRecord:
        """Record and act on a measured check: alerts (enqueued before the state that says
        they were sent is saved), triggers, gauges, the check's line; the rollback last."""
        live, now = measured.live, measured.now
        record = CheckRecord(
            at=iso(now), seconds=0.0, version=live.version if live else None,
            since=iso(measured.since) if measured.since is not None else None, until=iso(now),
            requests=measured.result.traffic.requests if measured.result else 0,
            rows=measured.result.traffic.rows if measured.result else 0,
            findings=[f.to_json() for f in measured.verdict.findings],
            judged=sorted(measured.verdict.judged),
        )  # fmt: skip
        try:
            self._conclude(measured, record)
        except Exception as exc:  # the state or a file could not be written: said and kept
            record.error = self._bug("concluding the check", exc).findings[0].summary
        record.seconds = round(time.perf_counter() - measured.started, 4)
        try:
            append_line(self.folders.checks, record.__dict__)
        except OSError as exc:
            self._log(f"checks.jsonl: {exc}")
        return record

    def _conclude(self, measured: Measured, record: CheckRecord) -> None:
        live, now, verdict, result = measured.live, measured.now, measured.verdict, measured.result
        manifest = live.manifest if live else None
        settings = manifest.monitoring.alerts if manifest else None
        with contextlib.suppress(Exception):  # unreadable: measure said so; last silences hold
            self.live()  # the ledger is read again only when it changed (silences are events)
        silences = self._silences
        repeat_s = parse_duration(settings.repeat) if settings else 4 * 3600.0
        messages = self.book.step(verdict, version=record.version, repeat_s=repeat_s,
                                  silences=silences, now=now)  # fmt: skip
        record.sent = self._enqueue(messages, live)
        self.book.save()
        if result is not None:
            record.triggers = self._triggers(result)
            self._gauges(result, now, time.perf_counter() - measured.started)
        if live is not None:
            self.deliver()
            record.rollback = self._maybe_roll_back(verdict, live)

    def _triggers(self, result: MonitorResult) -> list[str]:
        from cpmai.monitor.triggers import respond

        try:
            fired = respond(self.home, result, actor=ACTOR)
        except CpmaiError as exc:
            self._log(f"triggers: {exc.message}")
            return []
        return [a.kind for a in fired]

    def _gauges(self, result: MonitorResult, now: float, seconds: float) -> None:
        from cpmai.monitor.gauges import render_gauges, write_gauges

        firing: dict[str, int] = {}
        for alert in self.book.open.values():
            if alert.silenced_by is None:
                firing[alert.kind] = firing.get(alert.kind, 0) + 1
        text = render_gauges(result, checked_at=now, check_seconds=seconds, firing=firing)
        write_gauges(self.folders.gauges, text)

    # --- automatic rollback ----------------------------------------------------------------

    def _maybe_roll_back(self, verdict: Verdict, live: Live) -> dict[str, Any] | None:
        """Count, per kind of the environment's `rollout.auto_rollback_on`, the checks in a row
        in which the live version breached it; at `for` of them, roll back (once per version;
        never from a version an automatic rollback put live)."""
        spec = live.manifest.environments.get(self.env)
        kinds = set(spec.rollout.auto_rollback_on) if spec else set()
        streak = self.book.streak
        if streak.version != live.version:
            streak.version, streak.counts, streak.gave_up, streak.failures = (
                live.version, {}, False, 0
            )  # fmt: skip
        if not kinds or spec is None:
            return None
        breached: list[str] = sorted({f.kind for f in verdict.findings} & kinds)
        judged = verdict.kinds_judged()
        for kind in kinds:
            if kind in breached:
                streak.counts[kind] = streak.counts.get(kind, 0) + 1
            elif kind in judged:  # judged and fine; not judged: the count stands
                streak.counts[kind] = 0
        streak.kinds = breached
        streak.count = max(streak.counts.values(), default=0)
        due = sorted(k for k in breached if streak.counts[k] >= spec.rollout.for_checks)
        self.book.save()
        if not due or streak.gave_up:
            return None
        evidence = {
            "checks": {k: streak.counts[k] for k in due},
            "kinds": due,
            "findings": [{**f.to_json(), "details": f.details} for f in verdict.findings
                         if f.kind in due],
        }  # fmt: skip
        what = f"{', '.join(due)} breached in {streak.count} checks in a row"
        refusal = None
        if live.by == ACTOR and live.how == "rollback":
            refusal = (f"{live.version} was put live by an automatic rollback: not rolled back "
                       "again automatically (a person decides)")  # fmt: skip
        elif live.previous_good is None:
            refusal = f"there is no earlier good version of {self.name} in {self.env}"
        if refusal is not None:
            streak.gave_up = True
            outcome = {"from": live.version, "to": None, "refused": refusal}
            return self._rollback_news(
                live, f"{live.version}: {what}; {refusal}", evidence, outcome
            )
        return self._roll_back(live, what, evidence, spec.rollout.for_checks)

    def _roll_back(
        self, live: Live, what: str, evidence: dict[str, Any], for_checks: int
    ) -> dict[str, Any] | None:
        from cpmai.errors import UsageError
        from cpmai.lifecycle import rollback

        reason = f"automatic rollback: {what} (rollout.auto_rollback_on, for: {for_checks})"
        self._log(f"rolling back from {live.version}: {what}")
        try:
            done = rollback(
                self.home, self.name, self.env, actor=ACTOR, reason=reason, evidence=evidence,
                expect=live.version, progress=lambda text: self._log(f"  {text}"),
            )  # fmt: skip
        except KeyboardInterrupt:  # SIGTERM reached the rollout: it put the routing back
            self.stopping = True
            return {"from": live.version, "to": None, "error": "interrupted"}
        except UsageError as exc:  # it is no longer live (a rollout came first): nothing to do
            self._log(f"not rolled back: {exc.message}")
            return {"from": live.version, "to": None, "skipped": exc.message}
        except CpmaiError as exc:  # tried again at the next check that finds the breach
            streak = self.book.streak
            streak.failures += 1
            self.book.save()
            outcome = {"from": live.version, "to": None, "error": exc.message}
            if streak.failures > 1:
                return outcome
            summary = f"{live.version}: {what}; the rollback failed: {exc.message}"
            return self._rollback_news(live, summary, evidence, outcome)
        summary = f"rolled back from {live.version} to {done.version}: {what}"
        return self._rollback_news(
            live, summary, {**evidence, "to": done.version},
            {"from": live.version, "to": done.version, "reason": reason}, done.version,
        )  # fmt: skip

    def _rollback_news(
        self,
        live: Live,
        summary: str,
        evidence: dict[str, Any],
        outcome: dict[str, Any],
        version: str | None = None,
    ) -> dict[str, Any]:
        """The `rollback` alert, about `version` (the one now live), else the one judged."""
        finding = Finding("rollback", None, summary, evidence)
        news = self.book.news(finding, version=version or live.version)
        self._enqueue([news], live)
        self.deliver()
        return outcome

    # --- deliveries ------------------------------------------------------------------------

    def _enqueue(self, messages: list[AlertMessage], live: Live | None) -> list[str]:
        """Put the messages whose kind `monitoring.alerts.on` lists in the outbox (one file per
        channel); returns the ids enqueued."""
        if live is None or not messages:
            return []
        settings = live.manifest.monitoring.alerts
        wanted = [m for m in messages if m.kind in settings.on]
        if not settings.channels:
            return []
        for message in wanted:
            self.outbox.enqueue(message, settings.channels)
        return [m.id for m in wanted]

    def deliver(self, now: float | None = None) -> list[Attempt]:
        """Try every delivery that is due (each attempt recorded in `alerts.jsonl`). A
        delivery keeps the channels of the version it is about, even after a rollback to a
        version with others."""
        pending = self.outbox.pending()
        if not pending:
            return []
        live = self.live() or self.last_live
        if live is None:
            return []
        channels: list[Channel] = list(live.manifest.monitoring.alerts.channels)
        from cpmai.alerts.channels import describe

        known = {describe(c) for c in channels}
        for version in {d.message.version for d in pending if d.message.version}:
            try:
                others = self._manifest(version).monitoring.alerts.channels
            except CpmaiError:
                continue
            for channel in others:
                if describe(channel) not in known:
                    channels.append(channel)
                    known.add(describe(channel))
        settings = live.manifest.monitoring.alerts

        def record(attempt: Attempt) -> None:
            self.book.record({"type": "delivery", **attempt.to_json()})
            if attempt.ok:
                self._taken.add(attempt.message_id)
            elif attempt.final and attempt.event in ("firing", "repeat"):
                self._given_up.add(attempt.message_id)

        attempts = self.outbox.run_due(
            channels, base_dir=live.base_dir, retries=settings.retries,
            backoff_s=settings.backoff_s, now=now, record=record,
        )  # fmt: skip
        # a firing that NO channel took is sent again by the next check that finds it; one
        # that a channel took is not (the others would get it twice)
        waiting = {d.message.id for d in self.outbox.pending()}
        for ident in self._given_up - self._taken - waiting:
            message = next((d.message for d in pending if d.message.id == ident), None)
            if message is not None:
                self.book.undelivered(message.key, message.started_at)
                self.book.save()
        self._given_up &= waiting
        return attempts

    def close(self, reason: str) -> None:
        """The watcher stops: its open alerts are resolved (`reason` said), what is pending is
        delivered for up to DRAIN_S, and its gauges are withdrawn from /metrics."""
        live = self.last_live
        self._enqueue(self.book.close_all(reason, time.time()), live)
        self.book.save()
        deadline = time.monotonic() + DRAIN_S
        while self.outbox.pending() and time.monotonic() < deadline:
            self.deliver()
            time.sleep(0.2)
        self.folders.gauges.unlink(missing_ok=True)

    # --- the log ---------------------------------------------------------------------------

    def _bug(self, what: str, exc: Exception) -> Verdict:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        self._log(f"{what} failed:\n{traceback.format_exc()}")
        return failed_check(f"{what} failed: {detail}")

    def _log(self, text: str) -> None:
        self.say(f"{iso()} {text}")


def project_folder(state: State, home: Path, name: str, version: str) -> Path:
    """The folder of the manifest `version` was packaged from (the package event says), where
    an alert channel's relative file and command start; the state folder's parent when that
    folder is gone (another machine's, a promoted artifact)."""
    record = state.versions.get(name, {}).get(version)
    source = (record.details.get("source") if record else None) or ""
    folder = Path(str(source)).parent if source else home.parent
    return folder if folder.is_dir() else home.parent


def _stamp(path: Path) -> tuple[int, int]:
    try:
        info = path.stat()
    except OSError:
        return (0, 0)
    return (info.st_size, info.st_mtime_ns)
