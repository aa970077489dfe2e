"""The ray target on a real local Ray cluster: deploy with 2 replicas, answers with the model's
own predictions over HTTP, a new version, a rollback, a stop that leaves no process behind."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from cost_fixture import edit
from test_targets import _expected, _get

from conftest import FEATURES, run_cpmai

pytest.importorskip("ray.serve", reason="the ray extra is not installed (make test installs it)")

NAME = "churn-classifier"


def _status(home: Path) -> dict[str, Any]:
    result = run_cpmai("--json", "status", NAME)
    assert result.code == 0, result.err
    return next(r for r in json.loads(result.out)["environments"] if r["env"] == "cluster")


def _replicas(address: str) -> dict[str, Any]:
    """What Ray Serve itself says of the application (in a separate driver process)."""
    code = (
        "import json, ray\nfrom ray import serve\n"
        f"ray.init(address={address!r}, log_to_driver=False, logging_level='ERROR')\n"
        f"app = serve.status().applications['{NAME}-cluster']\n"
        "name = lambda x: getattr(x, 'value', str(x))\n"
        "print(json.dumps({'status': name(app.status), 'replicas': {name(k): v for k, v in "
        "app.deployments['model'].replica_states.items()}}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout  # fmt: skip
    data: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return data


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _clean_up(record_path: Path) -> None:
    """Stop a cluster cpmai started that a failed test left running, and remove its files."""
    import shutil

    from cpmai.targets.ray_cluster import stop_cluster

    if record_path.exists():
        record = json.loads(record_path.read_text())
        stop_cluster(int(record["gcs_port"]))
        shutil.rmtree(record.get("haproxy_folder") or "/nonexistent", ignore_errors=True)


def _cluster_processes(port: int) -> list[str]:
    """The cluster's processes still alive (one that exits while it is looked at is gone)."""
    import psutil

    from cpmai.targets.ray_cluster import cluster_processes

    alive = []
    for process in cluster_processes(port):
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(" ".join(process.cmdline())[:120])
        except psutil.Error:
            continue
    return alive


