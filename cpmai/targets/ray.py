"""The Ray Serve target: the same cpmai server, as a Ray Serve application on a Ray cluster.

Each replica of the deployment builds cpmai's own ASGI app for the artifact (verified against
the ledger, as everywhere) inside the replica, and Serve runs its lifespan: the same protocols,
validation, micro-batching (`serving:`), prediction log and resource samples as the local
target, so `cpmai monitor` and `cpmai cost` read a Ray environment like any other. Replicas
come from `replicas:` (a number, or a range for Serve's autoscaler), each reserving
`resources.cpu` CPUs and `resources.memory_gb` GiB; a replica's health is cpmai's readiness.

`address:` names an existing cluster (`ray://…` or `HOST:PORT`): the application is
`NAME-ENV` at route prefix `/NAME-ENV`. Without it cpmai starts a local cluster for the
environment (`ray start --head` on 127.0.0.1, no dashboard, in Serve's high-throughput mode:
`targets/ray_cluster.py`) with its HTTP entry (HAProxy) on 127.0.0.1 at `port:` (else a free
port) and the application at `/`; `stop` deletes the application and
stops that cluster — only its own processes, found by the cluster's port. Ray Serve replaces
replicas one at a time on an update (stop one, start one); it has no
weighted split between two versions of an application, so a canary `rollout:` is applied as
that rolling update and the rollout's steps are noted, not used.

`runs/NAME/ENV/ray.json` records the cluster (address, whether cpmai started it, its port, its
mode, its HAProxy folder), the HTTP address, the live version and the replicas' floor and
ceiling; `_clean` reads it, a junk value as absent.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpmai.errors import TargetError, UsageError
from cpmai.fsutil import read_json_object, write_atomic
from cpmai.home import Home
from cpmai.targets import Progress, RolloutPlan, RolloutResult, TargetStatus
from cpmai.targets.ray_cluster import (
    Mode,
    free_port,
    gcs_alive,
    haproxy_folder,
    probe_mode,
    start_head,
    stop_cluster,
)

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
MAX_ONGOING = 64  # cpmai batches in the replica: let requests reach it


def _require_ray() -> Any:
    try:
        import ray
        from ray import serve  # noqa: F401
    except ImportError:
        raise UsageError(
            "the ray target needs Ray Serve, which is not installed",
            hint="pip install 'cpmai[ray]'",
        ) from None
    return ray


def build_deployment(home: str, name: str, version: str, env: str, spec: Any) -> Any:
    """The Serve application of one artifact version: cpmai's ASGI app in every replica."""
    from ray import serve

    scaling: dict[str, Any] = {"num_replicas": spec.replicas}
    max_ongoing = MAX_ONGOING
    if spec.autoscaling is not None:
        auto = spec.autoscaling
        scaling = {
            "autoscaling_config": {
                "min_replicas": auto.min,
                "initial_replicas": auto.min,
                "max_replicas": auto.max,
                "target_ongoing_requests": auto.target_ongoing_requests,
                "upscale_delay_s": auto.upscale_delay_s,
                "downscale_delay_s": auto.downscale_delay_s,
            },
        }
        # a replica must accept more than the target, or the autoscaler never sees it
        max_ongoing = max(MAX_ONGOING, math.ceil(2 * auto.target_ongoing_requests))

    @serve.deployment(
        name="model",
        **scaling,
        ray_actor_options={
            "num_cpus": spec.resources.cpu,
            "memory": int(spec.resources.memory_gb * 2**30),
        },
        max_ongoing_requests=max_ongoing,
        # cpmai's prediction log records every request: Serve's access log line per request
        # would cost the replica about a tenth of its time again (docs/scaling.md)
        logging_config={"enable_access_log": False},
        health_check_period_s=5,
        health_check_timeout_s=10,
        graceful_shutdown_timeout_s=30,
    )
    @serve.ingress()  # late-bound: the app is built in the replica, never pickled
    class CpmaiReplica:
        def __init__(self, home: str, name: str, version: str, env: str) -> None:
            self.home, self.name, self.version, self.env = home, name, version, env
            self.cpmai_app: Any = None  # `app` is Serve's own attribute

        def __serve_build_asgi_app__(self) -> Any:
            from cpmai.artifacts import open_artifact
            from cpmai.serving.app import build_app
            from cpmai.serving.config import ServeConfig
            from cpmai.serving.server import tune_process

            artifact = open_artifact(Path(self.home), self.name, self.version)
            config = ServeConfig(home=self.home, name=self.name, version=self.version,
                                 env=self.env).for_artifact(artifact)  # fmt: skip
            self.cpmai_app = build_app(config, artifact)
            tune_process()  # a replica is a server process too
            return _strip_prefix(self.cpmai_app)

        def check_health(self) -> None:
            if self.cpmai_app is None or not self.cpmai_app.ready:
                raise RuntimeError("the cpmai app is not ready")

    return CpmaiReplica.bind(home, name, version, env)  # type: ignore[attr-defined]


