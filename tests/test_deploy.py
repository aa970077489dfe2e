"""The deploy lifecycle: gates, approvals, the local target (real server processes on 127.0.0.1),
switching versions under load, rollback, canary, status now and in the past, stop."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import CPMAI, run_cpmai
from serving_helpers import free_port

NAME = "churn-classifier"
ROW = {
    "tenure_months": 15,
    "monthly_charges": 18.0,
    "support_calls": 2,
    "late_payments": 0,
    "plan": "basic",
    "contract": "two-year",
    "payment_method": "bank-transfer",
    "region": "north",
}


def load(manifest: Path) -> Any:
    """PyYAML reads `on:` as True (YAML 1.1); cpmai reads YAML 1.2, where it is a key."""
    doc = yaml.safe_load(manifest.read_text())
    triggers = doc.get("monitoring", {}).get("triggers", {})
    if True in triggers:
        triggers["on"] = triggers.pop(True)
    return doc


def write_manifest(manifest: Path) -> Path:
    """The churn example's manifest with quick gates and free ports."""
    doc = load(manifest)
    doc["gates"] = {
        "metrics": {"accuracy": ">= 0.7"},
        "latency": {"p99_ms": 100, "concurrency": 1, "duration_s": 0.3},
        "max_size_mb": 50,
        "approvals": {"production": 1},
    }
    doc["monitoring"]["sample_interval_s"] = 0.2  # the servers' resource samples, quickly
    doc["environments"] = {
        "staging": {"target": "local", "port": free_port()},
        "production": {
            "target": "local",
            "port": free_port(),
            "rollout": {"strategy": "canary", "steps": [20, 100], "window_s": 1.5},
            "approvers": ["*@example.com"],
        },
    }
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return manifest


def edit(manifest: Path, **changes: Any) -> None:
    """Change top-level keys of the manifest (a new version when packaged)."""
    doc = load(manifest)
    doc.update(changes)
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture
def project(churn: Path, home: Path) -> Any:
    """A quick-gated manifest; every server it starts is stopped afterwards."""
    yield write_manifest(churn)
    from cpmai.targets.local import LocalTarget

    for env in ("staging", "production"):
        LocalTarget(home, NAME, env).stop()


def port_of(manifest: Path, env: str) -> int:
    return int(yaml.safe_load(manifest.read_text())["environments"][env]["port"])


def infer(port: int, conn: http.client.HTTPConnection | None = None) -> tuple[int, str | None]:
    body = json.dumps(
        {
            "id": "t",
            "inputs": [
                {"name": k, "shape": [1, 1], "datatype": "BYTES" if isinstance(v, str) else "FP64",
                 "data": [v]}
                for k, v in ROW.items()
            ],
        }
    )  # fmt: skip
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", f"/v2/models/{NAME}/infer", body, {"Content-Type": "application/json"})
        reply = conn.getresponse()
        data = json.loads(reply.read())
        return reply.status, data.get("model_version")
    finally:
        if own:
            conn.close()