@pytest.mark.slow
def test_ray_serve_deploy_answer_rollback_stop(churn: Path, home: Path) -> None:
    def change(doc: dict[str, Any]) -> None:
        doc["gates"] = {"metrics": {"accuracy": ">= 0.7"}}
        doc["environments"] = {
            "cluster": {"target": "ray", "replicas": 2, "resources": {"cpu": 0.5, "memory_gb": 0.5}}
        }
        # watched like a local environment: the replicas log under this state folder
        doc["monitoring"]["schedule"] = {"every": "1s", "window": "10m", "min_requests": 1}

    edit(churn, change)
    record_path = home / "runs" / NAME / "cluster" / "ray.json"
    try:
        deployed = run_cpmai("deploy", churn, "--env", "cluster", timeout=600)
        assert deployed.code == 0, deployed.err
        record = json.loads(record_path.read_text())
        assert record["owned"] and record["version"] == "1.0.0"
        # the cluster cpmai starts runs Serve's high-throughput mode, with HAProxy's own files
        assert record["mode"] == {"haproxy": True, "throughput_optimized": True}
        assert "ray: high-throughput mode" in deployed.err
        assert Path(record["haproxy_folder"]).is_dir()
        row = _status(home)
        assert row["server"]["state"] == "running" and row["server"]["live"] == "1.0.0"
        assert row["target"] == "ray" and row["server"]["workers"] == 2
        url = row["server"]["url"]
        serve_says = _replicas(record["address"])
        assert serve_says == {"status": "RUNNING", "replicas": {"RUNNING": 2}}

        frame = pd.read_csv(churn.parent / "data" / "holdout.csv").head(40)
        records = json.loads(frame[FEATURES].to_json(orient="records"))
        status, reply = _get(f"{url}/invocations", {"dataframe_records": records})
        assert status == 200 and reply["predictions"] == _expected(churn, frame)[0]
        bad = [{**records[0], "tenure_months": "many"}]
        status, reply = _get(f"{url}/invocations", {"dataframe_records": bad})
        assert status == 422 and "tenure_months" in json.dumps(reply)
        assert _get(f"{url}/v2/health/ready")[0] == 200

        edit(churn, lambda doc: doc.update(description="Retrained."))
        assert run_cpmai("deploy", churn, "--env", "cluster", timeout=600).code == 0
        assert _get(f"{url}/version")[1]["version"] == "1.1.0"
        back = run_cpmai("rollback", NAME, "--env", "cluster", timeout=600)
        assert back.code == 0, back.err
        assert _get(f"{url}/version")[1]["version"] == "1.0.0"
        status, reply = _get(f"{url}/invocations", {"dataframe_records": records})
        assert status == 200 and reply["predictions"] == _expected(churn, frame)[0]
        logged = list((home / "logs" / NAME / "cluster").glob("predictions-*.jsonl"))
        assert logged, "the replicas wrote no prediction log"
        watcher = _status(home)["watcher"]
        assert watcher["state"] == "running", watcher
        checks = home / "watch" / NAME / "cluster" / "checks.jsonl"
        deadline = time.monotonic() + 60
        seen: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not any(c["requests"] for c in seen):
            time.sleep(0.5)
            seen = [json.loads(line) for line in checks.read_text().splitlines()]
        assert any(c["requests"] and c["version"] == "1.0.0" for c in seen), seen[-3:]
        gauges = (home / "watch" / NAME / "cluster" / "gauges.prom").read_text()
        assert 'cpmai_watch_last_check_timestamp_seconds{model="churn-classifier"' in gauges

        stopped = run_cpmai("stop", NAME, "--env", "cluster", timeout=300)
        assert stopped.code == 0, stopped.err
        assert _status(home)["server"]["state"] == "stopped"
        assert _status(home)["watcher"]["state"] == "stopped"
        assert not _alive(watcher["pid"])
        assert _cluster_processes(record["gcs_port"]) == []
        assert not Path(record["haproxy_folder"]).exists()
        events = [json.loads(line) for line in (home / "ledger.jsonl").read_text().splitlines()]
        rollouts = [
            (e["action"], e["version"], e["details"].get("result"))
            for e in events
            if e["env"] == "cluster" and e["action"] not in ("gate", "intent", "trigger")
        ]
        assert rollouts == [("deploy", "1.0.0", "live"), ("deploy", "1.1.0", "live"),
                            ("rollback", "1.0.0", "live"), ("stop", "1.0.0", None)]  # fmt: skip
    finally:
        _clean_up(record_path)


@pytest.mark.slow
def test_ray_serve_on_a_cluster_cpmai_did_not_start(churn: Path, home: Path) -> None:
    """`address:` names a running cluster: the application goes there under /NAME-ENV, and
    `stop` removes the application but leaves the cluster alone."""
    from cpmai.targets.ray_cluster import node_command, start_node, start_serve, stop_cluster
    from serving_helpers import free_port

    gcs, http = free_port(), free_port()
    start_node(node_command(gcs, 2, head=True), dict(os.environ))  # without Serve's switches
    try:
        start_serve(gcs, http)

        def change(doc: dict[str, Any]) -> None:
            doc["gates"] = {"metrics": {"accuracy": ">= 0.7"}}
            doc["environments"] = {
                "shared": {
                    "target": "ray",
                    "address": f"127.0.0.1:{gcs}",
                    "replicas": 1,
                    "resources": {"cpu": 0.5, "memory_gb": 0.5},
                }
            }

        edit(churn, change)
        deployed = run_cpmai("deploy", churn, "--env", "shared", timeout=600)
        assert deployed.code == 0, deployed.err
        # a cluster started without the switches: deploy and status say what that costs
        assert "Serve's classic data plane (RAY_SERVE_ENABLE_HA_PROXY=1 and " in deployed.err
        row = next(r for r in json.loads(run_cpmai("--json", "status", NAME).out)["environments"]
                   if r["env"] == "shared")  # fmt: skip
        url = row["server"]["url"]
        assert url == f"http://127.0.0.1:{http}/{NAME}-shared"
        assert "classic data plane" in row["server"]["detail"], row["server"]["detail"]
        frame = pd.read_csv(churn.parent / "data" / "holdout.csv").head(10)
        records = json.loads(frame[FEATURES].to_json(orient="records"))
        status, reply = _get(f"{url}/invocations", {"dataframe_records": records})
        assert status == 200 and reply["predictions"] == _expected(churn, frame)[0]
        assert run_cpmai("stop", NAME, "--env", "shared", timeout=300).code == 0
        assert _cluster_processes(gcs), "stop took down a cluster cpmai did not start"
        gone = urllib.request.Request(f"{url}/version")
        with pytest.raises(urllib.error.HTTPError) as refused:  # the application is gone
            urllib.request.urlopen(gone, timeout=10)
        assert refused.value.code == 404
    finally:
        stop_cluster(gcs)
    assert _cluster_processes(gcs) == []


