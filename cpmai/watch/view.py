"""What `cpmai alerts` reads and does: the firing and past alerts of a model's environments,
silences (recorded in the ledger), and a test message through every channel."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import Field

from cpmai.alerts.message import AlertMessage, alert_key, text_of
from cpmai.clock import iso, parse_duration
from cpmai.documents import Doc
from cpmai.errors import UsageError
from cpmai.fsutil import read_json_object
from cpmai.home import Home
from cpmai.ledger import Ledger
from cpmai.manifest_watch import ALERT_KINDS
from cpmai.replay import replay
from cpmai.watch.book import read_events, silences_of
from cpmai.watch.process import watcher_status


class FiringAlert(Doc):
    """An open alert."""

    env: str
    key: str
    kind: str
    feature: str | None
    version: str | None
    summary: str
    started_at: str
    checks: int
    sent_at: str | None
    silenced_by: str | None


class SilenceDoc(Doc):
    """A silence in force."""

    id: str
    env: str
    kind: str | None
    feature: str | None
    until: str
    reason: str
    actor: str


class EnvAlerts(Doc):
    """One environment's alerts."""

    env: str
    watcher: dict[str, Any]
    firing: list[FiringAlert]
    silences: list[SilenceDoc]
    events: list[dict[str, Any]] = Field(
        description="The newest events of alerts.jsonl, newest last: alert events (firing, "
        "repeat, resolved, silenced) and delivery attempts."
    )
    failed_deliveries: int = Field(description="Deliveries given up after their retries.")
    pending_deliveries: int


class AlertsView(Doc):
    """`cpmai alerts NAME`: schema cpmai-alerts/1."""

    schema_: str = Field("cpmai-alerts/1", alias="schema")
    name: str
    environments: list[EnvAlerts]


def _envs(home: Path, name: str, env: str | None) -> list[str]:
    state = replay(Ledger(home).events())
    if name not in state.versions:
        known = ", ".join(state.names()) or "none yet"
        raise UsageError(f"no model named {name!r} has been packaged (packaged: {known})")
    envs = sorted(state.envs_of(name))
    if env is None or env in envs:
        return [env] if env is not None else envs
    from cpmai.artifacts import open_artifact

    declared = open_artifact(home, name).manifest().environments  # the newest version's
    if env not in declared:
        known = ", ".join(sorted({*envs, *declared})) or "none"
        raise UsageError(f"{name} has no environment {env!r} (known: {known})")
    return [env]


def only_env(home: Path, name: str, env: str | None) -> str:
    """`env`, or the model's one environment when it has only one."""
    if env is not None:
        return env
    envs = _envs(home, name, None)
    if len(envs) != 1:
        raise UsageError(
            f"{name} has {len(envs)} environments ({', '.join(envs) or 'none yet'}): say which "
            "with --env"
        )
    return envs[0]


def view(home: Path, name: str, env: str | None = None, *, limit: int = 20) -> AlertsView:
    """The firing alerts, silences in force and newest events of `name`'s environments."""
    now = time.time()
    silences = silences_of(Ledger(home).events(name), name)
    out = []
    for each in _envs(home, name, env):
        folders = Home(home).env(name, each)
        state = read_json_object(folders.alert_state) or {}
        opened = state.get("open") if isinstance(state.get("open"), dict) else {}
        firing = []
        for item in (opened or {}).values():
            try:
                firing.append(FiringAlert(env=each, **{k: item.get(k) for k in (
                    "key", "kind", "feature", "version", "summary", "started_at", "checks",
                    "sent_at", "silenced_by")}))  # fmt: skip
            except (ValueError, TypeError, AttributeError):
                continue  # a damaged state file: the watcher starts it afresh and says so
        events = read_events(folders.alerts, limit=5000)
        failed = sum(1 for e in events if e.get("type") == "delivery" and e.get("final")
                     and not e.get("ok"))  # fmt: skip
        status = watcher_status(home, name, each)
        out.append(
            EnvAlerts(
                env=each,
                watcher=status.to_dict(),
                firing=firing,
                silences=[
                    SilenceDoc(
                        id=s.id,
                        env=s.env,
                        kind=s.kind,
                        feature=s.feature,
                        until=iso(s.until),
                        reason=s.reason,
                        actor=s.actor,
                    )
                    for s in silences
                    if s.env == each and s.until > now
                ],
                events=events[-limit:] if limit else [],
                failed_deliveries=failed,
                pending_deliveries=status.pending_deliveries,
            )
        )
    return AlertsView(name=name, environments=out)


