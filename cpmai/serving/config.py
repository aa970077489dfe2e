"""What a server process needs to know, passed to uvicorn's workers as JSON in the environment,
and the resource sampler it starts."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpmai.home import Home

if TYPE_CHECKING:
    from cpmai.artifacts import Artifact
    from cpmai.serving.resources import ResourceLog

CONFIG_ENV = "CPMAI_SERVE_CONFIG"


@dataclass
class ServeConfig:
    """Everything a server process needs; passed to uvicorn workers as JSON in the environment."""

    home: str
    name: str
    version: str
    env: str = "default"
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    token: str | None = None
    token_sha256: str | None = None
    """Without `token`: the SHA-256 (hex) of the token to require (a restarted environment's,
    recorded by the local target: the token itself is kept nowhere)."""
    runtime: str | None = None
    max_body_bytes: int = 10 * 1024 * 1024
    max_batch_rows: int = 64
    max_latency_ms: float = 0.0
    log_sample_rate: float = 1.0
    prediction_log: bool = True
    sample_interval_s: float = 5.0
    """How often the server samples its own CPU and memory (`monitoring.sample_interval_s`)."""
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    """Stalled clients are cut off (`serving.header_timeout_s`, `serving.body_timeout_s`)."""
    threads: int | None = None
    """OpenMP/BLAS threads the model may use in this process (`cpmai.runtime.threads`)."""

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    def for_artifact(self, artifact: Artifact) -> ServeConfig:
        """This config for `artifact`: its version, and batching, logging and body limits from
        the `serving:` section of the manifest packaged with it."""
        manifest = artifact.manifest()
        settings = manifest.serving
        return replace(
            self,
            version=artifact.version,
            max_body_bytes=int(settings.max_body_mb * 1024 * 1024),
            max_batch_rows=settings.max_batch_size,
            max_latency_ms=settings.max_latency_ms,
            log_sample_rate=settings.log_sample_rate,
            sample_interval_s=manifest.monitoring.sample_interval_s,
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            threads=settings.threads or self._cpu_share(manifest),
        )

    def _cpu_share(self, manifest: Any) -> int:
        from cpmai.runtime import threads

        environment = manifest.environments.get(self.env)
        if environment is not None:
            return threads.share(environment.resources.cpu)
        return threads.share(None, self.workers)

    @classmethod
    def from_env(cls) -> ServeConfig:
        return cls(**json.loads(os.environ[CONFIG_ENV]))


def resource_log(config: ServeConfig, version: Callable[[], str | None]) -> ResourceLog | None:
    """The process's resource sampler (started), unless the prediction log is off."""
    if not config.prediction_log:
        return None
    from cpmai.serving.resources import ResourceLog

    folder = Home(Path(config.home)).env(config.name, config.env).logs
    log = ResourceLog(folder, config.sample_interval_s, version)
    log.start()
    return log