@pytest.mark.slow
def test_replicas_follow_the_load_and_cost_what_ran(churn: Path, home: Path) -> None:
    """`replicas: {min, max, target_ongoing_requests}` is Serve's autoscaler: load adds a
    replica, calm removes it, `status` shows the replicas running now and `cost` charges the
    replicas that ran (from their own resource samples), between the floor and the ceiling."""
    import threading
    import time

    def change(doc: dict[str, Any]) -> None:
        doc["gates"] = {"metrics": {"accuracy": ">= 0.7"}}
        doc["monitoring"]["sample_interval_s"] = 1
        doc["environments"] = {"cluster": {
            "target": "ray", "resources": {"cpu": 0.5, "memory_gb": 0.5},
            "replicas": {"min": 1, "max": 2, "target_ongoing_requests": 1,
                         "upscale_delay_s": 1, "downscale_delay_s": 2}}}  # fmt: skip

    edit(churn, change)
    record_path = home / "runs" / NAME / "cluster" / "ray.json"
    try:
        deployed = run_cpmai("deploy", churn, "--env", "cluster", timeout=600)
        assert deployed.code == 0, deployed.err
        assert "1–2 replicas, autoscaled at 1 requests in flight each" in deployed.err
        row = _status(home)["server"]
        assert row["workers"] == 1 and "replicas now: 1 running (at most 2)" in row["detail"]
        url = row["url"]
        frame = pd.read_csv(churn.parent / "data" / "holdout.csv").head(1)
        body = json.dumps(
            {"dataframe_records": json.loads(frame[FEATURES].to_json(orient="records"))}
        )
        stop = threading.Event()
        answered: list[int] = []

        def load() -> None:
            while not stop.is_set():
                try:
                    answered.append(_get(f"{url}/invocations", json.loads(body))[0])
                except (OSError, ValueError, http.client.HTTPException) as failure:
                    answered.append(-1)  # counted, never a thread that dies unseen
                    print(f"a request failed: {failure!r}")

        threads = [threading.Thread(target=load) for _ in range(8)]
        for thread in threads:
            thread.start()
        try:
            deadline = time.monotonic() + 90
            while (row := _status(home)["server"])["workers"] < 2 and time.monotonic() < deadline:
                time.sleep(2)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
        assert row["workers"] == 2, row["detail"]
        assert set(answered) == {200}, f"failed answers while scaling up: {set(answered)}"
        deadline = time.monotonic() + 120
        while (row := _status(home)["server"])["workers"] > 1 and time.monotonic() < deadline:
            time.sleep(2)
        assert row["workers"] == 1 and row["state"] == "running", row["detail"]

        cost = run_cpmai("--json", "cost", NAME, "--env", "cluster")
        assert cost.code in (0, 4), cost.err
        [entry] = json.loads(cost.out)["environments"]
        scaled = entry["autoscaled"]
        assert scaled["min"] == 1 and scaled["max"] == 2 and scaled["peak_running"] == 2, scaled
        assert 1 < scaled["mean_running"] < 2, scaled
        assert entry["replicas"] == scaled["mean_running"]
        assert entry["allocation"]["cpu_cores"] == pytest.approx(0.5 * scaled["mean_running"])
        assert run_cpmai("stop", NAME, "--env", "cluster", timeout=300).code == 0
    finally:
        _clean_up(record_path)


