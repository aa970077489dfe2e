"""What the benchmark scripts print: the machine's fingerprint and the verdict table."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def fingerprint() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpu = model or platform.processor()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def verdicts(rows: list[tuple[str, str, str, bool]], header: tuple[str, str, str]) -> int:
    """Print `| what | value | target | ok |` rows; 0 when all pass, 4 (a threshold) otherwise."""
    print(f"| {header[0]} | {header[1]} | {header[2]} | ok |")
    print("| --- | --- | --- | --- |")
    for what, value, target, ok in rows:
        print(f"| {what} | {value} | {target} | {'✓' if ok else '✗'} |")
    return 0 if all(ok for *_, ok in rows) else 4
