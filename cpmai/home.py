"""The state folder (`.cpmai/` or `$CPMAI_HOME`): the one owner of every path under it.

    artifacts/NAME/VERSION/        immutable artifacts (`cpmai.artifacts`)
    ledger.jsonl, ledger.head      the hash-chained event log (`cpmai.ledger`)
    allowed_signers                who may sign acts (`cpmai.signatures`)
    runs/NAME/ENV/                 what a target runs there: run.json, routes.json, workers/ …
    logs/NAME/ENV/                 prediction log and resource samples (`cpmai.predlog`)
    watch/NAME/ENV/                the watcher's process, checks, alerts and gauges (`cpmai.watch`)
    bench/NAME/VERSION/            benchmark results and baselines (`cpmai.bench`)
    renders/NAME/ENV/              files rendered for Docker, Kubernetes, KServe
    cache/                         what can be rebuilt from the rest (parsed logs, timings, …)
    tmp/                           builds in progress (renamed into place when whole)

Nothing else joins paths under the home: it asks a `Home` (or an environment's `EnvFolders`)
for them. A leaf: imports nothing of cpmai's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

UNVERSIONED = "unversioned"


@dataclass(frozen=True)
class EnvFolders:
    """One environment's share of the home: where its server runs and what it logs."""

    run: Path
    """`runs/NAME/ENV/`: the target's files (`cpmai.serving.runstate.RunFiles`)."""
    logs: Path
    """`logs/NAME/ENV/`: the prediction log and resource samples."""
    log_cache: Path
    """`cache/monitor/logs/NAME/ENV/`: what the monitor parsed of the log."""
    watch: Path
    """`watch/NAME/ENV/`: the watcher's files (kept when the environment stops: its alert
    history outlives the server)."""

    @property
    def watcher(self) -> Path:
        """`watcher.json`: the watcher process (pid, start time, schedule)."""
        return self.watch / "watcher.json"

    @property
    def watcher_log(self) -> Path:
        """`watcher.log`: what the watcher process printed."""
        return self.watch / "watcher.log"

    @property
    def checks(self) -> Path:
        """`checks.jsonl`: every scheduled check's verdict, a line each."""
        return self.watch / "checks.jsonl"

    @property
    def alerts(self) -> Path:
        """`alerts.jsonl`: every alert event (firing, repeat, resolved, silenced) and every
        delivery attempt's outcome, a line each."""
        return self.watch / "alerts.jsonl"

    @property
    def alert_state(self) -> Path:
        """`state.json`: the open alerts and the breach streaks (started afresh, and said, when
        it cannot be read)."""
        return self.watch / "state.json"

    @property
    def outbox(self) -> Path:
        """`outbox/`: deliveries not yet made (one file each, retried with backoff)."""
        return self.watch / "outbox"

    @property
    def gauges(self) -> Path:
        """`gauges.prom`: the last check's drift and quality as Prometheus gauges, appended by
        the server to its /metrics."""
        return self.watch / "gauges.prom"


@dataclass(frozen=True)
class Home:
    """A state folder. Cheap to make: `Home(path)` wherever a `Path` to it is at hand."""

    root: Path

    def env(self, name: str, env: str) -> EnvFolders:
        return EnvFolders(
            run=self.root / "runs" / name / env,
            logs=self.root / "logs" / name / env,
            log_cache=self.cache("monitor", "logs", name, env),
            watch=self.root / "watch" / name / env,
        )

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.jsonl"

    @property
    def ledger_head(self) -> Path:
        """The chain's last hash, written beside it (`cpmai ledger head`)."""
        return self.root / "ledger.head"

    @property
    def ledger_lock(self) -> Path:
        return self.root / "ledger.lock"

    def ledger_torn(self, stamp: str) -> Path:
        """Where a torn last line is set aside."""
        return self.root / f"ledger.torn-{stamp}"

    @property
    def ledger_verified(self) -> Path:
        """How far the chain was verified (a cache)."""
        return self.cache("ledger-verified.json")

    @property
    def signers(self) -> Path:
        """The allowed-signers file, unless $CPMAI_ALLOWED_SIGNERS names another."""
        return self.root / "allowed_signers"

    def renders(self, name: str, env: str) -> Path:
        """`renders/NAME/ENV/`: the files rendered for a Docker/Kubernetes/KServe target."""
        return self.root / "renders" / name / env

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    def artifact(self, name: str, version: str) -> Path:
        return self.artifacts / name / version

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def cache(self, *parts: str) -> Path:
        """A path under `cache/` (safe to delete: rebuilt when needed)."""
        return self.root.joinpath("cache", *parts)

    def bench(self, name: str, version: str | None = None) -> Path:
        """`bench/NAME/` or `bench/NAME/VERSION/` (`unversioned` for a bare model file)."""
        folder = self.root / "bench" / name
        return folder if version is None else folder / (version or UNVERSIONED)

    def bench_url(self, host: str, port: int | None) -> Path:
        """Where results of `cpmai bench --url` against a server cpmai did not start go."""
        return self.root / "bench" / "_url" / f"{host}_{port}"

    def logs(self, name: str) -> Path:
        """`logs/NAME/`: every environment's log folder of one model."""
        return self.root / "logs" / name


def home_of_artifact(artifact_path: Path) -> Home:
    """The home an artifact folder (`HOME/artifacts/NAME/VERSION`) lives in."""
    return Home(artifact_path.parents[2])