def test_a_damaged_ray_record_is_read_as_absent_never_as_a_crash(tmp_path: Path) -> None:
    """runs/NAME/ENV/ray.json edited by hand or cut short: `status` and `stop` say what they can
    (a junk value reads as absent), never a traceback; `stop` never kills by a port it was not
    sure of, nor deletes a folder cpmai did not make."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from cpmai.errors import TargetError
    from cpmai.targets.ray import RayTarget

    class Version(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"version": "1.0.0"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Version)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    keep = tmp_path / "keep"
    keep.mkdir()
    good = {"address": "127.0.0.1:1", "owned": False, "url": url, "app": f"{NAME}-cluster",
            "replicas": 2, "max_replicas": 2}  # fmt: skip
    target = RayTarget(tmp_path, NAME, "cluster")
    try:
        junk: list[dict[str, Any]] = [
            {"replicas": "two"}, {"replicas": [2]}, {"replicas": "1.5"}, {"replicas": -1},
            {"replicas": True}, {"max_replicas": "x"}, {"mode": "fast"}, {"mode": [1]},
            {"url": "file:///etc/passwd"}, {"url": 3}, {"address": 7}, {"app": None},
            {"gcs_port": "x", "owned": "true"}, {"haproxy_folder": str(keep)},
        ]  # fmt: skip
        for change in junk:
            target.folder.mkdir(parents=True, exist_ok=True)
            target.record_path.write_text(json.dumps({**good, **change}))
            said = target.status()
            assert said.state in ("running", "down", "stopped"), (change, said)
            if "url" not in change:
                assert said.live == "1.0.0" and said.state == "running", (change, said)
        target.record_path.write_text('{"address": "127.0.0.1:1", "url": "' + url)  # cut short
        assert target.status().state == "stopped"
        # owned, but no port to find its processes by: nothing is killed, the record goes
        target.record_path.write_text(json.dumps({**good, "owned": True, "gcs_port": "x",
                                                  "haproxy_folder": str(keep)}))  # fmt: skip
        target.stop()
        assert not target.record_path.exists() and keep.is_dir()
        # not owned and no address: cpmai cannot tell where to delete the application
        target.record_path.write_text(json.dumps({**good, "address": None}))
        with pytest.raises(TargetError, match="names no Ray cluster"):
            target.stop()
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_a_deploy_killed_while_its_cluster_starts_leaves_nothing_stop_cannot_find(
    churn: Path, home: Path
) -> None:
    """SIGKILL to `cpmai deploy` while `ray start` brings its cluster up: the cluster still comes
    up (its start is a process of its own), `status` says so, and `cpmai stop` finds it by the
    port recorded before the start and stops every process of it."""
    import os
    import signal
    import time

    from conftest import CPMAI
    from cpmai.targets.ray_cluster import gcs_alive

    def change(doc: dict[str, Any]) -> None:
        doc["gates"] = {"metrics": {"accuracy": ">= 0.7"}}
        doc["environments"] = {
            "cluster": {"target": "ray", "replicas": 1, "resources": {"cpu": 0.5, "memory_gb": 0.5}}
        }

    edit(churn, change)
    record_path = home / "runs" / NAME / "cluster" / "ray.json"
    deploy = subprocess.Popen([*CPMAI, "deploy", str(churn), "--env", "cluster"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        gcs = None
        while gcs is None and time.monotonic() < deadline and deploy.poll() is None:
            if record_path.exists():
                gcs = json.loads(record_path.read_text()).get("gcs_port")
            time.sleep(0.05)
        assert gcs is not None, "the record was not written before `ray start`"
        while not _cluster_processes(gcs) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(deploy.pid, signal.SIGKILL)  # `ray start` is under way
        deploy.wait(timeout=30)
        while not gcs_alive(gcs) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert gcs_alive(gcs), "the cluster never came up"
        row = _status(home)["server"]
        assert row["state"] == "stopped" and "`cpmai stop` stops it" in row["detail"], row
        stopped = run_cpmai("stop", NAME, "--env", "cluster", timeout=300)
        assert stopped.code == 0, stopped.err
        assert _cluster_processes(gcs) == [] and not record_path.exists()
        assert not list(Path("/tmp").glob(f"cpmai-hap-*/{gcs}")), "HAProxy files left"
    finally:
        if deploy.poll() is None:
            deploy.kill()
        _clean_up(record_path)