def _strip_prefix(app: Any) -> Any:
    """Serve hands the app the full path under a route prefix: cpmai routes on its own paths."""

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        prefix = scope.get("root_path") or ""
        path = scope.get("path") or ""
        if scope["type"] == "http" and prefix and path.startswith(prefix):
            scope = {**scope, "path": path[len(prefix) :] or "/"}
        await app(scope, receive, send)

    return asgi


class RayTarget:
    kind = "ray"

    def __init__(self, home: Path, name: str, env: str) -> None:
        self.home, self.name, self.env = home, name, env
        self.folder = Home(home).env(name, env).run
        self.record_path = self.folder / "ray.json"
        self.app_name = f"{name}-{env}"

    def _record(self) -> dict[str, Any] | None:
        found = read_json_object(self.record_path)
        return None if found is None else _clean(found)

    def _save(self, record: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.record_path, json.dumps(record, indent=1).encode())

    # --- the cluster ----------------------------------------------------------------------

    def _cluster(self, spec: Any, progress: Progress) -> dict[str, Any]:
        """The cluster to deploy to, started when cpmai owns it and it is not running."""
        record = self._record() or {}
        if spec.address:
            return {"address": spec.address, "owned": False, "route_prefix": f"/{self.app_name}"}
        if record.get("owned") and _alive(record):
            return record
        _forget(record)  # a cluster of ours that died: its HAProxy files go with it
        gcs = free_port()
        http = spec.port or free_port()
        progress(f"starting a local Ray cluster (127.0.0.1:{gcs})")
        started = time.perf_counter()
        haproxy = haproxy_folder()
        record = {
            "address": f"127.0.0.1:{gcs}",
            "gcs_port": gcs,
            "owned": True,
            "http_port": http,
            "route_prefix": "/",
            "haproxy_folder": str(haproxy),
        }
        # recorded before `ray start`: a deploy killed half-way leaves what `stop` needs to
        # find the cluster's processes (its port) and its files
        self._save(record)
        try:
            mode = start_head(gcs, os.cpu_count() or 1, haproxy)
        except BaseException:
            stop_cluster(gcs)
            _forget(record)
            self.record_path.unlink(missing_ok=True)
            raise
        if not mode.haproxy:
            _forget(record)
            del record["haproxy_folder"]
        record.update(started=round(time.perf_counter() - started, 3), mode=mode.to_dict())
        self._save(record)
        return record

    def _connect(self, address: str) -> Any:
        ray = _require_ray()
        host, _, port = address.rpartition(":")
        if not address.startswith("ray://") and port.isdigit():
            # ray.init waits minutes for a cluster that is not there: ask the port first
            try:
                with socket.create_connection((host or "127.0.0.1", int(port)), timeout=3):
                    pass
            except OSError as exc:
                raise TargetError(f"no Ray cluster answers at {address}: {exc}") from None
        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        # Serve's driver-side INFO lines ("Started Serve", "Deleting app") are not cpmai's
        # messages: cpmai says what it does itself
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        return ray

    # --- the target interface -------------------------------------------------------------

    def preflight(self) -> None:
        """Before any gate: Ray Serve must be installed."""
        _require_ray()

    def rollout(self, plan: RolloutPlan, progress: Progress) -> RolloutResult:
        _require_ray()
        steps: list[dict[str, Any]] = []
        started = time.perf_counter()
        cluster = self._cluster(plan.spec, progress)
        steps.append({"step": "cluster", "seconds": round(time.perf_counter() - started, 3),
                      "note": cluster["address"]})  # fmt: skip
        previous = (self._record() or {}).get("version")
        ray = self._connect(cluster["address"])
        from ray import serve

        mode = _mode(cluster) or probe_mode(ray)
        if mode is None:
            progress("ray: the cluster did not say which data plane Serve runs (docs/targets.md)")
        else:
            progress(f"ray: {mode.describe()}")
        began = time.perf_counter()
        if cluster.get("owned"):
            serve.start(
                proxy_location="HeadOnly",
                http_options={"host": "127.0.0.1", "port": int(cluster["http_port"])},
            )
        if plan.canary:
            progress("ray: Serve replaces replicas one by one; the canary steps are not applied")
        scale = plan.spec.autoscaling
        replicas = (
            f"{scale.min}–{scale.max} replicas, autoscaled at "
            f"{scale.target_ongoing_requests:g} requests in flight each"
            if scale
            else f"{plan.spec.replicas} replica(s)"
        )
        progress(f"deploying {plan.version} as the Serve application {self.app_name} ({replicas})")
        application = build_deployment(
            str(self.home.resolve()), plan.name, plan.version, self.env, plan.spec
        )
        try:
            serve.run(application, name=self.app_name, route_prefix=cluster["route_prefix"])
        except Exception as exc:  # Serve says DEPLOY_FAILED; the replica's error is in status
            raise TargetError(
                f"Ray Serve could not deploy {plan.version}: {exc} {self._why()}".strip()
            ) from exc
        url = self._url(cluster)
        steps.append({"step": "serve.run", "seconds": round(time.perf_counter() - began, 3),
                      "note": replicas})  # fmt: skip
        record = {
            **cluster,
            "version": plan.version,
            "url": url,
            "app": self.app_name,
            "replicas": plan.spec.min_replicas,
            "max_replicas": plan.spec.max_replicas_allowed,
        }
        if mode is not None:
            record["mode"] = mode.to_dict()
        self._save(record)
        if not self._healthy(url, plan.version):
            raise TargetError(f"{self.app_name} is not answering at {url} after the deploy")
        return RolloutResult(url=url, previous=previous, steps=steps)

    def _why(self) -> str:
        """The last line of the replica's error, from Serve's status."""
        try:
            from ray import serve

            app = serve.status().applications.get(self.app_name)
            message = app.deployments["model"].message if app else ""
        except Exception:  # the status itself failed: say nothing more
            return ""
        lines = [line for line in str(message).splitlines() if line.strip()]
        return f"({lines[-1].strip()})" if lines else ""

    def _url(self, cluster: dict[str, Any]) -> str:
        if cluster.get("owned"):
            return f"http://127.0.0.1:{cluster['http_port']}"
        from ray.serve.context import _get_global_client

        client = _get_global_client()
        if client is None:
            raise TargetError("Ray Serve is not running on the cluster")
        details = client.get_serve_details()
        http = details.get("http_options") or {}
        host = http.get("host") or "127.0.0.1"
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        return f"http://{host}:{http.get('port', 8000)}{cluster['route_prefix']}"

    def _healthy(self, url: str, version: str | None = None, timeout: float = 1.0) -> bool:
        try:
            with _DIRECT.open(f"{url}/version", timeout=timeout) as reply:
                answer = json.loads(reply.read())
            return version is None or answer.get("version") == version
        except (OSError, ValueError):
            return False

    def status(self) -> TargetStatus:
        record = self._record()
        if record is not None and "url" not in record and record.get("owned") and _alive(record):
            return TargetStatus(
                state="stopped",
                detail=f"no Ray Serve application, but the cluster cpmai started for it runs "
                f"({record.get('address')}, a deploy that did not finish): `cpmai stop` stops it",
            )
        if record is None or "url" not in record:
            return TargetStatus(state="stopped", detail="no Ray Serve application")
        url = str(record["url"])
        try:
            with _DIRECT.open(f"{url}/version", timeout=1.0) as reply:
                live = json.loads(reply.read()).get("version")
        except (OSError, ValueError):
            live = None
        cluster = str(record.get("address", "(no address recorded)")) + (
            " (started by cpmai)" if record.get("owned") else ""
        )
        # Serve's own view; not when the application does not answer on a cluster reached
        # through Ray Client (`ray://`), where connecting can take minutes to fail
        owned_up = record.get("owned") and _alive(record)
        serve_says = self._replicas(record) if live is not None or owned_up else None
        mode = _mode(record)
        parts = [f"Serve application {record.get('app')} on Ray cluster {cluster}"]
        if serve_says is not None:
            parts.append(serve_says.describe(record.get("max_replicas", 0)))
        if mode is not None and not mode.fast:
            parts.append(mode.describe())
        detail = "; ".join(parts)
        if live is None:
            return TargetStatus(state="down", url=url, detail=f"{detail}: no answer")
        floor = int(record.get("replicas", 0))
        running = serve_says.running if serve_says else floor
        healthy = serve_says is None or (serve_says.settled and running >= floor)
        return TargetStatus(
            state="running" if healthy else "degraded",
            url=url,
            healthy=True,
            live=live,
            workers=running,
            detail=detail,
        )

    def _replicas(self, record: dict[str, Any]) -> Replicas | None:
        """What Serve says of the application's replicas now (None: the cluster did not say)."""
        address = record.get("address")
        if address is None:
            return None
        try:
            self._connect(address)
            from ray import serve

            app = serve.status().applications.get(self.app_name)
        except Exception:  # a cluster that does not answer: status says what HTTP says
            return None
        finally:
            ray = sys.modules.get("ray")
            if ray is not None and ray.is_initialized():
                ray.shutdown()
        if app is None or "model" not in app.deployments:
            return None
        deployment = app.deployments["model"]
        states = {getattr(k, "value", str(k)): int(v) for k, v in deployment.replica_states.items()}
        return Replicas(states, str(getattr(deployment.status, "value", deployment.status)),
                        str(deployment.message or ""))  # fmt: skip

    def stop(self) -> None:
        record = self._record()
        if record is None:
            return
        if record.get("owned") and not _alive(record):
            if "gcs_port" in record:  # a cluster still starting, or half dead: its processes
                stop_cluster(int(record["gcs_port"]))
            _forget(record)
            self.record_path.unlink(missing_ok=True)
            return
        if "address" not in record:
            raise TargetError(
                f"{self.record_path} names no Ray cluster: cpmai cannot tell where the Serve "
                f"application {self.app_name} runs",
                hint=f"delete it there (serve.delete({self.app_name!r})), then remove that file",
            )
        try:
            self._connect(str(record["address"]))
            from ray import serve

            serve.delete(self.app_name)  # replicas run their shutdown: the log is flushed
            if record.get("owned"):
                serve.shutdown()  # type: ignore[no-untyped-call]
        except Exception as exc:  # a cluster gone wrong: still stop what cpmai started
            if not record.get("owned"):
                raise TargetError(f"could not delete {self.app_name}: {exc}") from exc
        finally:
            ray = sys.modules.get("ray")
            if ray is not None and ray.is_initialized():
                ray.shutdown()
        if record.get("owned"):
            stop_cluster(int(record["gcs_port"]))
            _forget(record)
        self.record_path.unlink(missing_ok=True)


