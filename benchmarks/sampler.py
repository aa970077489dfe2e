"""What the serving process's resource sampler costs (issue #7's target: < 1% of its CPU).

    python benchmarks/sampler.py [--samples 2000]

Times `ResourceLog.write()` — one psutil read of the process and one appended JSON line, what
the sampler thread does each `monitoring.sample_interval_s` — in CPU time of this process, and
turns it into a share of one core at the default interval (5 s) and at the fastest allowed
(0.1 s). Exits 4 when the default interval costs 1% or more.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _report import fingerprint, verdicts  # benchmarks/ is on sys.path when run as a script

from cpmai.serving.resources import ResourceLog


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        log = ResourceLog(Path(folder), 5.0, lambda: "1.0.0")
        log.folder.mkdir(parents=True, exist_ok=True)
        log._last = (time.monotonic(), 0.0)
        runs = []
        for _ in range(5):
            start = time.process_time()
            for _ in range(args.samples):
                log.write()
            runs.append((time.process_time() - start) / args.samples)
    per_sample = statistics.median(runs)
    print(f"machine: {fingerprint()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(
        f"one sample (psutil read + JSON line appended): {per_sample * 1e6:.1f} µs CPU "
        f"(median of 5 × {args.samples})"
    )
    print()
    default, fastest = per_sample / 5.0, per_sample / 0.1
    return verdicts(
        [
            ("CPU share at the default 5 s interval", f"{default:.5%}", "< 1%", default < 0.01),
            ("CPU share at the fastest 0.1 s interval", f"{fastest:.3%}", "(context)", True),
        ],
        ("measurement", "value", "target"),
    )


if __name__ == "__main__":
    sys.exit(main())
