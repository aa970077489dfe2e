"""`cpmai cost` and `cpmai report` over a big prediction log: how long a lead waits.

    python benchmarks/report.py [--rows 1000000] [--runs 3] [--keep DIR]

Reuses benchmarks/monitor.py's project (30 inputs) and log (one-row requests over 24 hours,
written with the server's own writer and index), records a deploy of the version in the ledger
(as `cpmai deploy` records it; no server runs: cost and report read the ledger and the logs),
then times as subprocesses:
- `cpmai --json cost wide --env production`: reads resource samples and request counts;
- `cpmai report wide --html F --markdown F --json`: everything `cpmai monitor` does over the
  period plus costs and the value trend — first with no cache (the first report of a log), then
  `--runs` times warm (a CI job that reports every hour).
Reports median wall time and the peak memory of the process tree. Exits 4 when the report takes
longer than 15 s or 1.5 GiB (this script's own bound: the issue sets none).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from _report import fingerprint, verdicts  # benchmarks/ is on sys.path when run as a script
from monitor import measure, prepare


def record_deploy(home: Path, moment: float) -> None:
    from datetime import UTC, datetime

    from cpmai import ledger

    stamp = datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")
    ledger.now_iso = lambda: stamp  # the deploy happened when the log starts
    with ledger.Ledger(home).transaction() as tx:
        tx.append(
            "deploy",
            actor="bench@example.com",
            name="wide",
            version="1.0.0",
            env="production",
            details={"result": "live", "url": "http://127.0.0.1:18099"},
        )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="Build in this folder and keep it.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        home, env = prepare(folder, args.rows, before_log=record_deploy)
        cpmai = [sys.executable, "-m", "cpmai"]
        out = folder / "out"
        out.mkdir(exist_ok=True)
        report = [*cpmai, "report", "wide", "--html", str(out / "r.html"),
                  "--markdown", str(out / "r.md"), "--json"]  # fmt: skip
        cost = [*cpmai, "--json", "cost", "wide", "--env", "production"]
        shutil.rmtree(home / "cache", ignore_errors=True)
        first = measure(report, env)
        warm = [measure(report, env) for _ in range(args.runs)]
        costs = [measure(cost, env) for _ in range(args.runs)]
        html_kib = (out / "r.html").stat().st_size / 1024
    doc = warm[-1][2]
    staging = doc["monitoring"]["production"]  # type: ignore[index]
    print(f"machine: {fingerprint()}")
    for label, runs in (("report, first (no cache)", [first]), ("report, warm", warm),
                        ("cost", costs)):  # fmt: skip
        print(f"{label}: {', '.join(f'{r[0]:.2f} s / {r[1]:,.0f} MiB' for r in runs)}")
    print(f"report: {staging['traffic']['requests']:,} requests, {len(staging['windows'])} "
          f"windows, HTML {html_kib:,.0f} KiB")  # fmt: skip

    def median(runs: list[tuple[float, float, dict[str, object]]], i: int) -> float:
        return statistics.median(r[i] for r in runs)

    what = f"{args.rows:,} rows × 30 features"
    return verdicts(
        [
            (f"report, {what}, first (no cache)", f"{first[0]:.2f} s", "(no target)", True),
            (
                f"report, {what}, warm (median of {args.runs})",
                f"{median(warm, 0):.2f} s",
                "< 15 s",
                median(warm, 0) < 15,
            ),
            (
                "peak memory of the report's process tree",
                f"{max(first[1], median(warm, 1)):,.0f} MiB",
                "< 1,536 MiB",
                max(first[1], median(warm, 1)) < 1536,
            ),
            (f"cost (median of {args.runs})", f"{median(costs, 0):.2f} s", "(no target)", True),
        ],
        ("what", "measured", "target"),
    )


if __name__ == "__main__":
    sys.exit(main())
