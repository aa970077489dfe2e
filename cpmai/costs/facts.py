"""What the state folder knows about one model, read once for `cpmai cost` and `cpmai report`:
the ledger, the manifest whose prices apply, and per environment its live stretches, benchmark
windows, prediction log, resources and its own manifest."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpmai.costs import measure, model
from cpmai.costs.document import Allocation
from cpmai.costs.model import HOURS_PER_MONTH
from cpmai.errors import UsageError
from cpmai.home import Home
from cpmai.ledger import Event, Ledger
from cpmai.replay import State, replay

if TYPE_CHECKING:
    from cpmai.manifest import Environment, Manifest

DEFAULT_PERIOD_S = HOURS_PER_MONTH * 3600
BATCH = "batch"
"""`cpmai predict`'s log: predictions with no server (no allocation, no live time)."""

Progress = Callable[[str], None]


def choose_manifest(
    home: Path, name: str, events: list[Event], manifest: Manifest | None
) -> tuple[Manifest, str]:
    """The manifest given, else the one packaged with the version that went live last, else
    with the newest packaged version."""
    if manifest is not None:
        return manifest, f"file {manifest.file}" if manifest.file else "given"
    state = replay(events)
    if name not in state.versions:
        known = ", ".join(state.names()) or "none yet"
        raise UsageError(f"no model named {name!r} has been packaged (packaged: {known})")
    lives = [s.live for s in state.envs_of(name).values() if s.live is not None]
    if lives:
        version = max(lives, key=lambda r: r.seq).version
    else:
        version = state.versions_of(name)[-1].version
    from cpmai.artifacts import open_artifact

    return open_artifact(home, name, version).manifest(), f"artifact {name} {version}"


class Facts:
    """What the state folder knows about one model, read once: the ledger, and per environment
    its live stretches, benchmark windows, prediction log, resources and its own manifest."""

    def __init__(
        self,
        home: Path,
        name: str,
        *,
        manifest: Manifest | None,
        now: float,
        use_cache: bool = True,
        progress: Progress | None = None,
        include_synthetic: bool = False,
    ) -> None:
        """`include_synthetic`: count requests marked synthetic (load tests) as traffic, and
        the resources they used as usage."""
        self.home, self.name, self.now, self.use_cache = home, name, now, use_cache
        self.include_synthetic = include_synthetic
        self.say = progress or (lambda _: None)
        self.events = Ledger(home).events()
        self.given = manifest
        self.manifest, self.source = choose_manifest(home, name, self.events, manifest)
        self.state: State = replay(self.events)
        self.prices = self.manifest.costs
        self.slo = self.manifest.slo.model_dump(exclude_none=True)
        self.first = measure.first_live(self.events, name)
        self._intervals: dict[str, list[measure.Interval]] = {}
        self._benches: dict[str, list[tuple[float, float]]] = {}
        self._logs: dict[str, Any] = {}

    # --- per environment ------------------------------------------------------------------

    def envs(self) -> list[str]:
        """Every environment the model ever ran in (from the ledger), oldest name first."""
        return [e for e in self.state.envs_of(self.name) if e != BATCH]

    def live_now(self) -> list[str]:
        return sorted(e for e in self.envs() if self.state.env(self.name, e).live is not None)

    def intervals(self, env: str) -> list[measure.Interval]:
        if env not in self._intervals:
            self._intervals[env] = measure.live_intervals(self.events, self.name, env)
        return self._intervals[env]

    def benches(self, env: str) -> list[tuple[float, float]]:
        if env not in self._benches:
            urls = {i.url for i in self.intervals(env) if i.url}
            self._benches[env] = measure.bench_windows(self.home, self.name, urls)
        return self._benches[env]

    def log(self, env: str) -> Any:
        """The environment's whole prediction log, request columns only (cached on disk)."""
        if env not in self._logs:
            from cpmai.predlog.reader import read_traffic

            self.say(f"reading {env}'s prediction log")
            cache = Home(self.home).env(self.name, env).log_cache
            self._logs[env] = read_traffic(
                Home(self.home).env(self.name, env).logs,
                focus=None,
                specs=[],
                output_kind="numeric",
                cache=cache if self.use_cache else None,
                include_synthetic=True,  # `served` sets them apart period by period
            )
        return self._logs[env]

    def version_of(self, env: str) -> str | None:
        live = self.state.env(self.name, env).live
        if live is not None:
            return live.version
        intervals = self.intervals(env)
        return intervals[-1].version if intervals else None

    def spec(self, env: str) -> tuple[Environment | None, str]:
        """The environment's replicas and resources, and where they come from."""
        if self.given is not None and env in self.given.environments:
            return self.given.environments[env], "the manifest file given"
        version = self.version_of(env)
        if version is not None:
            from cpmai.artifacts import open_artifact

            own = open_artifact(self.home, self.name, version).manifest()
            if env in own.environments:
                return own.environments[env], f"the manifest of {version}, which runs there"
        if env in self.manifest.environments:
            return self.manifest.environments[env], self.source
        return None, "not in any manifest: nothing is known of its resources"

    def allocation(self, env: str, replicas: float | None = None) -> Allocation:
        spec, source = self.spec(env)
        count = replicas if replicas is not None else (spec.min_replicas if spec else 0)
        cpu = spec.resources.cpu if spec else 0.0
        memory = spec.resources.memory_gb if spec else 0.0
        alloc = model.allocation(
            count, cpu, memory, self.prices.cpu_hour, self.prices.memory_gb_hour
        )
        alloc.resources_from = source
        return alloc

    def served(self, env: str, low: float, high: float) -> dict[str, Any]:
        return measure.served(self.log(env), low, high, include_synthetic=self.include_synthetic)

    def counts_as_value(self, env: str) -> bool:
        chosen = self.manifest.business.value_from
        return chosen is None or env in chosen

    def batch_predictions(self, low: float, high: float) -> int:
        if not self.counts_as_value(BATCH):
            return 0
        if not Home(self.home).env(self.name, BATCH).logs.is_dir():
            return 0
        served = measure.served(
            self.log(BATCH), low, high, include_synthetic=self.include_synthetic
        )
        return int(served["predictions"])
