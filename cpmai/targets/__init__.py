"""Where a version runs. Every backend implements `Target`; `local` is the default.

A target knows how to put a version live in one environment (`rollout`), report what runs there
(`status`) and stop it (`stop`). It never touches the ledger: `cpmai.lifecycle` runs the gates,
calls the target and records what happened, whatever the target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from cpmai.manifest import Environment, Slo

Progress = Callable[[str], None]


@dataclass
class RolloutPlan:
    name: str
    env: str
    version: str
    spec: Environment
    slo: Slo
    canary: bool = False
    """Shift traffic by the rollout's steps (else switch at once)."""
    watch: bool = False
    """Report the canary's figures every second while a step is watched."""
    timeouts: tuple[float, float] = (10.0, 60.0)
    """The server's header and body read timeouts, seconds (`serving:` of the manifest)."""


@dataclass
class RolloutResult:
    url: str | None
    previous: str | None
    """The version that was live on the target before (None: nothing ran)."""
    pid: int | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    """What the rollout did, in order (start, load, canary steps, switch), with timings."""


@dataclass
class TargetStatus:
    state: str
    """running | degraded | down | stopped."""
    url: str | None = None
    pid: int | None = None
    uptime_s: float | None = None
    healthy: bool = False
    live: str | None = None
    canary: str | None = None
    weight: float = 0.0
    workers: int = 0
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Target(Protocol):
    kind: str

    def rollout(self, plan: RolloutPlan, progress: Progress) -> RolloutResult: ...

    def status(self) -> TargetStatus: ...

    def stop(self) -> None: ...


def get_target(kind: str, home: Path, name: str, env: str) -> Target:
    """The backend for `kind` (the manifest's `environments.ENV.target`)."""
    if kind == "local":
        from cpmai.targets.local import LocalTarget

        return LocalTarget(home, name, env)
    if kind in ("docker", "kubernetes", "kserve"):
        from cpmai.targets.render import RenderTarget

        return RenderTarget(kind, home, name, env)
    if kind == "edge":
        from cpmai.targets.edge import EdgeTarget

        return EdgeTarget(home, name, env)
    if kind == "ray":
        from cpmai.targets.ray import RayTarget

        return RayTarget(home, name, env)
    from cpmai.errors import UsageError

    raise UsageError(
        f"target {kind!r} is not available: local, ray, docker, kubernetes, kserve and edge are",
        hint="set another `target:` for this environment",
    )
