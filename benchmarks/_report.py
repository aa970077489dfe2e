"""What the benchmark scripts share: the machine's fingerprint, the verdict table, a free port
and wrk."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys


def fingerprint() -> str:
    from cpmai.bench.resources import machine

    info = machine()
    return f"{info['cpu']}, {info['cores']} cores, Python {info['python']}"


def verdicts(rows: list[tuple[str, str, str, bool]], header: tuple[str, str, str]) -> int:
    """Print `| what | value | target | ok |` rows; 0 when all pass, 4 (a threshold) otherwise."""
    print(f"| {header[0]} | {header[1]} | {header[2]} | ok |")
    print("| --- | --- | --- | --- |")
    for what, value, target, ok in rows:
        print(f"| {what} | {value} | {target} | {'✓' if ok else '✗'} |")
    return 0 if all(ok for *_, ok in rows) else 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_wrk() -> str:
    """wrk from Debian's packages (installed with apt-get when missing and running as root)."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
    found = shutil.which("wrk")
    if not found:
        sys.exit("wrk is needed (apt-get install wrk)")
    return found
