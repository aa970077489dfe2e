"""One environment's watcher: a check on schedule, alerts through their lifecycle, deliveries
retried, and — when the environment opts in — the previous good version put back live after a
sustained breach.

A check is `cpmai monitor` over the last `window` (never before the live version went live:
after a rollout or a rollback only the version now live is judged), reading only what was
logged since the previous check (`IndexMemo`). Its verdict goes to `checks.jsonl`, its figures
to `gauges.prom` (the server appends them to /metrics), its findings to the `AlertBook`, and
triggers are fired as `cpmai monitor` fires them (recorded in the ledger).
"""

from __future__ import annotations

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
from cpmai.watch.book import AlertBook, append_line, silences_of
from cpmai.watch.findings import Finding, Verdict, failed_check, verdict_of

if TYPE_CHECKING:
    from cpmai.manifest import Manifest
    from cpmai.monitor.result import MonitorResult
    from cpmai.predlog.parts import IndexMemo

ACTOR = "cpmai-watcher"
DRIFT_ROWS = 200_000
"""Drift is judged on at most this many rows of a check's window, evenly spaced in time: the
statistics are as sure at that size, and a check's cost stays bounded under heavy traffic."""


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
        self._memo: IndexMemo | None = None
        self._manifests: dict[str, Manifest] = {}

    # --- what is live ----------------------------------------------------------------------

    def live(self) -> Live | None:
        """The live version and its manifest, or None when nothing is live here."""
        state = replay(Ledger(self.home).events())
        rollout = state.env(self.name, self.env).live
        if rollout is None:
            return None
        manifest = self._manifests.get(rollout.version)
        if manifest is None:
            from cpmai.artifacts import open_artifact

            manifest = open_artifact(self.home, self.name, rollout.version).manifest()
            self._manifests[rollout.version] = manifest
        return Live(rollout.version, epoch(rollout.time), manifest)

    # --- one check -------------------------------------------------------------------------

    def check(self, now: float | None = None) -> CheckRecord:
        """Run one check and act on it: record, alert, fire triggers, roll back when due."""
        from cpmai.monitor.run import monitor
        from cpmai.predlog.parts import IndexMemo

        started = time.perf_counter()
        now = time.time() if now is None else now
        live = self.live()
        if live is None:
            verdict = failed_check(f"nothing is live in {self.env}")
            return self._conclude(verdict, None, None, now, started, None)
        schedule = live.manifest.monitoring.schedule
        window_s = parse_duration(schedule.window if schedule else "1h")
        since = max(now - window_s, live.since)
        if self._memo is None:
            self._memo = IndexMemo()
        try:
            result = monitor(
                self.home, self.name, self.env,
                window_s=max(now - since, 1.0), since=since, until=now, now=now,
                version=live.version, memo=self._memo, drift_rows=DRIFT_ROWS,
            )  # fmt: skip
        except CpmaiError as exc:
            return self._conclude(failed_check(exc.message), live, since, now, started, None)
        except Exception as exc:  # a bug must not stop the watching: said, kept, alerted
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            self._log(traceback.format_exc())
            verdict = failed_check(f"the check failed: {detail}")
            return self._conclude(verdict, live, since, now, started, None)
        min_requests = schedule.min_requests if schedule else 20
        return self._conclude(verdict_of(result, min_requests=min_requests), live, since, now,
                              started, result)  # fmt: skip

    def _conclude(
        self,
        verdict: Verdict,
        live: Live | None,
        since: float | None,
        now: float,
        started: float,
        result: MonitorResult | None,
    ) -> CheckRecord:
        manifest = live.manifest if live else None
        settings = manifest.monitoring.alerts if manifest else None
        silences = silences_of(Ledger(self.home).events(self.name), self.name)
        repeat_s = parse_duration(settings.repeat) if settings else 4 * 3600.0
        version = live.version if live else None
        messages = self.book.step(verdict, version=version, repeat_s=repeat_s, silences=silences,
                                  now=now)  # fmt: skip
        record = CheckRecord(
            at=iso(now),
            seconds=0.0,
            version=version,
            since=iso(since) if since is not None else None,
            until=iso(now),
            requests=result.traffic.requests if result else 0,
            rows=result.traffic.rows if result else 0,
            findings=[f.to_json() for f in verdict.findings],
            judged=sorted(verdict.judged),
        )
        if result is not None:
            record.triggers = self._triggers(result)
            self._gauges(result, now, time.perf_counter() - started)
        if live is not None:
            rolled = self._maybe_roll_back(verdict, live)
            if rolled is not None:
                record.rollback, news = rolled
                messages.append(news)
        self.book.save()
        self._send(messages, manifest)
        record.sent = [m.id for m in messages]
        record.seconds = round(time.perf_counter() - started, 4)
        append_line(self.folders.checks, record.__dict__)
        return record

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
            firing[alert.kind] = firing.get(alert.kind, 0) + 1
        self.folders.watch.mkdir(parents=True, exist_ok=True)
        text = render_gauges(result, checked_at=now, check_seconds=seconds, firing=firing)
        write_gauges(self.folders.gauges, text)

    # --- automatic rollback ----------------------------------------------------------------

    def _maybe_roll_back(
        self, verdict: Verdict, live: Live
    ) -> tuple[dict[str, Any], AlertMessage] | None:
        """Count the checks in a row in which the live version breached a kind of its
        environment's `rollout.auto_rollback_on`; at `for` of them, roll back."""
        spec = live.manifest.environments.get(self.env)
        kinds = set(spec.rollout.auto_rollback_on) if spec else set()
        streak = self.book.streak
        if streak.version != live.version:
            streak.version, streak.count, streak.kinds, streak.gave_up = live.version, 0, [], False
        if not kinds:
            return None
        breached: list[str] = sorted({f.kind for f in verdict.findings} & kinds)
        if breached:
            streak.count += 1
            streak.kinds = breached
        elif kinds & verdict.judged:
            streak.count, streak.kinds = 0, []
        assert spec is not None
        if streak.count < spec.rollout.for_checks or streak.gave_up:
            return None
        evidence = {
            "checks": streak.count,
            "kinds": breached,
            "findings": [
                {**f.to_json(), "details": f.details} for f in verdict.findings if f.kind in kinds
            ],
        }
        reason = (
            f"automatic rollback: {', '.join(breached)} breached in {streak.count} checks in a "
            f"row (rollout.auto_rollback_on, for: {spec.rollout.for_checks})"
        )
        from cpmai.lifecycle import rollback

        try:
            done = rollback(
                self.home, self.name, self.env, actor=ACTOR, reason=reason, evidence=evidence
            )
        except CpmaiError as exc:
            streak.gave_up = True
            summary = f"{live.version} breached {', '.join(breached)}; could not roll back: " + (
                exc.message
            )
            finding = Finding("rollback", None, summary, evidence)
            news = self.book.news(finding, version=live.version)
            return {"from": live.version, "to": None, "error": exc.message}, news
        summary = (
            f"rolled back from {live.version} to {done.version}: {', '.join(breached)} breached "
            f"in {streak.count} checks in a row"
        )
        news = self.book.news(
            Finding("rollback", None, summary, {**evidence, "to": done.version}),
            version=done.version,
        )
        return {"from": live.version, "to": done.version, "reason": reason}, news

    # --- deliveries ------------------------------------------------------------------------

    def _send(self, messages: list[AlertMessage], manifest: Manifest | None) -> None:
        if manifest is None:
            return
        settings = manifest.monitoring.alerts
        wanted = [m for m in messages if m.kind in settings.on]
        if wanted and settings.channels:
            for message in wanted:
                self.outbox.enqueue(message, settings.channels)
        self.deliver(manifest)

    def deliver(self, manifest: Manifest | None = None, now: float | None = None) -> list[Attempt]:
        """Try every delivery that is due (each attempt recorded in `alerts.jsonl`)."""
        if manifest is None:
            live = self.live()
            if live is None:
                return []
            manifest = live.manifest
        settings = manifest.monitoring.alerts
        if not settings.channels and not self.outbox.pending():
            return []
        return self.outbox.run_due(
            settings.channels,
            base_dir=manifest.base_dir,
            retries=settings.retries,
            backoff_s=settings.backoff_s,
            now=now,
            record=lambda attempt: self.book.record({"type": "delivery", **attempt.to_json()}),
        )

    # --- files -----------------------------------------------------------------------------

    def _log(self, text: str) -> None:
        self.say(f"{iso()} {text}")
