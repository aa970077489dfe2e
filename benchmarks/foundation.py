"""Foundation performance checks: start-up, ledger reads at 10,000 events, streamed hashing.

    python benchmarks/foundation.py [--size-mb 1024] [--runs 15]

Targets (issue #2):
- `cpmai --help` and `cpmai versions` start in under 0.25 s;
- `cpmai versions` / `history` with 10,000 ledger events: under 0.5 s; with 100,000 (issue 22),
  `versions` and `status` under 0.5 s once the verified prefix is remembered, the whole chain
  re-hashed in under 1 s;
- packaging a 1 GB model file: streamed hashing at >= 70% of `sha256sum`'s speed, memory flat.

Each figure is the median of several runs; the hashing contenders are interleaved run by run so
machine noise hits them alike, and all read the file from the page cache (a warm-up pass first).
Exits 4 when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import fingerprint, verdicts  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
CPMAI = [sys.executable, "-m", "cpmai"]
HEAVY = ("sklearn", "pandas", "onnxruntime", "scipy", "numpy", "joblib", "skops")


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def median_of(cmd: list[str], runs: int, env: dict[str, str] | None = None) -> float:
    timed(cmd, env)  # warm the page cache and .pyc files
    return statistics.median(timed(cmd, env) for _ in range(runs))


def heavy_imports(args: list[str], env: dict[str, str]) -> list[str]:
    code = (
        "import sys\nfrom cpmai.cli.main import main\nmain(sys.argv[1:])\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=False
    )
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    return [m for m in last.split(",") if m]


def fill_ledger(home: Path, events: int) -> None:
    """A valid chain of `events` events, written in one go (appending one by one would spend
    the time in fsync, which is not what this measures)."""
    import json

    from cpmai.fsutil import write_atomic
    from cpmai.ledger import GENESIS, event_hash, now_iso

    home.mkdir(parents=True, exist_ok=True)
    lines, prev = [], GENESIS
    for i in range(events):
        body = {
            "seq": i + 1,
            "time": now_iso(),
            "actor": "bench@example.com",
            "action": "package" if i % 10 == 0 else "deploy",
            "name": "churn",
            "version": f"1.{i // 10}.0",
            "env": None if i % 10 == 0 else "staging",
            "details": {"digest": f"{i:064x}", "format": "joblib", "size_bytes": i}
            if i % 10 == 0
            else {"ok": True},
            "prev": prev,
        }
        body["hash"] = prev = event_hash(body)
        lines.append(json.dumps(body, separators=(",", ":")))
    write_atomic(home / "ledger.jsonl", ("\n".join(lines) + "\n").encode())
    # as cpmai's writer leaves it: without the head, a ledger of 2+ events does not verify
    write_atomic(home / "ledger.head", json.dumps({"seq": events, "hash": prev}).encode())


def max_rss_kb(code: str, *args: str) -> int:
    """Peak RSS of a child Python running `code` (ru_maxrss of the finished child)."""
    script = (
        "import resource, subprocess, sys\n"
        "subprocess.run([sys.executable, '-c', sys.argv[1], *sys.argv[2:]], check=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, code, *args], capture_output=True, text=True, check=True
    ).stdout
    return int(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--hash-runs", type=int, default=5)
    args = parser.parse_args()

    rows: list[tuple[str, str, str, bool]] = []
    with tempfile.TemporaryDirectory(prefix="cpmai-bench-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "CPMAI_HOME": str(work / "small"), "CPMAI_ACTOR": "bench"}
        fill_ledger(work / "small", 20)

        help_s = median_of([*CPMAI, "--help"], args.runs, env)
        versions_s = median_of([*CPMAI, "versions", "churn"], args.runs, env)
        rows.append(("`cpmai --help`", f"{help_s * 1000:.0f} ms", "< 250 ms", help_s < 0.25))
        rows.append(
            (
                "`cpmai versions churn` (20 events)",
                f"{versions_s * 1000:.0f} ms",
                "< 250 ms",
                versions_s < 0.25,
            )
        )
        for argv in (["--help"], ["versions", "churn"]):
            heavy = heavy_imports(argv, env)
            rows.append(
                (
                    f"heavy imports on `cpmai {' '.join(argv)}`",
                    ", ".join(heavy) or "none",
                    "none",
                    not heavy,
                )
            )

        env_big = {**env, "CPMAI_HOME": str(work / "big")}
        fill_ledger(work / "big", 10_000)
        for command in (["versions", "churn"], ["history", "churn"]):
            seconds = median_of([*CPMAI, *command], max(5, args.runs // 3), env_big)
            rows.append(
                (
                    f"`cpmai {' '.join(command)}` (10,000 events)",
                    f"{seconds * 1000:.0f} ms",
                    "< 500 ms",
                    seconds < 0.5,
                )
            )

        # issue 22: every read verifies the chain; a verified prefix is remembered
        env_huge = {**env, "CPMAI_HOME": str(work / "huge")}
        fill_ledger(work / "huge", 100_000)
        started = time.perf_counter()
        subprocess.run([*CPMAI, "versions", "churn"], env=env_huge, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        rows.append(("`cpmai versions churn` (100,000 events, nothing verified yet)",
                     f"{(time.perf_counter() - started) * 1000:.0f} ms", "-", True))  # fmt: skip
        for command in (["versions", "churn"], ["status", "churn"]):
            seconds = median_of([*CPMAI, *command], max(5, args.runs // 3), env_huge)
            rows.append(
                (
                    f"`cpmai {' '.join(command)}` (100,000 events, verified prefix remembered)",
                    f"{seconds * 1000:.0f} ms",
                    "< 500 ms",
                    seconds < 0.5,
                )
            )
        from cpmai.ledger import Ledger

        started = time.perf_counter()
        intact = Ledger(work / "huge").verify().ok
        seconds = time.perf_counter() - started
        rows.append(("the whole chain re-hashed (100,000 events)", f"{seconds * 1000:.0f} ms",
                     "< 1000 ms", intact and seconds < 1.0))  # fmt: skip

        sha256sum = shutil.which("sha256sum")
        big = work / "model.bin"
        with big.open("wb") as handle:
            block = os.urandom(1 << 20)
            for i in range(args.size_mb):
                handle.write(block[i % 7 :] + block[: i % 7])
        size = big.stat().st_size
        hash_code = (
            "import sys\nfrom pathlib import Path\nfrom cpmai.fsutil import sha256_file\n"
            "sha256_file(Path(sys.argv[1]))"
        )
        copy_code = (
            "import sys\nfrom pathlib import Path\nfrom cpmai.fsutil import copy_and_hash\n"
            "copy_and_hash(Path(sys.argv[1]), Path(sys.argv[2]))"
        )
        openssl = shutil.which("openssl")
        contenders = {
            "sha256sum": [sha256sum, str(big)] if sha256sum else None,
            "openssl": [openssl, "dgst", "-sha256", str(big)] if openssl else None,
            "cpmai sha256_file": [sys.executable, "-c", hash_code, str(big)],
        }
        timings: dict[str, list[float]] = {k: [] for k, v in contenders.items() if v}
        for cmd in contenders.values():
            if cmd:
                timed(cmd)  # warm-up: the file is in the page cache for everyone
        for _ in range(args.hash_runs):
            for name, cmd in contenders.items():
                if cmd:
                    timings[name].append(timed(cmd))
        speeds = {k: size / statistics.median(v) / 1e6 for k, v in timings.items()}
        copy_times = []
        for _ in range(max(3, args.hash_runs // 2)):
            copy_times.append(
                timed([sys.executable, "-c", copy_code, str(big), str(work / "copy.bin")])
            )
            (work / "copy.bin").unlink()
        copy_speed = size / statistics.median(copy_times) / 1e6
        if "sha256sum" in speeds:
            ratio = speeds["cpmai sha256_file"] / speeds["sha256sum"]
            rows.append(
                (
                    f"sha256sum on {size / 1e9:.2f} GB",
                    f"{speeds['sha256sum']:.0f} MB/s",
                    "reference",
                    True,
                )
            )
            rows.append(
                (
                    "cpmai streamed hash (fsutil.sha256_file)",
                    f"{speeds['cpmai sha256_file']:.0f} MB/s = {ratio:.0%} of sha256sum",
                    ">= 70%",
                    ratio >= 0.7,
                )
            )
        if "openssl" in speeds:
            rows.append(
                (
                    "openssl dgst -sha256 (OpenSSL, as Python's hashlib uses)",
                    f"{speeds['openssl']:.0f} MB/s; cpmai = "
                    f"{speeds['cpmai sha256_file'] / speeds['openssl']:.0%} of it",
                    "(context)",
                    True,
                )
            )
        rows.append(
            (
                "cpmai copy + hash in one pass (what `package` does)",
                f"{copy_speed:.0f} MB/s",
                "(no target)",
                True,
            )
        )
        baseline_kb = max_rss_kb("import hashlib, pathlib, cpmai.fsutil")
        hash_kb = max_rss_kb(hash_code, str(big))
        copy_kb = max_rss_kb(copy_code, str(big), str(work / "copy2.bin"))
        flat = max(hash_kb, copy_kb) - baseline_kb < 16 * 1024
        rows.append(
            (
                "peak RSS: import only / hash / copy+hash",
                f"{baseline_kb / 1024:.0f} / {hash_kb / 1024:.0f} / {copy_kb / 1024:.0f} MiB",
                "flat (< +16 MiB)",
                flat,
            )
        )

    print(f"machine: {fingerprint()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print()
    return verdicts(rows, ("measurement", "median", "target"))


if __name__ == "__main__":
    sys.exit(main())
