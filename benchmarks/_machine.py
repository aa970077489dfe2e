"""The machine fingerprint the benchmark scripts print with their figures."""

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
