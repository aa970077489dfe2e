"""`make demo`: the whole story on the churn example, as a user would run it, step by step.

    python examples/churn/demo.py [--folder DIR] [--home DIR]

Trains the example, validates and packages it, deploys it to staging, asks it one question,
benchmarks it (`cpmai bench` marks its requests synthetic, so what follows does not take them for
customers), sends it a day of customers, monitors it against their ground truth, costs it,
shows its history, verifies the ledger, writes the report, then sends it customers who changed
(the watcher the deploy started finds the drift, and its alert reaches the example's file
channel, alerts.jsonl) and stops the server and its watcher.

Each command is shown before it runs. When a step fails (or Ctrl-C), the demo says which, stops
the server it started, checks that nothing is left listening on the example's port, and exits
with the step's exit code (130 when interrupted).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAME = "churn-classifier"
ENV = "staging"


class StepFailed(Exception):
    def __init__(self, step: str, code: int) -> None:
        super().__init__(step)
        self.step, self.code = step, code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=HERE, help="the example's folder")
    parser.add_argument("--home", type=Path, help="cpmai's state folder (default: FOLDER/.cpmai)")
    parser.add_argument("--bench-seconds", type=float, default=3.0, help="per benchmark level")
    args = parser.parse_args()
    folder = args.folder.resolve()
    home = (args.home or folder / ".cpmai").resolve()
    manifest = folder / "cpmai.yaml"
    env = {**os.environ, "CPMAI_HOME": str(home)}
    python = sys.executable

    def cpmai(*words: str) -> list[str]:
        return [python, "-m", "cpmai", *words]

    def run(step: str, argv: list[str], cwd: Path | None = None) -> None:
        shown = shlex.join(["cpmai", *argv[3:]] if argv[1:3] == ["-m", "cpmai"] else argv)
        print(f"\n$ {shown}", flush=True)
        child = subprocess.Popen(argv, cwd=cwd, env=env)
        try:
            code = child.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the child too; SIGTERM only this process
            if _TERMINATED:
                child.send_signal(signal.SIGINT)
            _wait(child)
            raise
        if code != 0:
            raise StepFailed(step, code)

    signal.signal(signal.SIGTERM, _interrupt)  # a CI timeout: clean up as for Ctrl-C
    started, port, outcome = False, 0, 1
    try:
        run("train", [python, "train.py"], cwd=folder)
        run("validate", cpmai("validate", str(manifest)))
        port = _port(manifest)
        url = f"http://127.0.0.1:{port}"
        if _listening(port):
            # a server left by an earlier demo of this folder: stop it through its own state
            subprocess.run(cpmai("stop", NAME, "--env", ENV), env=env, check=False)
            if _listening(port):
                print(
                    f"make demo: port {port} is taken by another program; stop it first",
                    file=sys.stderr,
                )
                return 2
        run("package", cpmai("package", str(manifest)))
        started = True  # from here on, a server may be running: stopped whatever happens
        run("deploy", cpmai("deploy", str(manifest), "--env", ENV, "--reason", "make demo"))
        run("status", cpmai("status", NAME))
        run("ask", [python, str(folder / "ask.py"), url])
        run("bench", cpmai("bench", f"{NAME}@{ENV}", "--url", url, "--concurrency", "1,8",
                           "--duration", str(args.bench_seconds)))  # fmt: skip
        run("traffic", [python, "traffic.py", url], cwd=folder)
        run("monitor", cpmai("monitor", NAME, "--env", ENV, "--window", "1m",
                             "--labels", str(folder / "labels.csv")))  # fmt: skip
        run("cost", cpmai("cost", NAME, "--env", ENV))
        run("history", cpmai("history", NAME))
        run("ledger verify", cpmai("ledger", "verify"))
        run("report", cpmai("report", NAME, "--html", str(folder / "report.html"),
                            "--markdown", str(folder / "report.md")))  # fmt: skip
        alerts = _alerts_file(manifest)
        seen = alerts.stat().st_size if alerts.exists() else 0
        shifted = [python, "traffic.py", url, "--shift", "--rows", "1500",
                   "--labels", str(home / "shifted-labels.csv")]  # fmt: skip
        run("shifted traffic", shifted, cwd=folder)
        _wait_for_alert(alerts, seen)
        run("alerts", cpmai("alerts", NAME, "--env", ENV))
        run("stop", cpmai("stop", NAME, "--env", ENV))
        started, outcome = False, 0
    except StepFailed as failed:
        print(f"\nmake demo: the {failed.step!r} step failed (exit {failed.code})", file=sys.stderr)
        outcome = failed.code
    except KeyboardInterrupt:
        print("\nmake demo: interrupted", file=sys.stderr)
        outcome = 130
    finally:  # whatever ended the demo (a bug of its own included), its server is stopped
        if started:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip this
            _clean_up(cpmai("stop", NAME, "--env", ENV), env, port)
    if outcome == 0:
        print(f"\nmake demo: done — the report is {folder / 'report.html'}")
    return outcome


_TERMINATED: list[int] = []


def _interrupt(signum: int, frame: object) -> None:
    _TERMINATED.append(signum)
    raise KeyboardInterrupt


def _wait(child: subprocess.Popen[bytes]) -> None:
    """Give an interrupted step time to finish (a deploy records `interrupted` and stops what it
    started), then make sure it is gone."""
    try:
        child.wait(timeout=60)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        child.kill()
        child.wait()


def _alerts_file(manifest: Path) -> Path:
    """Where the example's file channel appends its alerts."""
    from cpmai.manifest_file import load_manifest

    loaded = load_manifest(manifest)
    for channel in loaded.monitoring.alerts.channels:
        if channel.type == "file":
            return loaded.resolve(channel.path)
    print(f"make demo: {manifest} has no file channel under monitoring.alerts", file=sys.stderr)
    raise StepFailed("alert", 2)


def _wait_for_alert(alerts: Path, seen: int, timeout: float = 90.0) -> None:
    """Until the watcher's drift alert reaches the file channel (past its first `seen` bytes)."""
    print(f"\n$ # the watcher checks every few seconds; waiting for its alert in {alerts.name}",
          flush=True)  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alerts.exists() and alerts.stat().st_size > seen:
            with alerts.open("rb") as handle:
                handle.seek(seen)
                for line in handle.read().splitlines():
                    if b'"kind":"drift"' in line and b'"event":"firing"' in line:
                        import json

                        print(json.loads(line)["text"], flush=True)
                        return
        time.sleep(0.5)
    print(f"make demo: no drift alert reached {alerts} in {timeout:.0f} s", file=sys.stderr)
    raise StepFailed("alert", 4)


def _port(manifest: Path) -> int:
    """The staging server's port (the manifest is valid: the validate step passed)."""
    from cpmai.manifest_file import load_manifest

    environment = load_manifest(manifest).environments.get(ENV)
    if environment is None or environment.port is None:
        print(f"make demo: {manifest} gives {ENV} no port", file=sys.stderr)
        raise StepFailed("validate", 2)
    return int(environment.port)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _clean_up(stop: list[str], env: dict[str, str], port: int) -> None:
    print("make demo: stopping the server it started", file=sys.stderr)
    subprocess.run(stop, env=env, check=False)
    deadline = time.monotonic() + 10
    while _listening(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _listening(port):
        print(f"make demo: something still listens on port {port}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
