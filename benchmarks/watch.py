"""What watching costs: a scheduled check, and the server's throughput beside a watcher.

    python benchmarks/watch.py [--rows 1000000] [--new 10000] [--runs 5] [--seconds 10]
                               [--keep DIR] [--only check|throughput]

1. A check over new rows on a big day. The `wide` project of benchmarks/monitor.py (30
   features) with `--rows` one-row requests logged over the last 24 hours by the server's own
   writer (index included). A `deploy` event is appended to the throwaway state's ledger so
   the version counts as live (no server runs: the check reads the log, not the server), and
   the watcher is told it went live two days ago (so the window is the day's last hour, not
   only what was logged since the event). A
   `Watcher` makes its first check (it reads the day's index once), then `--runs` times:
   `--new` more requests are logged (the newest second of traffic), and one check is timed —
   what the watcher process does every `monitoring.schedule.every`, window 1 h.
2. Throughput beside the watcher. The churn example deployed with `cpmai deploy` (one worker,
   `monitoring.schedule: {every: 5s, window: 1h}`); wrk (Debian's, `-t2 -c8`) posts one-row
   JSON to /invocations for `--seconds`, alternately with the watcher stopped and running
   (`--runs` times each, stopped first), so both see the same machine. The wrk traffic is
   not marked synthetic: the watcher judges all of it (the worst case).

Targets (issue #24): a check ≤ 0.3 s (median); the watcher costs ≤ 2% of the requests/s
(median with against median without). Exits 4 when one is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _report import (  # benchmarks/ is on sys.path when run as a script
    ROW,
    ensure_wrk,
    fingerprint,
    free_port,
    post_script,
    run_wrk,
    verdicts,
    wait_ready,
)
from monitor import NUMERIC, prepare

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def append_rows(home: Path, rows: int) -> None:
    """`rows` more one-row requests in the newest second, through the server's writer."""
    import numpy as np

    from cpmai.home import Home
    from cpmai.predlog.writer import PredictionLog
    from cpmai.runtime.signature import Signature

    folder = Home(home).env("wide", "production").logs
    signature = Signature.load(next(home.glob("artifacts/wide/*/")))
    log = PredictionLog(folder, model="wide", version="1.0.0", signature=signature)
    rng = np.random.default_rng(int(time.time()))
    numbers = rng.normal(0, 1, (NUMERIC, rows)).round(4)
    start = time.time() - 1.0
    moment = [start]
    log._clock = lambda: moment[0]  # type: ignore[method-assign]
    for j in range(rows):
        moment[0] = start + j / rows
        inputs: dict[str, list[Any]] = {f"n{i}": [float(numbers[i, j])] for i in range(NUMERIC)}
        inputs.update({f"c{i}": ["alpha"] for i in range(10)})
        log.record("infer", 200, 0.001, 1, inputs, [j % 2])
    log.close()


def check_cost(folder: Path, rows: int, new: int, runs: int) -> tuple[list[float], float]:
    """(timed checks' seconds, the first check's seconds)."""
    from cpmai.ledger import Ledger
    from cpmai.watch.watcher import Live, Watcher

    home, _ = prepare(folder, rows)
    ledger = Ledger(home)
    if not any(e.action == "deploy" for e in ledger.events("wide")):
        ledger.append("deploy", actor="benchmark", name="wide", version="1.0.0",
                      env="production", details={"result": "live", "target": "local"})  # fmt: skip
    shutil.rmtree(home / "watch", ignore_errors=True)
    watcher = Watcher(home, "wide", "production")
    live = watcher.live

    def live_for_days() -> Live | None:
        found = live()  # the event above is recent: the version counts as live since before
        return None if found is None else Live(found.version, time.time() - 2 * 86400,
                                               found.manifest)  # fmt: skip

    watcher.live = live_for_days  # type: ignore[method-assign]
    began = time.perf_counter()
    watcher.check()
    first = time.perf_counter() - began
    timed = []
    for _ in range(runs):
        append_rows(home, new)
        began = time.perf_counter()
        record = watcher.check()
        timed.append(time.perf_counter() - began)
        print(f"  check: {timed[-1]:.3f} s, {record.requests:,} requests in the window, "
              f"findings {[f['kind'] for f in record.findings]}")  # fmt: skip
    return timed, first


