"""Targets beyond the local server: docker / kubernetes / kserve render a build context and
manifests; edge writes a bundle that runs with numpy and onnxruntime alone."""

from __future__ import annotations

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
import yaml
from cost_fixture import edit

from conftest import FEATURES, run_cpmai
from serving_helpers import free_port

NAME = "churn-classifier"
GOLDEN = Path(__file__).parent / "golden" / "render"
UPDATE = os.environ.get("CPMAI_UPDATE_GOLDEN") == "1"
ENVIRONMENTS = {
    "docker": {"target": "docker", "image": "registry.example.com/ml/churn-classifier"},
    "k8s": {
        "target": "kubernetes",
        "replicas": 3,
        "max_replicas": 6,
        "resources": {"cpu": 0.5, "memory_gb": 1.5},
        "namespace": "ml",
    },
    "kserve": {
        "target": "kserve",
        "namespace": "ml",
        "rollout": {"strategy": "canary", "steps": [10, 50, 100]},
    },
    "edge": {"target": "edge"},
}


@pytest.fixture
def targets(churn: Path) -> Path:
    def change(doc: dict[str, Any]) -> None:
        doc["environments"] = ENVIRONMENTS
        doc["gates"] = {"metrics": {"accuracy": ">= 0.7"}}

    edit(churn, change)
    return churn


def _golden(name: str, text: str) -> None:
    import re

    text = re.sub(r"sha256:[0-9a-f]{64}", "sha256:<digest>", text)
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run with CPMAI_UPDATE_GOLDEN=1 to write it"
    assert text == path.read_text(), f"{name} differs from its golden file"