def silence(
    home: Path,
    name: str,
    env: str,
    *,
    duration: str,
    reason: str,
    actor: str,
    kind: str | None = None,
    feature: str | None = None,
) -> SilenceDoc:
    """Record a silence: alerts of `env` (of `kind`, about `feature`, when given) are not sent
    until it expires. Recorded in the ledger."""
    _envs(home, name, env)
    if kind is not None and kind not in ALERT_KINDS:
        raise UsageError(f"--kind {kind!r}: one of {', '.join(ALERT_KINDS)}")
    if not reason.strip():
        raise UsageError("--reason: say why (it is recorded)")
    seconds = parse_duration(duration)
    if seconds > 90 * 86400:
        raise UsageError(f"--for {duration}: at most 90d (a silence must end)")
    until = iso(time.time() + seconds)
    ident = f"s-{uuid.uuid4().hex[:8]}"
    Ledger(home).append(
        "silence",
        actor=actor,
        name=name,
        env=env,
        details={"id": ident, "kind": kind, "feature": feature, "until": until,
                 "reason": reason.strip(), "key": alert_key(env, kind or "*", feature)},
    )  # fmt: skip
    return SilenceDoc(id=ident, env=env, kind=kind, feature=feature, until=until,
                      reason=reason.strip(), actor=actor)  # fmt: skip


def expire(home: Path, name: str, env: str, ident: str, *, actor: str) -> None:
    """End a silence before its time (recorded)."""
    _envs(home, name, env)
    live = [s for s in silences_of(Ledger(home).events(name), name)
            if s.id == ident and s.env == env and s.until > time.time()]  # fmt: skip
    if not live:
        raise UsageError(f"no silence {ident!r} in force for {name} in {env}",
                         hint=f"`cpmai alerts {name} --env {env}` lists them")  # fmt: skip
    Ledger(home).append("unsilence", actor=actor, name=name, env=env, details={"id": ident})


class TestResult(Doc):
    """One channel's answer to a test message."""

    channel: str
    ok: bool
    error: str | None
    seconds: float


def send_test(home: Path, name: str, env: str) -> list[TestResult]:
    """Send a `test` message through every channel of the live (else newest) version's
    `monitoring.alerts`, once each, now (no retry: the point is to see what fails)."""
    from cpmai.alerts.channels import DeliveryError, describe, send
    from cpmai.artifacts import open_artifact

    _envs(home, name, env)
    state = replay(Ledger(home).events())
    live = state.env(name, env).live
    version = live.version if live else None
    artifact = open_artifact(home, name, version)
    manifest = artifact.manifest()
    channels = manifest.monitoring.alerts.channels
    from cpmai.watch.watcher import project_folder

    folder = project_folder(state, home, name, artifact.version)
    if not channels:
        raise UsageError(
            f"{name} {artifact.version} has no monitoring.alerts.channels: nothing to test"
        )
    now = time.time()
    summary = "a test message from `cpmai alerts test`: this channel reaches you"
    message = AlertMessage(
        id=f"{env}/test@{iso(now, 'milliseconds')}", event="test", status="test",
        text=text_of("test", name, env, artifact.version, summary, iso(now)), name=name, env=env,
        version=artifact.version, kind="check", feature=None, key=alert_key(env, "test", None),
        summary=summary, started_at=iso(now), resolved_at=None, at=iso(now), checks=0,
        details={},
    )  # fmt: skip
    results = []
    for channel in channels:
        started = time.perf_counter()
        error = None
        try:
            send(channel, message, base_dir=folder)
        except DeliveryError as exc:
            error = exc.reason
        results.append(TestResult(channel=describe(channel), ok=error is None, error=error,
                                  seconds=round(time.perf_counter() - started, 3)))  # fmt: skip
    return results
