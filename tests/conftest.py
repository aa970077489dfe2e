"""Shared fixtures: a state folder per test, the trained churn example, ways to run the CLI."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "churn"
WATCHED = "  schedule: {every: 10s, window: 15m}   # a watcher beside each server (5m is usual)\n"
"""The example manifest's schedule line, left out of the tests' copy of it."""
CPMAI = [sys.executable, "-m", "cpmai"]
FEATURES = [
    "tenure_months",
    "monthly_charges",
    "support_calls",
    "late_payments",
    "plan",
    "contract",
    "payment_method",
    "region",
]
"""The churn example's model inputs, in signature order."""


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty state folder, set as $CPMAI_HOME for in-process and subprocess runs."""
    path = tmp_path / "state"
    monkeypatch.setenv("CPMAI_HOME", str(path))
    monkeypatch.setenv("CPMAI_ACTOR", "tester@example.com")
    return path


@pytest.fixture(scope="session")
def trained_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The churn example trained once per session (model.joblib + data/) in a private folder."""
    folder = tmp_path_factory.mktemp("churn")
    # without the example's watcher: every test that deploys would start one (tests of the
    # watcher set their own schedule)
    text = (EXAMPLE / "cpmai.yaml").read_text()
    assert WATCHED in text, "the example's schedule changed: change WATCHED with it"
    (folder / "cpmai.yaml").write_text(text.replace(WATCHED, ""))
    shutil.copy(EXAMPLE / "train.py", folder / "train.py")
    subprocess.run(
        [sys.executable, "train.py", "--rows", "3000"], cwd=folder, check=True, capture_output=True
    )
    return folder


@pytest.fixture
def churn(trained_example: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the trained example; returns its manifest."""
    folder = tmp_path / "churn"
    shutil.copytree(trained_example, folder)
    return folder / "cpmai.yaml"


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """Run the CLI in process (fast): returns exit code, stdout, stderr."""
    from cpmai.cli.main import main

    def run(*args: str) -> Result:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def run_cpmai(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> Result:
    """Run the CLI as a real subprocess, as users and CI scripts do."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [*CPMAI, *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def kill_midway(argv: list[str], ready: Callable[[], bool], *, timeout: float = 90) -> None:
    """Start `cpmai ARGV`, SIGKILL it once `ready()` holds (polled), and reap it: a run
    killed half-way. Fails if the run ended before it could be killed."""
    proc = subprocess.Popen([*CPMAI, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed: make it longer"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
