"""Alerts and improvement triggers.

An alert is a breached bound: dataset drift, model quality past its bound, an SLO missed over
the period, a live version older than `max_age_days`. Any alert makes `cpmai monitor` exit 4.
An alert whose kind is listed in `monitoring.triggers.on` fires a trigger: a `trigger` event in
the ledger with the evidence — unless the same kind already fired for the same version and
environment within `cooldown_hours` (then it is reported as cooling down, and nothing is
recorded or run twice). With `--run-triggers`, `triggers.command` runs once for the newly fired
triggers, through the shell, in the current directory, with CPMAI_MODEL, CPMAI_VERSION,
CPMAI_ENV and CPMAI_TRIGGERS in its environment; its exit status is recorded (`trigger-run`).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from cpmai.clock import parse_time
from cpmai.ledger import Ledger, now_iso
from cpmai.manifest import Triggers
from cpmai.monitor.result import Alert, MonitorResult, TriggerRun

__all__ = ["Alert", "TriggerRun", "fire", "respond", "run_command"]


def respond(
    home: Path,
    result: MonitorResult,
    *,
    actor: str,
    run: bool = False,
    say: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[Alert]:
    """Fire the triggers a monitor result calls for (`fire`) and, with `run`, run the trigger
    command for the newly fired ones (`run_command`; `result.trigger_run` then tells how it
    ended). `say` hears what is about to run, `warn` that nothing could. Returns the newly
    fired alerts."""
    settings = result.settings.triggers
    fired = fire(
        home,
        result.alerts,
        settings,
        name=result.name,
        version=result.version,
        env=result.env,
        actor=actor,
        period=result.period.to_json(),
    )
    if run and fired:
        if settings.command is None:
            if warn is not None:
                warn("--run-triggers: monitoring.triggers.command is not set; nothing to run")
        else:
            if say is not None:
                say(f"running the trigger command: {settings.command}")
            result.trigger_run = run_command(
                home,
                settings.command,
                fired,
                name=result.name,
                version=result.version,
                env=result.env,
                actor=actor,
            )
    return fired


def fire(
    home: Path,
    alerts: list[Alert],
    settings: Triggers,
    *,
    name: str,
    version: str | None,
    env: str,
    actor: str,
    period: dict[str, Any],
) -> list[Alert]:
    """Record a `trigger` event for each alert that is due; returns the newly fired ones."""
    due = [a for a in alerts if a.kind in settings.on]
    if not due:
        return []
    ledger = Ledger(home)
    fired: list[Alert] = []
    with ledger.transaction() as tx:
        events = tx.events()
        horizon = parse_time(now_iso()) - timedelta(hours=settings.cooldown_hours)
        for alert in due:
            earlier = _last_fired(events, name, version, env, alert.kind)
            if earlier is not None and parse_time(earlier) > horizon:
                alert.trigger = f"cooling down (fired at {earlier})"
                continue
            tx.append(
                "trigger",
                actor=actor,
                name=name,
                version=version,
                env=env,
                details={
                    "kind": alert.kind,
                    "message": alert.message,
                    "evidence": alert.evidence,
                    "period": period,
                },
            )
            alert.trigger = "fired"
            fired.append(alert)
    return fired


def _last_fired(
    events: list[Any], name: str, version: str | None, env: str, kind: str
) -> str | None:
    for event in reversed(events):
        if (
            event.action == "trigger"
            and event.name == name
            and event.env == env
            and event.version == version
            and event.details.get("kind") == kind
        ):
            return str(event.time)
    return None


def run_command(
    home: Path,
    command: str,
    fired: list[Alert],
    *,
    name: str,
    version: str | None,
    env: str,
    actor: str,
) -> TriggerRun:
    """Run the team's improvement command once for the fired triggers; record how it ended."""
    environment = {
        **os.environ,
        "CPMAI_MODEL": name,
        "CPMAI_VERSION": version or "",
        "CPMAI_ENV": env,
        "CPMAI_TRIGGERS": ",".join(a.kind for a in fired),
    }
    start = time.monotonic()
    try:
        code = subprocess.run(command, shell=True, env=environment, check=False).returncode
    except OSError as exc:  # no shell, or the command cannot start at all
        code = 127
        command = f"{command}  ({exc})"
    run = TriggerRun(command=command, exit_code=code, seconds=round(time.monotonic() - start, 3))
    Ledger(home).append(
        "trigger-run",
        actor=actor,
        name=name,
        version=version,
        env=env,
        details={**run.to_dict(), "triggers": [a.kind for a in fired]},
    )
    return run
