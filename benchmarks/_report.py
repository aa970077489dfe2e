"""What the benchmark scripts share: the machine's fingerprint, the verdict table, a free port,
the example's request row, and wrk (finding it, driving it, reading its output)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROW = {
    "tenure_months": 3,
    "monthly_charges": 80.5,
    "support_calls": 4,
    "late_payments": 1,
    "plan": "premium",
    "contract": "month-to-month",
    "payment_method": "invoice",
    "region": "north",
}
"""One customer of the churn example: the single-row request every serving benchmark sends."""


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


def post_script(folder: Path, body: dict[str, Any]) -> Path:
    """A wrk Lua script that POSTs `body` as JSON."""
    script = folder / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
    )
    return script


def wait_ready(
    port: int, path: str, proc: subprocess.Popen[Any] | None = None, timeout: float = 120
) -> None:
    """Until GET `path` answers 200 (or `proc` exits, or `timeout` passes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server on port {port} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port}{path}")


def run_wrk(
    wrk: str, port: int, script: Path, duration: float, connections: int, prefix: str = ""
) -> dict[str, Any]:
    """wrk against `prefix`/invocations (2 threads, 1 for one connection): requests/s, requests,
    p50 and p99 in ms, non-2xx answers and socket errors."""
    argv = [wrk, f"-t{min(2, connections)}", f"-c{connections}", f"-d{duration:g}s",
            "--timeout", "30s", "--latency", "-s", str(script),
            f"http://127.0.0.1:{port}{prefix}/invocations"]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if not found or not total:
        raise RuntimeError(f"could not read wrk's output:\n{out}")
    result: dict[str, Any] = {"rps": float(found[1]), "requests": int(total[1])}
    for pct in ("50", "99"):
        match = re.search(rf"\s{pct}%\s+([\d.]+)(\w+)", out)
        if not match:
            raise RuntimeError(f"no p{pct} in wrk's output:\n{out}")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[match[2]]
        result[f"p{pct}_ms"] = float(match[1]) * scale
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    result["non2xx"] = int(non2xx[1]) if non2xx else 0
    result["socket_errors"] = sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    result["errors"] = result["non2xx"] + result["socket_errors"]
    return result
