"""The state the ledger replays to: packaged versions, what is live in each environment, the
approvals and gate results recorded. A pure function of the events (`replay`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cpmai.clock import parse_time
from cpmai.ledger import Event

# --- replay ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionRecord:
    """A packaged version, as the ledger's `package` event recorded it."""

    name: str
    version: str
    digest: str
    time: str
    actor: str
    seq: int
    details: dict[str, Any]


LIVE_ACTIONS = ("deploy", "promote", "rollback")
"""Actions that put a version live in an environment (when their `details.result` is "live")."""


@dataclass(frozen=True)
class Rollout:
    """A version going live in an environment (a deploy, promote or rollback that succeeded)."""

    version: str
    action: str
    actor: str
    time: str
    seq: int
    details: dict[str, Any]


@dataclass
class EnvState:
    """One environment of one model: what is live, and every version that was live, in order."""

    live: Rollout | None = None
    history: list[Rollout] = field(default_factory=list)
    last_event: Event | None = None
    rolled_back: set[str] = field(default_factory=set)
    """Versions a rollback moved away from: not "good", never a rollback target by default."""
    last_target: str | None = None
    """The target the last rollout went to, or set out for (its intent): where a rollout that
    was killed half-way left what it started."""

    def previous_good(self) -> Rollout | None:
        """The last version live before the current one that was not rolled back from."""
        current = self.live.version if self.live else None
        for rollout in reversed(self.history):
            if rollout.version != current and rollout.version not in self.rolled_back:
                return rollout
        return None


@dataclass
class State:
    """What the events add up to: packaged versions, environments, approvals, gate results."""

    versions: dict[str, dict[str, VersionRecord]] = field(default_factory=dict)
    envs: dict[tuple[str, str], EnvState] = field(default_factory=dict)
    """(name, env) → its state."""
    approvals: dict[tuple[str, str, str], list[Event]] = field(default_factory=dict)
    """(name, version, env) → accepted approvals, oldest first."""
    gates: dict[tuple[str, str, str], Event] = field(default_factory=dict)
    """(name, version, env) → the latest gate event."""

    def names(self) -> list[str]:
        return sorted(self.versions)

    def versions_of(self, name: str) -> list[VersionRecord]:
        return sorted(self.versions.get(name, {}).values(), key=lambda r: r.seq)

    def find_digest(self, name: str, digest: str) -> VersionRecord | None:
        for record in self.versions.get(name, {}).values():
            if record.digest == digest:
                return record
        return None

    def env(self, name: str, env: str) -> EnvState:
        return self.envs.get((name, env)) or EnvState()

    def envs_of(self, name: str) -> dict[str, EnvState]:
        return {env: state for (n, env), state in sorted(self.envs.items()) if n == name}

    def approvers(self, name: str, version: str, env: str) -> list[str]:
        """Distinct actors who approved `version` for `env`, in order."""
        seen: list[str] = []
        for event in self.approvals.get((name, version, env), []):
            if event.actor not in seen:
                seen.append(event.actor)
        return seen


def replay(events: list[Event], *, until: str | None = None) -> State:
    """Fold the events into the state; with `until` (an ISO time), only events up to then."""
    state = State()
    limit = parse_time(until) if until else None
    for event in events:
        if limit is not None and event.when > limit:
            break
        name, version, env = event.name, event.version, event.env
        if event.action == "package" and name and version:
            state.versions.setdefault(name, {})[version] = VersionRecord(
                name=name,
                version=version,
                digest=str(event.details.get("digest", "")),
                time=event.time,
                actor=event.actor,
                seq=event.seq,
                details=event.details,
            )
        if not (name and env):
            continue
        env_state = state.envs.setdefault((name, env), EnvState())
        env_state.last_event = event
        if event.action in (*LIVE_ACTIONS, "intent") and isinstance(
            event.details.get("target"), str
        ):
            env_state.last_target = event.details["target"]
        if event.action == "approve" and version:
            state.approvals.setdefault((name, version, env), []).append(event)
        elif event.action == "gate" and version:
            state.gates[(name, version, env)] = event
        elif event.action in LIVE_ACTIONS and version and event.details.get("result") == "live":
            rollout = Rollout(
                version, event.action, event.actor, event.time, event.seq, event.details
            )
            if event.action == "rollback" and env_state.live is not None:
                env_state.rolled_back.add(env_state.live.version)
            env_state.rolled_back.discard(version)
            env_state.live = rollout
            env_state.history.append(rollout)
        elif event.action == "stop":
            env_state.live = None
    return state


def target_kind(env_state: Any) -> str:
    """The target an environment's versions went to: the live one's, else where the last
    rollout went or set out for (a killed one's intent names it), else the last live one's."""
    if env_state.live is not None:
        return str(env_state.live.details.get("target", "local"))
    rollout = env_state.history[-1] if env_state.history else None
    return env_state.last_target or (
        str(rollout.details.get("target", "local")) if rollout else "local"
    )
