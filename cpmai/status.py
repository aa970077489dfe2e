"""`cpmai status`: per (model, environment), the live version, who put it there and — now —
what the target says; or, at a past moment, what the ledger says was live then."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cpmai.errors import UsageError
from cpmai.ledger import Ledger
from cpmai.replay import State, replay, target_kind
from cpmai.targets import get_target

# --- status ------------------------------------------------------------------------------------


def status(home: Path, name: str | None = None, *, at: str | None = None) -> list[dict[str, Any]]:
    """One row per (model, environment): live version, who put it there, and — now — what the
    target says; `at` (ISO time) replays the ledger up to then instead of asking targets."""
    events = Ledger(home).events()
    if name and not any(e.name == name and e.action == "package" for e in events):
        known = ", ".join(replay(events).names()) or "none yet"
        raise UsageError(f"no model named {name!r} has been packaged (packaged: {known})")
    state = replay(events, until=at)
    names = [name] if name else sorted({n for n, _ in state.envs} | set(state.names()))
    rows = []
    for model in names:
        for env, env_state in state.envs_of(model).items():
            rows.append(_status_row(home, state, model, env, env_state, live_view=at is None))
    return rows


def _status_row(
    home: Path, state: State, name: str, env: str, env_state: Any, *, live_view: bool
) -> dict[str, Any]:
    live = env_state.live
    last = env_state.last_event
    row: dict[str, Any] = {
        "name": name,
        "env": env,
        "version": live.version if live else None,
        "since": live.time if live else None,
        "by": live.actor if live else None,
        "how": live.action if live else None,
        "target": live.details.get("target") if live else None,
        "approved_by": state.approvers(name, live.version, env) if live else [],
        "gates": _gates_of(state, name, live.version, env) if live else None,
        "last_event": {
            "seq": last.seq,
            "time": last.time,
            "action": last.action,
            "actor": last.actor,
            "version": last.version,
            "result": last.details.get("result"),
        }
        if last
        else None,
    }
    if live_view:
        kind = target_kind(env_state)
        row["target"] = row["target"] or kind
        target = get_target(kind, home, name, env)
        row["server"] = target.status().to_dict()
        from cpmai.watch.process import watcher_status

        row["watcher"] = watcher_status(home, name, env).to_dict()
        if live is None and row["server"]["state"] == "stopped" and kind == "local":
            row["server"]["detail"] = "nothing live"
        serving = row["server"].get("live")
        running = row["server"]["state"] != "stopped"
        if kind == "local" and ((running and serving != row["version"]) or (not running and live)):
            row["differs"] = (
                f"the server {'serves ' + str(serving) if running else 'is not running'} while the "
                f"ledger says {row['version'] or 'nothing'} is live (an interrupted rollout?): "
                f"`cpmai stop {name} --env {env}` stops what runs, `cpmai deploy` or `cpmai "
                f"promote` records a version again"
            )
    return row


def _gates_of(state: State, name: str, version: str, env: str) -> dict[str, Any] | None:
    event = state.gates.get((name, version, env))
    if event is None:
        return None
    return {
        "passed": event.details.get("passed"),
        "time": event.time,
        "results": event.details.get("results", []),
    }
