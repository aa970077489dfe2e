"""The ray target against the local target on the same machine, in one run (issue 5).

    python benchmarks/ray.py [--duration 5] [--keep DIR]

Trains the churn example into a scratch folder, then for each environment in turn — local with
1 and 2 replicas (uvicorn workers), ray with 1 and 2 replicas (1 CPU each, a local cluster
started by cpmai) — deploys it with `cpmai deploy`, measures it with `cpmai bench --url`
(closed loop, one-row MLflow requests, concurrency 8 and 64, `--duration` s each after 1 s of
warm-up), records the memory of what serves (the server's process tree, or every process of the
Ray cluster), and stops it. One environment runs at a time; the load generator shares the 2
cores with the server, as in every serving figure here. Prints a table; exits 0 (it compares,
it sets no target).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import fingerprint  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
CPMAI = [sys.executable, "-m", "cpmai"]
ENVIRONMENTS = {
    "local-1": {"target": "local", "replicas": 1},
    "local-2": {"target": "local", "replicas": 2},
    "ray-1": {"target": "ray", "replicas": 1, "resources": {"cpu": 1, "memory_gb": 1}},
    "ray-2": {"target": "ray", "replicas": 2, "resources": {"cpu": 1, "memory_gb": 1}},
}


def project(folder: Path) -> Path:
    import yaml

    shutil.copytree(ROOT / "examples" / "churn", folder, ignore=shutil.ignore_patterns(".cpmai"))
    subprocess.run([sys.executable, "train.py"], cwd=folder, check=True, capture_output=True)
    manifest = folder / "cpmai.yaml"
    doc = yaml.safe_load(manifest.read_text())
    triggers = doc["monitoring"]["triggers"]
    triggers["on"] = triggers.pop(True)  # PyYAML reads `on:` as True (YAML 1.1)
    doc["gates"] = {"metrics": {"accuracy": ">= 0.7"}}
    doc["environments"] = ENVIRONMENTS
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return manifest


def serving_memory(home: Path, env: str) -> float:
    """MiB of RSS of what serves `env`: the local server's tree, or the Ray cluster's processes."""
    import psutil

    from cpmai.targets.ray_cluster import cluster_processes

    run = home / "runs" / "churn-classifier" / env
    if (run / "ray.json").exists():
        procs = cluster_processes(json.loads((run / "ray.json").read_text())["gcs_port"])
    else:
        root = psutil.Process(json.loads((run / "run.json").read_text())["pid"])
        procs = [root, *root.children(recursive=True)]
    total = 0
    for proc in {p.pid: p for p in procs}.values():
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--keep", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        home = folder / "state"
        env = {**os.environ, "CPMAI_HOME": str(home)}
        manifest = project(folder / "churn")
        for name in ENVIRONMENTS:
            began = time.perf_counter()
            deployed = subprocess.run(
                [*CPMAI, "--json", "deploy", str(manifest), "--env", name],
                env=env, capture_output=True, text=True, timeout=900,
            )  # fmt: skip
            if deployed.returncode != 0:
                sys.exit(f"deploy {name} failed: {deployed.stderr[-2000:]}")
            deploy_s = time.perf_counter() - began
            url = json.loads(deployed.stdout)["url"]
            try:
                memory = serving_memory(home, name)
                bench = subprocess.run(
                    [*CPMAI, "--json", "bench", f"churn-classifier@{name}", "--url", url,
                     "--concurrency", "8,64", "--duration", str(args.duration), "--warmup", "1",
                     "--no-save"], env=env, capture_output=True, text=True, timeout=900,
                )  # fmt: skip
                if bench.returncode not in (0, 4):
                    sys.exit(f"bench {name} failed: {bench.stderr[-2000:]}")
                try:
                    result = json.loads(bench.stdout)
                except ValueError:
                    kept = folder / f"bench-{name}.stdout"
                    kept.write_text(bench.stdout)
                    sys.exit(f"bench {name}: stdout is not one JSON document ({kept})")
                for level in result["levels"]:
                    rows.append((name, level["label"], level["throughput_rps"],
                                 level["latency_ms"]["p50_ms"], level["latency_ms"]["p99_ms"],
                                 level["error_rate"], deploy_s, memory))  # fmt: skip
            finally:
                subprocess.run([*CPMAI, "stop", "churn-classifier", "--env", name], env=env,
                               capture_output=True, timeout=300, check=False)  # fmt: skip
    print(f"machine: {fingerprint()}")
    print("| environment | level | req/s | p50 ms | p99 ms | errors | deploy s | memory MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, label, rps, p50, p99, errors, deploy_s, memory in rows:
        print(f"| {name} | {label} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {errors:.2%} | "
              f"{deploy_s:.1f} | {memory:,.0f} |")  # fmt: skip
    local = {(n, lv): r for n, lv, r, *_ in rows if n.startswith("local")}
    for name, label, rps, *_ in rows:
        if name.startswith("ray"):
            base = local.get((name.replace("ray", "local"), label))
            if base:
                print(f"{name} {label}: {rps / base:.0%} of local with as many replicas")
    return 0


if __name__ == "__main__":
    sys.exit(main())
