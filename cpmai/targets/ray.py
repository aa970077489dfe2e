"""The Ray Serve target: the same cpmai server, as a Ray Serve application on a Ray cluster.

Each replica of the deployment builds cpmai's own ASGI app for the artifact (verified against
the ledger, as everywhere) inside the replica, and Serve runs its lifespan: the same protocols,
validation, micro-batching (`serving:`), prediction log and resource samples as the local
target, so `cpmai monitor` and `cpmai cost` read a Ray environment like any other. Replicas
come from `replicas:`, each reserving `resources.cpu` CPUs and `resources.memory_gb` GiB; a
replica's health is cpmai's readiness.

`address:` names an existing cluster (`ray://…` or `HOST:PORT`): the application is
`NAME-ENV` at route prefix `/NAME-ENV`. Without it cpmai starts a local cluster for the
environment (`ray start --head`, 127.0.0.1 only, no dashboard) with Serve's HTTP proxy on
`port:` (else a free port) and the application at `/`; `stop` deletes the application and
stops that cluster — only its own processes, found by the cluster's port. Ray Serve replaces
replicas one at a time on an update (stop one, start one); it has no
weighted split between two versions of an application, so a canary `rollout:` is applied as
that rolling update and the rollout's steps are noted, not used.

`runs/NAME/ENV/ray.json` records the cluster (address, whether cpmai started it, its port), the
HTTP address and the live version.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from cpmai.errors import TargetError, UsageError
from cpmai.fsutil import read_json_object, write_atomic
from cpmai.home import Home
from cpmai.targets import Progress, RolloutPlan, RolloutResult, TargetStatus

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
START_TIMEOUT = 120.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ray_binary() -> str:
    """The `ray` next to this Python (its workers then run this Python, with cpmai in it)."""
    local = Path(sys.executable).parent / "ray"
    found = str(local) if local.exists() else shutil.which("ray")
    if found is None:
        raise TargetError(
            "the ray target needs Ray Serve, which is not installed",
            hint="pip install 'cpmai[ray]'",
        )
    return found


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

    @serve.deployment(
        name="model",
        num_replicas=spec.replicas,
        ray_actor_options={
            "num_cpus": spec.resources.cpu,
            "memory": int(spec.resources.memory_gb * 2**30),
        },
        max_ongoing_requests=64,  # cpmai batches in the replica: let requests reach it
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
        return read_json_object(self.record_path)

    def _save(self, record: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.record_path, json.dumps(record, indent=1).encode())

    # --- the cluster ----------------------------------------------------------------------

    def _cluster(self, spec: Any, progress: Progress) -> dict[str, Any]:
        """The cluster to deploy to, started when cpmai owns it and it is not running."""
        record = self._record() or {}
        if spec.address:
            return {"address": spec.address, "owned": False, "route_prefix": f"/{self.app_name}"}
        if record.get("owned") and self._gcs_alive(record):
            return record
        gcs = _free_port()
        http = spec.port or _free_port()
        progress(f"starting a local Ray cluster (127.0.0.1:{gcs})")
        started = time.perf_counter()
        command = [
            ray_binary(), "start", "--head", "--port", str(gcs), "--node-ip-address", "127.0.0.1",
            "--include-dashboard", "false", "--disable-usage-stats",
            "--num-cpus", str(os.cpu_count() or 1), "--object-store-memory", str(256 * 2**20),
        ]  # fmt: skip
        # Ray's fixed default ports (client server 10001, agent 52365, ...) would collide with
        # another cluster on the machine: give each one a free port of its own
        for flag in ("--ray-client-server-port", "--dashboard-agent-listen-port",
                     "--dashboard-agent-grpc-port", "--metrics-export-port",
                     "--runtime-env-agent-port"):  # fmt: skip
            command += [flag, str(_free_port())]
        result = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT)
        if result.returncode != 0:
            raise TargetError(f"`ray start` failed: {(result.stderr or result.stdout)[-800:]}")
        record = {
            "address": f"127.0.0.1:{gcs}",
            "gcs_port": gcs,
            "owned": True,
            "http_port": http,
            "route_prefix": "/",
            "started": round(time.perf_counter() - started, 3),
        }
        self._save(record)
        return record

    @staticmethod
    def _gcs_alive(record: dict[str, Any]) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", int(record["gcs_port"])), timeout=0.5):
                return True
        except (OSError, KeyError, ValueError):
            return False

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
        self._connect(cluster["address"])
        from ray import serve

        began = time.perf_counter()
        if cluster.get("owned"):
            serve.start(
                proxy_location="HeadOnly",
                http_options={"host": "127.0.0.1", "port": int(cluster["http_port"])},
            )
        if plan.canary:
            progress("ray: Serve replaces replicas one by one; the canary steps are not applied")
        progress(f"deploying {plan.version} as the Serve application {self.app_name}")
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
                      "note": f"{plan.spec.replicas} replica(s)"})  # fmt: skip
        record = {**cluster, "version": plan.version, "url": url, "app": self.app_name,
                  "replicas": plan.spec.replicas}  # fmt: skip
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
        if record is None or "url" not in record:
            return TargetStatus(state="stopped", detail="no Ray Serve application")
        url = str(record["url"])
        try:
            with _DIRECT.open(f"{url}/version", timeout=1.0) as reply:
                live = json.loads(reply.read()).get("version")
        except (OSError, ValueError):
            live = None
        cluster = record["address"] + (" (started by cpmai)" if record.get("owned") else "")
        if live is None:
            return TargetStatus(state="down", url=url, detail=f"Ray cluster {cluster}: no answer")
        return TargetStatus(
            state="running",
            url=url,
            healthy=True,
            live=live,
            workers=int(record.get("replicas", 0)),
            detail=f"Serve application {record.get('app')} on Ray cluster {cluster}",
        )

    def stop(self) -> None:
        record = self._record()
        if record is None:
            return
        if record.get("owned") and not self._gcs_alive(record):
            self.record_path.unlink(missing_ok=True)
            return
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
            _stop_cluster(int(record["gcs_port"]))
        self.record_path.unlink(missing_ok=True)


def cluster_processes(gcs_port: int) -> list[Any]:
    """The processes of the cluster whose GCS listens on `gcs_port` (with their children): its
    GCS, raylet, agents and workers, and no other cluster's. The GCS address carries the node's
    IP, which Ray picks itself (not always 127.0.0.1): the port is what identifies it."""
    import re

    import psutil

    mark = re.compile(rf"[:=]{gcs_port}\b")
    mine = []
    for proc in psutil.process_iter(["cmdline"]):
        command = " ".join(proc.info.get("cmdline") or [])
        if "ray" in command and mark.search(command):
            mine.append(proc)
    for proc in list(mine):
        try:
            mine += [child for child in proc.children(recursive=True) if child not in mine]
        except psutil.Error:
            continue
    return mine


def _stop_cluster(gcs_port: int, timeout: float = 20.0) -> None:
    """Stop the processes of the local cluster on `gcs_port` (not every Ray on the machine, as
    `ray stop` would)."""
    import psutil

    mine = cluster_processes(gcs_port)
    for proc in mine:
        try:
            proc.terminate()
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(mine, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            continue