_PORTS = ("gcs_port", "http_port")
_COUNTS = ("replicas", "max_replicas")
_TEXTS = ("address", "app", "version", "route_prefix", "haproxy_folder")


def _clean(found: dict[str, Any]) -> dict[str, Any]:
    """ray.json as cpmai wrote it: a value of the wrong type or range (a hand edit, a torn
    write) is left out, read as absent, never a crash."""

    def whole(value: Any, low: int, high: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

    record: dict[str, Any] = {}
    for key, value in found.items():
        if key in _PORTS:
            keep = whole(value, 1, 65535)
        elif key in _COUNTS:
            keep = whole(value, 0, 1000)
        elif key in _TEXTS:
            keep = isinstance(value, str) and 0 < len(value) <= 4096
        elif key == "url":
            keep = isinstance(value, str) and value.startswith(("http://", "https://"))
        elif key == "owned":
            keep, value = True, value is True
        elif key == "mode":
            keep = isinstance(value, dict)
        else:
            keep = True
        if keep:
            record[key] = value
    return record


def _alive(record: dict[str, Any]) -> bool:
    try:
        return gcs_alive(int(record["gcs_port"]))
    except (KeyError, TypeError, ValueError):
        return False


def _mode(record: dict[str, Any]) -> Mode | None:
    found = record.get("mode")
    if not isinstance(found, dict):
        return None
    return Mode(found.get("haproxy") is True, found.get("throughput_optimized") is True)


SETTLED = ("HEALTHY", "UPSCALING", "DOWNSCALING", "UPDATING")


@dataclass(frozen=True)
class Replicas:
    """Serve's view of a deployment's replicas: counts by state, its status and message."""

    states: dict[str, int]
    status: str
    message: str

    @property
    def running(self) -> int:
        return self.states.get("RUNNING", 0)

    @property
    def settled(self) -> bool:
        """Serve has what it wants, or is scaling or updating on purpose."""
        return self.status in SETTLED

    def describe(self, ceiling: int) -> str:
        counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(self.states.items()))
        text = f"replicas now: {counts or 'none'}" + (f" (at most {ceiling})" if ceiling else "")
        if not self.settled and self.message:
            text += f"; Serve: {self.status}: {self.message.splitlines()[-1][:300]}"
        return text


def _forget(record: dict[str, Any]) -> None:
    """Remove the HAProxy folder of a stopped cluster (only one cpmai made: a hand-edited
    ray.json cannot have it delete anything else)."""
    import shutil

    folder = Path(str(record.get("haproxy_folder") or ""))
    roots = (Path("/tmp"), Path(tempfile.gettempdir()))
    if folder.parent in roots and folder.name.startswith("cpmai-hap-"):
        shutil.rmtree(folder, ignore_errors=True)
