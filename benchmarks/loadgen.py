"""Is `cpmai bench --url` a load generator CI can trust? Side by side with wrk, in one run.

    python benchmarks/loadgen.py [--duration 5] [--rounds 3]

1. Starts two fast endpoints, one at a time: a trivial ASGI handler on uvicorn (reads the body,
   answers a constant) and `cpmai serve` of the churn example's logistic regression.
2. Against each, at concurrency 8 and 64, alternates wrk (Debian's package; `-t2`) and
   `cpmai bench --url` (1 and 2 `--workers`) for `--rounds` rounds, and takes medians.
3. Measures the in-process timing overhead per call (`cpmai.bench.inprocess.timing_overhead_ns`).

Targets (issue #6): cpmai bench reaches >= 80% of wrk's requests/s at the same concurrency (with
the better of 1 or 2 workers); timing overhead < 2 µs per call. Exits 4 when missed. Both load
generators share the 2 cores with the server, so the ratio, not the absolute rate, is the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import (  # benchmarks/ is on sys.path when run as a script
    ensure_wrk,
    fingerprint,
    free_port,
    verdicts,
)

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
TRIVIAL = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"19")]})
    await send({"type": "http.response.body", "body": b'{"predictions":[0]}'})
"""


def wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("server did not start")


def run_wrk(wrk: str, url: str, body: str, connections: int, duration: float) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(body)}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
    out = subprocess.run(
        [wrk, "-t2", f"-c{connections}", f"-d{duration:g}s", "-s", script.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    Path(script.name).unlink()
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match, out
    return float(match.group(1))


def run_cpmai(url: str, rows: Path, connections: int, duration: float, workers: int) -> float:
    out = subprocess.run(
        [
            PY,
            "-m",
            "cpmai",
            "bench",
            "--url",
            url,
            "--input",
            str(rows),
            "--concurrency",
            str(connections),
            "--duration",
            str(duration),
            "--warmup",
            "1",
            "--workers",
            str(workers),
            "--no-save",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    level = json.loads(out)["levels"][0]
    assert not level["errors"], level["errors"]
    return float(level["throughput_rps"])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="cpmai-bench-loadgen-"))
    home = work / "state"
    env = {**os.environ, "CPMAI_HOME": str(home)}
    try:
        for item in ("cpmai.yaml", "train.py"):
            shutil.copy(ROOT / "examples" / "churn" / item, work / item)
        subprocess.run([PY, "train.py"], cwd=work, check=True, capture_output=True)
        subprocess.run(
            [PY, "-m", "cpmai", "package", "cpmai.yaml"],
            cwd=work,
            env=env,
            check=True,
            capture_output=True,
        )
        header = (work / "data" / "reference.csv").read_text().splitlines()[:2]
        names, values = header[0].split(","), header[1].split(",")
        row = {
            n: (float(v) if v.replace(".", "", 1).isdigit() else v)
            for n, v in zip(names, values, strict=True)
            if n != "churned"
        }
        rows = work / "row.csv"
        rows.write_text(",".join(row) + "\n" + ",".join(str(v) for v in row.values()) + "\n")
        body = json.dumps({"dataframe_split": {"columns": list(row), "data": [list(row.values())]}})
        (work / "trivial.py").write_text(TRIVIAL)
        servers = {
            "trivial ASGI handler": lambda port: [
                PY,
                "-m",
                "uvicorn",
                "trivial:app",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
                "--loop",
                "uvloop",
                "--http",
                "httptools",
            ],
            "cpmai serve (logreg)": lambda port: [
                PY,
                "-m",
                "cpmai",
                "serve",
                "churn-classifier",
                "--port",
                str(port),
                "--no-log",
            ],
        }
        table = []
        for label, command in servers.items():
            port = free_port()
            proc = subprocess.Popen(command(port), cwd=work, env=env)
            try:
                wait_ready(port, proc)
                time.sleep(1.0)
                url = f"http://127.0.0.1:{port}/invocations"
                for connections in (8, 64):
                    wrk_runs, one, two = [], [], []
                    for _ in range(args.rounds):
                        wrk_runs.append(run_wrk(wrk, url, body, connections, args.duration))
                        one.append(run_cpmai(url, rows, connections, args.duration, 1))
                        two.append(run_cpmai(url, rows, connections, args.duration, 2))
                    table.append(
                        (
                            label,
                            connections,
                            statistics.median(wrk_runs),
                            statistics.median(one),
                            statistics.median(two),
                        )
                    )
            finally:
                proc.terminate()
                proc.wait(30)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    from cpmai.bench.inprocess import timing_overhead_ns

    overhead = timing_overhead_ns()
    print(f"machine: {fingerprint()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(
        f"load: single-row JSON POST, {args.duration:g} s per run, {args.rounds} interleaved "
        "rounds, medians; wrk -t2"
    )
    print()
    print("| endpoint | concurrency | wrk req/s | cpmai bench, 1 worker | 2 workers | best/wrk |")
    print("| --- | --- | --- | --- | --- | --- |")
    rows_out = []
    for label, connections, w, one_w, two_w in table:
        best = max(one_w, two_w)
        print(
            f"| {label} | {connections} | {w:,.0f} | {one_w:,.0f} | {two_w:,.0f} | {best / w:.0%} |"
        )
        rows_out.append(
            (
                f"{label}, c={connections}: cpmai bench / wrk",
                f"{best / w:.0%}",
                ">= 80%",
                best / w >= 0.8,
            )
        )
    print()
    print(f"in-process timing overhead per call: {overhead:.0f} ns")
    print()
    rows_out.append(
        ("timing overhead per call", f"{overhead:.0f} ns", "< 2000 ns", overhead < 2000)
    )
    return verdicts(rows_out, ("target", "measured", "wanted"))


if __name__ == "__main__":
    sys.exit(main())