def throughput(seconds: float, runs: int) -> tuple[list[float], list[float], int]:
    """(requests/s without the watcher, with it, checks made during the runs with it)."""
    from cpmai.home import Home
    from cpmai.watch.process import ensure_watcher, stop_watcher

    wrk = ensure_wrk()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for item in ("cpmai.yaml", "train.py"):
            shutil.copy(ROOT / "examples" / "churn" / item, work / item)
        subprocess.run([PY, "train.py"], cwd=work, check=True, capture_output=True)
        port = free_port()
        text = (work / "cpmai.yaml").read_text()
        text = text.replace("  staging: {target: local, port: 8081}",
                            f"  staging: {{target: local, port: {port}}}")  # fmt: skip
        text = re.sub(r"  schedule: \{[^}]*\}", "  schedule: {every: 5s, window: 1h}", text)
        if "schedule: {every: 5s" not in text:
            sys.exit("the example manifest has no monitoring.schedule line to replace")
        (work / "cpmai.yaml").write_text(text)
        home = work / "state"
        env = {**os.environ, "CPMAI_HOME": str(home)}
        deploy = [PY, "-m", "cpmai", "-q", "deploy", "cpmai.yaml", "--env", "staging"]
        done = subprocess.run(deploy, cwd=work, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"cpmai deploy failed ({done.returncode}): {done.stderr}")
        script = post_script(work, {"dataframe_records": [ROW]})
        without: list[float] = []
        with_: list[float] = []
        checks = Home(home).env("churn-classifier", "staging").checks
        made, cpu = 0, 0.0
        try:
            wait_ready(port, "/v2/health/ready")
            run_wrk(wrk, port, script, 3, 8)  # warm-up
            for _ in range(runs):
                stop_watcher(home, "churn-classifier", "staging")
                result = run_wrk(wrk, port, script, seconds, 8)
                without.append(result["rps"])
                record = ensure_watcher(home, "churn-classifier", "staging")
                before, used = _lines(checks), _cpu(record.pid)
                result = run_wrk(wrk, port, script, seconds, 8)
                with_.append(result["rps"])
                made += _lines(checks) - before
                cpu += _cpu(record.pid) - used
                print(f"  without {without[-1]:,.0f} req/s, with {with_[-1]:,.0f} req/s")
        finally:
            subprocess.run([PY, "-m", "cpmai", "stop", "churn-classifier", "--env", "staging"],
                           cwd=work, env=env, capture_output=True)  # fmt: skip
        for line in checks.read_text().splitlines()[-3:]:
            check = json.loads(line)
            print(f"  a check: {check['seconds']:.3f} s over {check['requests']:,} requests")
    print(f"  the watcher used {cpu:.1f} CPU-s in {runs * seconds:g} s of load "
          f"({cpu / (runs * seconds):.1%} of one core, niced)")  # fmt: skip
    return without, with_, made


def _cpu(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _lines(path: Path) -> int:
    try:
        return len(path.read_bytes().splitlines())
    except FileNotFoundError:
        return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--new", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--keep", type=Path, help="Build the big day in this folder and keep it.")
    parser.add_argument("--only", choices=["check", "throughput"])
    args = parser.parse_args()
    rows = []
    print(f"machine: {fingerprint()}")
    if args.only in (None, "check"):
        with tempfile.TemporaryDirectory() as scratch:
            timed, first = check_cost(args.keep or Path(scratch), args.rows, args.new, args.runs)
        median = statistics.median(timed)
        print(f"first check (reads the day's index): {first:.2f} s")
        rows.append((f"a check over {args.new:,} new rows on a {args.rows:,}-row day "
                     f"(median of {args.runs})", f"{median:.3f} s", "≤ 0.3 s",
                     median <= 0.3))  # fmt: skip
    if args.only in (None, "throughput"):
        without, with_, made = throughput(args.seconds, args.runs)
        off, on = statistics.median(without), statistics.median(with_)
        cost = (off - on) / off
        print(f"checks made while measured with the watcher: {made}")
        rows.append((f"throughput at c=8 with the watcher (every 5s) against without "
                     f"(medians of {args.runs} × {args.seconds:g} s)",
                     f"{on:,.0f} vs {off:,.0f} req/s: {cost:+.1%}", "cost ≤ 2%",
                     cost <= 0.02))  # fmt: skip
    return verdicts(rows, ("what", "measured", "target"))


if __name__ == "__main__":
    sys.exit(main())
