"""Deploy performance on the local target: time to healthy, and how fast a rollback switches.

    python benchmarks/deploy.py [--runs 5]

What it does, with the churn example in a temporary state folder and the `cpmai` CLI as a user
runs it (each command a fresh process):
1. cold: the first `cpmai deploy --env staging` (builds the artifact, runs the gates, starts the
   server) — once, for context;
2. warm deploy to healthy: `cpmai stop`, then `cpmai deploy` of the same sources (the artifact is
   reused, the gates run again, a server starts) — `--runs` times, median; plus the same deploy
   while the server runs (the identical version stays live);
3. a second version deployed in place (loaded beside the live one, then switched);
4. rollback: `cpmai rollback --to V` back and forth `--runs` times while a client sends
   requests back to back; measured are the command's wall time and the switch itself as the
   client sees it: from the command's start to the first answer from the other version. Failed
   requests are counted (the target is zero).

Targets (issue #4): warm deploy to healthy under 5 s; rollback switch under 1 s. Exits 4 when
missed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _report import (  # benchmarks/ is on sys.path when run as a script
    fingerprint,
    free_port,
    verdicts,
)

ROOT = Path(__file__).resolve().parent.parent
NAME = "churn-classifier"


def cpmai(*args: str, env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "cpmai", "--json", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"cpmai {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return seconds, json.loads(proc.stdout)


class Watcher(threading.Thread):
    """Sends single-row OIP requests back to back; notes when each version first answers."""

    def __init__(self, port: int, row: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.body = json.dumps(
            {
                "inputs": [
                    {
                        "name": k,
                        "shape": [1, 1],
                        "datatype": "BYTES" if isinstance(v, str) else "FP64",
                        "data": [v],
                    }
                    for k, v in row.items()
                ]
            }
        )
        self.version: str | None = None
        self.changed_at: float = 0.0
        self.ok = 0
        self.failed = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        deadline = time.monotonic() + 600
        while not self.stopping.is_set() and time.monotonic() < deadline:
            try:
                conn.request("POST", f"/v2/models/{NAME}/infer", self.body)
                reply = conn.getresponse()
                data = json.loads(reply.read())
                if reply.status != 200:
                    self.failed += 1
                    continue
                self.ok += 1
                if data["model_version"] != self.version:
                    self.version = data["model_version"]
                    self.changed_at = time.perf_counter()
            except (OSError, http.client.HTTPException, ValueError):
                self.failed += 1
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cpmai-bench-deploy-"))
    home = work / "state"
    env = {**os.environ, "CPMAI_HOME": str(home), "CPMAI_ACTOR": "bench@example.com"}
    try:
        for item in ("cpmai.yaml", "train.py"):
            shutil.copy(ROOT / "examples" / "churn" / item, work / item)
        subprocess.run([sys.executable, "train.py"], cwd=work, check=True, capture_output=True)
        port = free_port()
        manifest = work / "cpmai.yaml"
        text = manifest.read_text().replace("port: 8081", f"port: {port}")
        manifest.write_text(text)
        row = dict(
            zip(
                (work / "data" / "reference.csv").read_text().splitlines()[0].split(","),
                (work / "data" / "reference.csv").read_text().splitlines()[1].split(","),
                strict=True,
            )
        )
        row.pop("churned")
        typed: dict[str, Any] = {
            k: (float(v) if v.replace(".", "", 1).isdigit() else v) for k, v in row.items()
        }

        cold, _ = cpmai("deploy", str(manifest), "--env", "staging", env=env)
        warm_start, gate_seconds = [], []
        for _ in range(args.runs):
            cpmai("stop", NAME, "--env", "staging", env=env)
            seconds, doc = cpmai("deploy", str(manifest), "--env", "staging", env=env)
            warm_start.append(seconds)
            gate_seconds.append(doc["gates"]["seconds"])
        running, _ = cpmai("deploy", str(manifest), "--env", "staging", env=env)
        manifest.write_text(text.replace("Predicts which", "Predicts (v2) which"))
        in_place, doc = cpmai("deploy", str(manifest), "--env", "staging", env=env)
        assert doc["version"] == "1.1.0", doc

        watcher = Watcher(port, typed)
        watcher.start()
        time.sleep(1.0)
        command, switch = [], []
        for i in range(args.runs):
            before = watcher.version
            start = time.perf_counter()
            to = ("1.0.0", "1.1.0")[
                i % 2
            ]  # back and forth: a plain rollback skips versions rolled back from
            seconds, doc = cpmai("rollback", NAME, "--env", "staging", "--to", to, env=env)
            command.append(seconds)
            deadline = time.monotonic() + 10
            while watcher.version == before and time.monotonic() < deadline:
                time.sleep(0.001)
            switch.append(watcher.changed_at - start)
            time.sleep(0.3)
        watcher.stopping.set()
        watcher.join(10)
        cpmai("stop", NAME, "--env", "staging", env=env)
    finally:
        subprocess.run(
            [sys.executable, "-m", "cpmai", "stop", NAME, "--env", "staging"],
            env=env,
            capture_output=True,
            check=False,
        )
        shutil.rmtree(work, ignore_errors=True)

    median = statistics.median
    print(f"machine: {fingerprint()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"runs: {args.runs} (medians); every figure is a whole `cpmai` process as a user runs it")
    print()
    print("| measurement | seconds |")
    print("| --- | --- |")
    print(f"| cold deploy (build artifact + gates + start) | {cold:.2f} |")
    print(f"| warm deploy to healthy (artifact reused, gates, start) | {median(warm_start):.2f} |")
    print(f"|   of which gates (metrics + latency benchmark) | {median(gate_seconds):.2f} |")
    print(f"| deploy of the live version again (server running) | {running:.2f} |")
    print(f"| deploy of a new version in place (build + gates + switch) | {in_place:.2f} |")
    print(f"| `cpmai rollback` command, wall time | {median(command):.2f} |")
    print(f"| rollback switch as a client sees it | {median(switch):.3f} |")
    print(f"| requests during the rollbacks: ok / failed | {watcher.ok} / {watcher.failed} |")
    print()
    return verdicts(
        [
            (
                "warm deploy to healthy",
                f"{median(warm_start):.2f} s",
                "< 5 s",
                median(warm_start) < 5,
            ),
            (
                "rollback switch (client view)",
                f"{median(switch):.3f} s",
                "< 1 s",
                median(switch) < 1,
            ),
            ("failed requests during rollbacks", str(watcher.failed), "0", watcher.failed == 0),
        ],
        ("target", "measured", "wanted"),
    )


if __name__ == "__main__":
    sys.exit(main())