def _ledger(home: Path, action: str) -> list[dict[str, Any]]:
    lines = (home / "ledger.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["action"] == action]


def test_render_targets_follow_the_manifest(targets: Path, home: Path, cli: Any) -> None:
    renders = home / "renders" / NAME
    for env in ("docker", "k8s", "kserve"):
        result = cli("deploy", targets, "--env", env)
        assert result.code == 0, result.err
        assert "rendered" in result.out and "apply with:" in result.err
    docker = (renders / "docker" / "Dockerfile").read_text()
    assert 'CMD ["python", "-m", "cpmai", "serve", "churn-classifier@1.0.0"' in docker
    record = json.loads((renders / "docker" / "render.json").read_text())
    assert record["image"] == "registry.example.com/ml/churn-classifier:1.0.0"
    assert record["command"].startswith(
        f"docker build -t registry.example.com/ml/churn-classifier:1.0.0 {renders / 'docker'}"
    )
    pins = (renders / "docker" / "requirements.txt").read_text().splitlines()
    environment = json.loads((home / "artifacts" / NAME / "1.0.0" / "environment.json").read_text())
    for package, version in environment["packages"].items():
        assert f"{package}=={version}" in pins
    assert all("==" in pin for pin in pins)

    deployment, service, autoscaler = yaml.safe_load_all(
        (renders / "k8s" / "kubernetes.yaml").read_text()
    )
    assert (deployment["kind"], service["kind"], autoscaler["kind"]) == (
        "Deployment", "Service", "HorizontalPodAutoscaler"
    )  # fmt: skip
    assert deployment["metadata"]["namespace"] == "ml" and "replicas" not in deployment["spec"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "churn-classifier:1.0.0"
    assert container["resources"]["requests"] == {"cpu": "500m", "memory": "1536Mi"}
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "1536Mi"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert (autoscaler["spec"]["minReplicas"], autoscaler["spec"]["maxReplicas"]) == (3, 6)

    service_doc = yaml.safe_load((renders / "kserve" / "kserve.yaml").read_text())
    assert service_doc["kind"] == "InferenceService"
    assert service_doc["metadata"]["annotations"]["serving.kserve.io/protocol-version"] == "v2"
    assert "canaryTrafficPercent" not in service_doc["spec"]["predictor"]  # nothing to share with
    _golden("Dockerfile", (renders / "k8s" / "Dockerfile").read_text())
    _golden("kubernetes.yaml", (renders / "k8s" / "kubernetes.yaml").read_text())

    # a second version goes to kserve as a canary of the rollout's first step; rollback re-renders
    edit(targets, lambda doc: doc.update(description="Retrained."))
    assert cli("deploy", targets, "--env", "kserve").code == 0
    canary = yaml.safe_load((renders / "kserve" / "kserve.yaml").read_text())
    assert canary["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert canary["metadata"]["labels"]["app.kubernetes.io/version"] == "1.1.0"
    _golden("kserve.yaml", (renders / "kserve" / "kserve.yaml").read_text())
    back = cli("rollback", NAME, "--env", "kserve")
    assert back.code == 0, back.err
    rolled = yaml.safe_load((renders / "kserve" / "kserve.yaml").read_text())
    assert rolled["metadata"]["labels"]["app.kubernetes.io/version"] == "1.0.0"
    assert "canaryTrafficPercent" not in rolled["spec"]["predictor"]  # a rollback switches at once

    status = {r["env"]: r for r in json.loads(cli("--json", "status", NAME).out)["environments"]}
    assert (
        status["kserve"]["version"] == "1.0.0" and status["kserve"]["server"]["state"] == "rendered"
    )
    assert status["k8s"]["server"]["live"] == "1.0.0"
    assert cli("stop", NAME, "--env", "k8s").code == 0
    stopped = json.loads(cli("--json", "status", NAME).out)["environments"]
    k8s = next(r for r in stopped if r["env"] == "k8s")
    assert k8s["version"] is None and k8s["server"]["state"] == "stopped"
    assert "kubectl delete -f" in k8s["server"]["detail"]
    deploys = [e for e in _ledger(home, "deploy") if e["env"] in ("docker", "k8s", "kserve")]
    assert {e["details"]["target"] for e in deploys} == {"docker", "kubernetes", "kserve"}
    assert all(e["details"]["result"] == "live" for e in deploys)
    assert [e["env"] for e in _ledger(home, "stop")] == ["k8s"]
    assert [e["version"] for e in _ledger(home, "rollback")] == ["1.0.0"]
    assert cli("ledger", "verify").code == 0


def _get(url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _wait(url: str, proc: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            if _get(url)[0] == 200:
                return
        except (OSError, ValueError):
            time.sleep(0.2)
    raise AssertionError(f"{url} never answered")


def _holdout(manifest: Path) -> pd.DataFrame:
    return pd.read_csv(manifest.parent / "data" / "holdout.csv")


def _expected(manifest: Path, frame: pd.DataFrame) -> tuple[list[Any], Any]:
    import joblib

    model = joblib.load(manifest.parent / "model.joblib")
    return model.predict(frame[FEATURES]).tolist(), model.predict_proba(frame[FEATURES])


@pytest.mark.slow
def test_the_rendered_build_context_serves_as_its_image_would(targets: Path, home: Path) -> None:
    """What the Dockerfile's CMD runs, with the context's own code and state (no engine here to
    build the image): a real server answering with the model's own predictions."""
    assert run_cpmai("deploy", targets, "--env", "k8s").code == 0
    context = home / "renders" / NAME / "k8s"
    port = free_port()
    env = {**os.environ, "CPMAI_HOME": str(context / "state"), "PYTHONPATH": str(context / "lib")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpmai", "serve", "churn-classifier@1.0.0", "--port", str(port),
         "--env", "k8s"], env=env, cwd=context, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _wait(f"http://127.0.0.1:{port}/v2/health/ready", proc)
        frame = _holdout(targets).head(50)
        records = json.loads(frame[FEATURES].to_json(orient="records"))
        status, reply = _get(f"http://127.0.0.1:{port}/invocations", {"dataframe_records": records})
        assert status == 200
        assert reply["predictions"] == _expected(targets, frame)[0]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    code = subprocess.run(
        [sys.executable, "-c", "import cpmai; print(cpmai.__file__)"], env=env, cwd="/",
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert code.startswith(str(context / "lib")), "the server did not run the context's own code"


@pytest.mark.slow
def test_edge_bundle_runs_with_numpy_and_onnxruntime_alone(
    targets: Path, home: Path, tmp_path: Path
) -> None:
    assert run_cpmai("deploy", targets, "--env", "edge").code == 0
    bundle = home / "renders" / NAME / "edge"
    assert sorted(p.name for p in bundle.iterdir()) == [
        "README.md", "bundle.json", "model.onnx", "requirements.txt", "runner.py", "signature.json"
    ]  # fmt: skip
    pins = (bundle / "requirements.txt").read_text().split()
    assert [p.split("==")[0] for p in pins] == ["numpy", "onnxruntime"]
    venv = tmp_path / "device"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-r", str(bundle / "requirements.txt")], check=True, timeout=600)  # fmt: skip
    for absent in ("sklearn", "pandas", "cpmai", "joblib"):
        probe = subprocess.run([python, "-c", f"import {absent}"], cwd=tmp_path,
                               capture_output=True, check=False)  # fmt: skip
        assert probe.returncode != 0, f"{absent} is importable in the device's venv"

    frame = _holdout(targets)
    source = tmp_path / "holdout.csv"
    frame.to_csv(source, index=False)
    scored = tmp_path / "scored.csv"
    run = subprocess.run(
        [python, "runner.py", "score", str(source), "--output", str(scored), "--probabilities"],
        cwd=bundle, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    labels, probabilities = _expected(targets, frame)
    result = pd.read_csv(scored)
    assert len(result) == len(frame) > 500
    assert result["prediction"].tolist() == labels
    got = result[["probability_0", "probability_1"]].to_numpy()
    assert abs(got - probabilities).max() < 1e-5

    port = free_port()
    proc = subprocess.Popen([python, "runner.py", "serve", "--port", str(port)], cwd=bundle,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        _wait(f"http://127.0.0.1:{port}/ping", proc)
        records = json.loads(frame[FEATURES].head(20).to_json(orient="records"))
        status, reply = _get(f"http://127.0.0.1:{port}/invocations", {"dataframe_records": records})
        assert status == 200 and reply["predictions"] == labels[:20]
        records[3]["region"] = "mars"
        status, reply = _get(f"http://127.0.0.1:{port}/invocations", {"dataframe_records": records})
        assert status == 400 and "unknown category 'mars'" in reply["error"]
        status, reply = _get(f"http://127.0.0.1:{port}/invocations", {"rows": 1})
        assert status == 400
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    bad = tmp_path / "bad.csv"
    frame.drop(columns=["plan"]).head(3).to_csv(bad, index=False)
    missing = subprocess.run([python, "runner.py", "score", str(bad)], cwd=bundle,
                             capture_output=True, text=True, check=False)  # fmt: skip
    assert missing.returncode == 2 and "input 'plan' is missing" in missing.stderr


def test_a_model_without_an_onnx_twin_cannot_go_to_the_edge(
    targets: Path, home: Path, cli: Any
) -> None:
    edit(targets, lambda doc: doc["model"].update(runtime="sklearn"))
    result = cli("deploy", targets, "--env", "edge")
    assert result.code == 6, result.err
    assert "has no ONNX twin it runs on, so it cannot run on the edge" in result.err
    assert not (home / "renders" / NAME / "edge").exists()
    failed = [e for e in _ledger(home, "deploy") if e["env"] == "edge"]
    assert [e["details"]["result"] for e in failed] == ["failed"]


def test_the_edge_ships_only_a_twin_the_artifact_runs() -> None:
    """A twin that disagreed with the model at packaging, or was never checked against data,
    is kept in the artifact (as evidence) but must not become the device's model."""
    from cpmai.errors import TargetError
    from cpmai.targets.edge import edge_model

    chosen = {"runtime": "onnx", "onnx_model": "model/twin.onnx", "reason": "agrees"}
    assert edge_model(chosen, "m 1.0.0") == "model/twin.onnx"
    for reason in ("the ONNX twin disagrees: labels 97.0% equal", "no reference/holdout data"):
        kept = {"runtime": "sklearn", "onnx_model": "model/twin.onnx", "reason": reason}
        with pytest.raises(TargetError, match="cannot run on the edge") as info:
            edge_model(kept, "m 1.0.0")
        assert reason in info.value.message