class Client(threading.Thread):
    """Sends requests back to back on one keep-alive connection, counting every outcome."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.outcomes: Counter[Any] = Counter()
        self.stopping = threading.Event()
        self.elapsed = 0.0

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        start = time.monotonic()
        deadline = start + 120  # stops by itself whatever happens
        while not self.stopping.is_set() and time.monotonic() < deadline:
            try:
                self.outcomes[infer(self.port, conn)] += 1
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.outcomes[type(exc).__name__] += 1
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        self.elapsed = time.monotonic() - start

    def finish(self) -> Counter[Any]:
        self.stopping.set()
        self.join(30)
        return self.outcomes


def events(home: Path, action: str | None = None) -> list[dict[str, Any]]:
    lines = (home / "ledger.jsonl").read_text().splitlines()
    out = [json.loads(line) for line in lines]
    return [e for e in out if action is None or e["action"] == action]


# --- gates -----------------------------------------------------------------------------------


def test_a_failed_gate_exits_3_records_the_values_and_starts_nothing(
    project: Path, home: Path, cli: Any
) -> None:
    doc = load(project)
    doc["gates"]["metrics"] = {"accuracy": ">= 0.99", "roc_auc": ">= 0.5"}
    project.write_text(yaml.safe_dump(doc))
    result = cli("deploy", project, "--env", "staging")
    assert result.code == 3
    assert "metric:accuracy: 0.7" in result.err and "(needs >= 0.99)" in result.err
    assert "roc_auc" not in result.err.split("error:")[1]  # only failed gates in the message
    gate = events(home, "gate")[-1]
    assert gate["details"]["passed"] is False
    measured = {r["gate"]: r for r in gate["details"]["results"]}
    assert measured["metric:accuracy"]["passed"] is False
    assert 0.5 < measured["metric:accuracy"]["measured"] < 0.99
    assert measured["metric:roc_auc"]["passed"] is True
    assert measured["latency:p99_ms"]["measured"] > 0
    assert not events(home, "deploy")
    assert not (home / "runs" / NAME / "staging" / "run.json").exists()
    status = cli("status", NAME, "--json")
    row = json.loads(status.out)["environments"][0]
    assert row["version"] is None and row["server"]["state"] == "stopped"


def test_approvals_separation_of_duties_and_refusals(project: Path, home: Path, cli: Any) -> None:
    from cpmai.artifacts import open_artifact
    from cpmai.gates import approval_gates
    from cpmai.ledger import Ledger
    from cpmai.replay import replay

    assert cli("package", project).code == 0
    refused = cli("--actor", "mallory@evil.test", "approve", NAME, "1.0.0", "--env", "production")
    assert refused.code == 3 and "may not approve for production" in refused.err
    assert events(home)[-1]["action"] == "approval-refused"
    assert (
        cli("--actor", "tester@example.com", "approve", NAME, "1.0.0", "-e", "production").code == 0
    )
    manifest = open_artifact(home, NAME, "1.0.0").manifest()

    def gate(actor: str) -> Any:
        state = replay(Ledger(home).events())
        return approval_gates(manifest, state, NAME, "1.0.0", "production", actor)[0]

    own = gate("tester@example.com")  # the approver deploying their own approval: not counted
    assert not own.passed and "separation of duties" in own.note
    assert gate("someone@example.com").passed
    blocked = cli("promote", NAME, "1.0.0", "--env", "production")  # actor: tester@example.com
    assert blocked.code == 3 and "approvals: 0 (needs >= 1)" in blocked.err
    assert "cpmai approve" in blocked.err
    assert cli("approve", NAME, "1.0.0", "--env", "nowhere").code == 2


def test_unknown_environment_and_version_are_usage_errors(project: Path, cli: Any) -> None:
    result = cli("deploy", project, "--env", "prod")
    assert result.code == 2 and "no environment 'prod'" in result.err
    assert cli("promote", NAME, "9.9.9", "--env", "staging").code == 2
    assert cli("rollback", NAME, "--env", "staging").code == 2
    assert cli("status", "--at", "yesterday").code == 2


# --- the local target, for real ---------------------------------------------------------------


@pytest.mark.slow
def test_deploy_switch_and_rollback_under_load_lose_nothing(
    project: Path, home: Path, cli: Any
) -> None:
    port = port_of(project, "staging")
    first = cli("--json", "deploy", project, "--env", "staging", "--reason", "first")
    assert first.code == 0, first.err
    doc = json.loads(first.out)
    assert doc["version"] == "1.0.0" and doc["url"] == f"http://127.0.0.1:{port}"
    assert [s["step"] for s in doc["steps"]][:3] == ["package", "verify", "gates"]
    assert infer(port) == (200, "1.0.0")

    client = Client(port)
    client.start()
    time.sleep(1.0)
    edit(project, description="second version")
    second = cli("deploy", project, "--env", "staging")
    assert second.code == 0, second.err
    assert "deployed churn-classifier 1.1.0 in staging (was 1.0.0)" in second.out
    time.sleep(0.5)
    back = cli("--json", "rollback", NAME, "--env", "staging", "--reason", "drill")
    assert back.code == 0, back.err
    assert json.loads(back.out)["version"] == "1.0.0"
    time.sleep(0.5)
    outcomes = client.finish()
    served = sum(outcomes.values())
    assert set(outcomes) <= {(200, "1.0.0"), (200, "1.1.0")}, outcomes  # no failure of any kind
    assert outcomes[(200, "1.0.0")] > 0 and outcomes[(200, "1.1.0")] > 0
    assert served / client.elapsed >= 200, (served, client.elapsed)

    samples = [
        json.loads(line)
        for path in (home / "logs" / NAME / "staging").glob("resources-*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert len(samples) >= 5  # every 0.2 s while the server ran, beside the prediction log
    assert {s["version"] for s in samples} <= {"1.0.0", "1.1.0"}
    assert all(s["rss_bytes"] > 10_000_000 and s["cpu_percent"] >= 0 for s in samples)
    assert max(s["cpu_percent"] for s in samples) > 5  # it was busy serving the client

    rollback = events(home, "rollback")[-1]
    assert rollback["details"]["reason"] == "drill" and rollback["details"]["previous"] == "1.1.0"
    status = json.loads(cli("status", NAME, "--json").out)["environments"][0]
    assert status["version"] == "1.0.0" and status["server"]["state"] == "running"
    assert status["server"]["live"] == "1.0.0" and status["last_event"]["action"] == "rollback"
    # the past: just after the second deploy, 1.1.0 was live, deployed by the tester
    deployed = events(home, "deploy")[-1]
    past = cli("--json", "status", NAME, "--at", deployed["time"])
    row = json.loads(past.out)["environments"][0]
    assert row["version"] == "1.1.0" and row["by"] == "tester@example.com"
    assert row["gates"]["passed"] is True and "server" not in row
    before = cli("--json", "status", NAME, "--at", "2000-01-01T00:00")
    assert json.loads(before.out)["environments"] == []


@pytest.mark.slow
def test_a_killed_server_is_seen_down_and_deploy_recovers_it(
    project: Path, home: Path, cli: Any
) -> None:
    assert cli("deploy", project, "--env", "staging").code == 0
    run = json.loads((home / "runs" / NAME / "staging" / "run.json").read_text())
    os.kill(run["pid"], signal.SIGKILL)
    start = time.monotonic()
    while True:
        row = json.loads(cli("status", NAME, "--json").out)["environments"][0]
        if row["server"]["state"] == "down":
            break
        assert time.monotonic() - start < 2.0, row
        time.sleep(0.1)
    human = cli("status")
    assert "down" in human.out and "not running" in human.out
    again = cli("deploy", project, "--env", "staging")
    assert again.code == 0, again.err
    assert infer(port_of(project, "staging")) == (200, "1.0.0")


@pytest.mark.slow
def test_two_deploys_at_once_run_one_after_the_other(project: Path, home: Path) -> None:
    other = project.parent / "other.yaml"
    other.write_text(project.read_text().replace("Predicts which", "Also predicts which"))
    env = {**os.environ, "CPMAI_HOME": str(home)}
    procs = [
        subprocess.Popen(
            [*CPMAI, "deploy", str(m), "--env", "staging"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for m in (project, other)
    ]
    results = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    deploys = [e for e in events(home, "deploy") if e["details"]["result"] == "live"]
    assert len(deploys) == 2 and {d["version"] for d in deploys} == {"1.0.0", "1.1.0"}
    from cpmai.targets.local import LocalTarget

    live = LocalTarget(home, NAME, "staging").status()
    assert live.live == deploys[-1]["version"]  # the ledger and the server agree
    assert infer(port_of(project, "staging"))[1] == deploys[-1]["version"]


@pytest.mark.slow
def test_a_version_the_server_cannot_load_leaves_the_old_one_serving(
    project: Path, home: Path, cli: Any
) -> None:
    from cpmai.artifacts import open_artifact
    from cpmai.errors import TargetError
    from cpmai.targets import RolloutPlan
    from cpmai.targets.local import LocalTarget

    assert cli("deploy", project, "--env", "staging").code == 0
    port = port_of(project, "staging")
    edit(project, description="to be corrupted")
    assert cli("package", project).code == 0
    twin = home / "artifacts" / NAME / "1.1.0" / "model" / "twin.onnx"
    twin.chmod(0o644)
    twin.write_bytes(twin.read_bytes() + b"\0")
    promoted = cli("promote", NAME, "1.1.0", "--env", "staging")
    assert promoted.code == 5 and "content changed" in promoted.err  # caught before the target
    # the target's own check: the server verifies what it loads and refuses, the old one stays
    manifest = open_artifact(home, NAME, "1.0.0").manifest()
    plan = RolloutPlan(NAME, "staging", "1.1.0", manifest.environments["staging"], manifest.slo)
    with pytest.raises(TargetError, match=r"(?s)could not load 1\.1\.0.*1\.0\.0 keeps serving"):
        LocalTarget(home, NAME, "staging").rollout(plan, lambda _: None)
    assert infer(port) == (200, "1.0.0")


@pytest.mark.slow
def test_a_server_that_cannot_start_exits_6_and_is_recorded(
    project: Path, home: Path, cli: Any
) -> None:
    import socket

    port = port_of(project, "staging")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        result = cli("deploy", project, "--env", "staging")
    # refused before starting: a process already listening there would answer the health
    # checks in the new server's place
    assert result.code == 6, result.err
    assert f"cannot start a server on 127.0.0.1:{port}" in result.err
    assert f"by process {os.getpid()}" in result.err
    failed = events(home, "deploy")[-1]
    assert failed["details"]["result"] == "failed"
    row = json.loads(cli("status", NAME, "--json").out)["environments"][0]
    assert row["version"] is None


@pytest.mark.slow
def test_a_canary_that_breaches_rolls_back_by_itself(project: Path, home: Path, cli: Any) -> None:
    import pandas as pd

    not_yet = cli("--actor", "approver@example.com", "approve", NAME, "1.0.0", "-e", "production")
    assert not_yet.code == 2  # nothing packaged yet: nothing to approve
    assert cli("package", project).code == 0
    assert (
        cli("--actor", "approver@example.com", "approve", NAME, "1.0.0", "-e", "production").code
        == 0
    )
    first = cli("deploy", project, "--env", "production")
    assert first.code == 0, first.err
    port = port_of(project, "production")
    # 1.1.0 has never seen region "north" in its reference data: its server refuses those rows
    data = project.parent / "data"
    reference = pd.read_csv(data / "reference.csv")
    reference[reference["region"] != "north"].to_csv(data / "reference-v2.csv", index=False)
    doc = load(project)
    doc["data"]["reference"] = "data/reference-v2.csv"
    # closed by hand: inferred, the input would be open (the pipeline encodes unseen regions)
    closed = {"region": {"categories": ["east", "south", "west"]}}
    doc["signature"] = {"infer": True, "overrides": closed}
    project.write_text(yaml.safe_dump(doc))
    assert cli("package", project).code == 0
    assert (
        cli("--actor", "approver@example.com", "approve", NAME, "1.1.0", "-e", "production").code
        == 0
    )
    client = Client(port)
    client.start()
    result = cli("deploy", project, "--env", "production", "--watch")
    outcomes = client.finish()
    assert result.code == 6, result.err
    assert "breached at 20%" in result.err and "error rate" in result.err
    assert "canary 20%" in result.err  # --watch / progress lines
    assert outcomes[(200, "1.0.0")] > 0  # the canary's 422s are what the breach saw
    failed = events(home, "deploy")[-1]
    assert failed["version"] == "1.1.0" and failed["details"]["result"] == "rolled-back"
    assert failed["details"]["canary"]["canary"]["error_rate"] > 0.5
    row = json.loads(cli("status", NAME, "--json").out)["environments"][0]
    assert row["version"] == "1.0.0" and row["server"]["live"] == "1.0.0"
    assert row["server"]["canary"] is None
    assert infer(port) == (200, "1.0.0")


@pytest.mark.slow
def test_stop_is_recorded_and_name_at_env_resolves(project: Path, home: Path, cli: Any) -> None:
    from cpmai.refs import resolve

    assert cli("deploy", project, "--env", "staging").code == 0
    assert resolve(home, f"{NAME}@staging").version == "1.0.0"
    stopped = cli("stop", NAME, "--env", "staging")
    assert stopped.code == 0 and "stopped" in stopped.out
    assert events(home)[-1]["action"] == "stop"
    row = json.loads(cli("status", NAME, "--json").out)["environments"][0]
    assert row["version"] is None and row["server"]["state"] == "stopped"
    with pytest.raises(Exception, match="no version is recorded as live"):
        resolve(home, f"{NAME}@staging")
    assert cli("stop", NAME, "--env", "staging").out.startswith("nothing was running")


# --- pieces ------------------------------------------------------------------------------------


def test_histogram_quantile_and_canary_verdicts() -> None:
    from cpmai.manifest import Rollout
    from cpmai.serving.metrics import LATENCY_BUCKETS
    from cpmai.targets.canary import Window, judge, quantile

    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    counts[LATENCY_BUCKETS.index(0.001)] = 100  # everything between 0.5 and 1 ms
    assert quantile(counts, 0.5) == pytest.approx(0.75)
    assert quantile(counts, 0.99) == pytest.approx(0.995)
    assert quantile([0] * len(counts), 0.99) is None
    settings = Rollout(strategy="canary", steps=[10, 100], min_requests=20)
    ok = Window(1000, 1, 1.0)
    assert judge(ok, Window(100, 1, 1.1), settings, None) == "ok"
    assert judge(ok, Window(100, 30, 1.0), settings, None).startswith("breach: error rate")
    assert judge(ok, Window(100, 0, 9.0), settings, None).startswith("breach: p99")
    assert judge(ok, Window(100, 0, 9.0), settings, 50.0) == "ok"  # under the SLO: fine
    assert judge(ok, Window(5, 5, 1.0), settings, None).startswith("no verdict")


def test_rollback_target_skips_versions_rolled_back_from() -> None:
    from cpmai.ledger import GENESIS, Event
    from cpmai.replay import replay

    def event(seq: int, action: str, version: str, result: str = "live") -> Event:
        return Event(seq, f"2026-01-0{seq}T00:00:00Z", "a", action, "m", version, "p",
                     {"result": result}, GENESIS, "h")  # fmt: skip

    history = [
        event(1, "deploy", "1.0.0"),
        event(2, "deploy", "1.1.0"),
        event(3, "deploy", "1.2.0"),
        event(4, "rollback", "1.1.0"),  # 1.2.0 was bad
        event(5, "deploy", "1.3.0", result="failed"),  # never live
    ]
    env = replay(history).env("m", "p")
    assert env.live is not None and env.live.version == "1.1.0"
    previous = env.previous_good()
    assert previous is not None and previous.version == "1.0.0"
    past = replay(history, until="2026-01-03T12:00:00Z").env("m", "p")
    assert past.live is not None and past.live.version == "1.2.0"


def test_status_of_nothing(home: Path, cli: Any) -> None:
    result = cli("status")
    assert result.code == 0 and "nothing deployed yet" in result.out


def test_cli_processes_are_real(project: Path, home: Path) -> None:
    """The same commands as a subprocess: exit codes and streams as CI scripts see them."""
    outcome = run_cpmai("deploy", str(project), "--env", "nowhere", env={"CPMAI_HOME": str(home)})
    assert outcome.code == 2 and outcome.out == "" and "no environment 'nowhere'" in outcome.err


@pytest.mark.parametrize("classes", [[0, 1], ["no", "yes"], ["a", "b", "c"]])
def test_gate_metrics_agree_with_scikit_learn(classes: list[Any]) -> None:
    import numpy as np
    from sklearn import metrics as m

    from cpmai.gates import score

    rng = np.random.default_rng(7)
    truth = rng.choice(classes, 500)
    predicted = np.where(rng.random(500) < 0.7, truth, rng.choice(classes, 500))
    raw = rng.random((500, len(classes))).round(2)  # rounded: many tied scores
    probabilities = raw / raw.sum(axis=1, keepdims=True)
    binary = len(classes) == 2
    average: Any = "binary" if binary else "macro"
    kwargs: dict[str, Any] = {"average": average, "zero_division": 0}
    if binary:
        kwargs["pos_label"] = classes[-1]
    expected = {
        "accuracy": m.accuracy_score(truth, predicted),
        "precision": m.precision_score(truth, predicted, **kwargs),
        "recall": m.recall_score(truth, predicted, **kwargs),
        "f1": m.f1_score(truth, predicted, **kwargs),
        "roc_auc": m.roc_auc_score(truth, probabilities[:, -1])
        if binary
        else m.roc_auc_score(truth, probabilities, multi_class="ovr", labels=classes),
        "log_loss": m.log_loss(truth, probabilities, labels=classes),
    }
    for metric, value in expected.items():
        assert score(metric, truth, predicted, probabilities, classes) == pytest.approx(
            value, abs=1e-9
        ), metric


def test_regression_gate_metrics_agree_with_scikit_learn() -> None:
    import numpy as np
    from sklearn import metrics as m

    from cpmai.gates import score

    rng = np.random.default_rng(3)
    truth = rng.normal(10, 3, 400)
    truth[:5] = 0.0  # mape's guard against division by zero
    predicted = truth + rng.normal(0, 1, 400)
    expected = {
        "mae": m.mean_absolute_error(truth, predicted),
        "rmse": m.mean_squared_error(truth, predicted) ** 0.5,
        "r2": m.r2_score(truth, predicted),
        "mape": m.mean_absolute_percentage_error(truth, predicted),
    }
    for metric, value in expected.items():
        assert score(metric, truth, predicted, None, None) == pytest.approx(value, rel=1e-12), (
            metric
        )


@pytest.mark.slow
def test_replicas_run_as_workers_that_switch_together_and_die_with_their_supervisor(
    project: Path, home: Path, cli: Any
) -> None:
    import psutil

    doc = load(project)
    doc["environments"]["staging"]["replicas"] = 2
    project.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert cli("deploy", project, "--env", "staging").code == 0
    status = json.loads(cli("status", NAME, "--json").out)["environments"][0]["server"]
    assert status["state"] == "running" and status["workers"] == 2
    port = port_of(project, "staging")
    clients = [Client(port) for _ in range(4)]
    for client in clients:
        client.start()
    edit(project, description="second version")
    assert cli("deploy", project, "--env", "staging").code == 0
    time.sleep(0.5)
    outcomes: Counter[Any] = Counter()
    for client in clients:
        outcomes += client.finish()
    assert set(outcomes) <= {(200, "1.0.0"), (200, "1.1.0")}, outcomes
    assert outcomes[(200, "1.1.0")] > 0
    time.sleep(1.2)  # workers report their counters once a second
    workers = [
        json.loads(p.read_text()) for p in (home / "runs" / NAME / "staging" / "workers").glob("*")
    ]
    assert len(workers) == 2 and all(w["live"] == "1.1.0" for w in workers)
    assert sum(w["counters"]["1.1.0"]["requests"] for w in workers) > 0
    supervisor = psutil.Process(status["pid"])
    children = supervisor.children(recursive=True)
    supervisor.kill()
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, alive  # no orphan keeps the port
    row = json.loads(cli("status", NAME, "--json").out)["environments"][0]
    assert row["server"]["state"] == "down"


def test_an_unavailable_target_is_refused_before_the_gates(
    project: Path, home: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ray target without the `ray` extra: refused before any gate runs or is recorded."""
    doc = load(project)
    doc["environments"]["staging"] = {"target": "ray"}
    project.write_text(yaml.safe_dump(doc, sort_keys=False))
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails, as when absent
    result = cli("deploy", project, "--env", "staging")
    assert result.code == 2 and "needs Ray Serve, which is not installed" in result.err
    assert "pip install 'cpmai[ray]'" in result.err
    assert not events(home, "gate")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_during_a_canary_puts_traffic_back_and_is_recorded(
    project: Path, home: Path, sig: int
) -> None:
    doc = load(project)
    doc["environments"]["staging"]["rollout"] = {
        "strategy": "canary",
        "steps": [50, 100],
        "window_s": 30,
    }
    project.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = {**os.environ, "CPMAI_HOME": str(home)}
    first = subprocess.run(
        [*CPMAI, "deploy", str(project), "--env", "staging"],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert first.returncode == 0, first.stderr
    edit(project, description="second version")
    proc = subprocess.Popen(
        [*CPMAI, "deploy", str(project), "--env", "staging"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal delivers it, even when this suite runs as a background job
        # (whose shell made it ignore SIGINT, which children would inherit)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:  # wait until the canary step is under way
        lines.append(line)
        if "canary 50% of traffic" in line:
            break
    routes = json.loads((home / "runs" / NAME / "staging" / "routes.json").read_text())
    assert routes["canary"] == "1.1.0" and routes["weight"] == 0.5
    proc.send_signal(sig)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(lines) + rest
    routes = json.loads((home / "runs" / NAME / "staging" / "routes.json").read_text())
    assert routes["live"] == "1.0.0" and routes["canary"] is None
    last = events(home)[-1]
    assert (last["action"], last["version"], last["details"]["result"]) == (
        "deploy",
        "1.1.0",
        "interrupted",
    )
    assert infer(port_of(project, "staging")) == (200, "1.0.0")


JUNK_RECORDS = [
    None,
    {},
    {"pid": -3, "created": 1.0, "host": "127.0.0.1", "port": 8080},
    {"pid": 1e999, "created": 1.0, "host": "127.0.0.1", "port": 8080},
    {"pid": 10**30, "created": 1.0, "host": "127.0.0.1", "port": 8080},
    {"pid": 12, "created": float("nan"), "host": "127.0.0.1", "port": 8080},
    {"pid": 12, "created": 1.0, "host": 7, "port": 8080},
    {"pid": 12, "created": 1.0, "host": "127.0.0.1", "port": 70000},
    {"pid": True, "created": 1.0, "host": "127.0.0.1", "port": 8080},
]
JUNK_ROUTES = [
    {"seq": 1e999, "live": "1.0.0"},
    {"seq": -1, "live": "1.0.0"},
    {"seq": 2, "live": 3},
    {"seq": 2, "live": "1.0.0", "keep": "1.0.0"},
    {"seq": 2, "live": "1.0.0", "keep": None},
    {"seq": 2, "live": "1.0.0", "canary": "1.1.0", "weight": float("nan")},
    {"seq": 2, "live": "1.0.0", "canary": "1.1.0", "weight": 7},
]


def test_damaged_run_state_reads_as_absent_never_as_a_crash(tmp_path: Path) -> None:
    """run.json, routes.json and workers/PID.json edited by hand or cut short: each record
    reads as absent (the caller says so), never as a traceback; and the next route table is
    numbered past what the workers applied, so they do not ignore it as old."""
    import os

    from cpmai.serving.metrics import LATENCY_BUCKETS
    from cpmai.serving.runstate import RouteTable, RunFiles, ServerRecord, WorkerStatus
    from cpmai.targets.local import LocalTarget

    for junk in JUNK_RECORDS:
        assert ServerRecord.of(junk) is None, junk
    for junk in JUNK_ROUTES:
        assert RouteTable.of(junk) is None, junk
    good = {"requests": 3, "errors": 0, "buckets": [0] * (len(LATENCY_BUCKETS) + 1)}
    status = {"pid": os.getpid(), "time": 1.0, "seq": 7, "failed_seq": 0, "live": "1.0.0",
              "counters": {"1.0.0": good}}  # fmt: skip
    assert WorkerStatus.of(status) is not None
    for bad in ({**good, "buckets": "0000"}, {**good, "buckets": [0, 1]}, {**good, "errors": -1}):
        assert WorkerStatus.of({**status, "counters": {"1.0.0": bad}}) is None, bad
    assert WorkerStatus.of({**status, "live": 1}) is None

    files = RunFiles.of(tmp_path, NAME, "staging")
    files.write_status(WorkerStatus.of(status))  # type: ignore[arg-type]
    files.routes.write_text('{"seq": 7, "live": "1.0.0", "keep": nul')  # cut short
    target = LocalTarget(tmp_path, NAME, "staging")
    assert target._route(live="1.1.0", keep=[]) == 8
    assert RouteTable.of(json.loads(files.routes.read_text())) == RouteTable(8, "1.1.0")
    files.run.write_text('{"pid": -3, "created": 1, "host": "127.0.0.1", "port": 8080}')
    assert target.status().state == "stopped"
