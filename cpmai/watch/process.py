"""The watcher process of one environment: started by `deploy`/`promote`/`rollback` when the
live version's manifest sets `monitoring.schedule`, stopped by `stop`, shown by `status`.

It runs detached in its own session (`python -m cpmai.watch`), holds `watcher.lock` for its
whole life (so two can never watch one environment), and writes `watcher.json` (pid, start
time, schedule) once it holds it. A watcher found dead (killed, the machine restarted) is
shown `down` and started again by the next rollout.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpmai.clock import epoch, iso
from cpmai.errors import CpmaiError, TargetError
from cpmai.fsutil import read_json_object, write_atomic
from cpmai.home import EnvFolders, Home
from cpmai.watch.book import ROTATE_BYTES

if TYPE_CHECKING:
    from cpmai.manifest import Manifest
    from cpmai.targets import Progress

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


@dataclass
class WatcherRecord:
    """`watcher.json`: the process that watches."""

    pid: int
    created: float
    started: str
    every: str
    window: str

    @classmethod
    def read(cls, path: Path) -> WatcherRecord | None:
        """The record, or None when it is missing or not one (edited, a special file)."""
        data = read_json_object(path)
        if data is None:
            return None
        try:
            record = cls(**data)
        except TypeError:
            return None
        kinds = ((record.pid, int), (record.created, (int, float)), (record.started, str),
                 (record.every, str), (record.window, str))  # fmt: skip
        if any(isinstance(v, bool) or not isinstance(v, t) for v, t in kinds) or record.pid < 1:
            return None
        return record

    def write(self, path: Path) -> None:
        write_atomic(path, json.dumps(self.__dict__).encode())


@dataclass
class WatcherStatus:
    """What `cpmai status` shows of an environment's watcher."""

    state: str
    """running, down (recorded but not running) or stopped."""
    pid: int | None = None
    every: str | None = None
    last_check: str | None = None
    last_check_seconds: float | None = None
    firing: int = 0
    pending_deliveries: int = 0
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def alive(record: WatcherRecord | None) -> bool:
    if record is None:
        return False
    import psutil

    try:
        process = psutil.Process(record.pid)
        return bool(
            process.status() != psutil.STATUS_ZOMBIE
            and abs(process.create_time() - record.created) < 1.0
        )
    except (psutil.Error, ValueError, OverflowError, TypeError):
        return False


def lock_holder(folders: EnvFolders) -> int | None:
    """The pid of the watcher that holds `watcher.lock` (it writes its pid there), or None
    when none holds it: what finds a running watcher whose `watcher.json` was damaged."""
    import fcntl

    path = folders.watch / "watcher.lock"
    if not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() and int(text) > 0 else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def current_record(folders: EnvFolders) -> WatcherRecord | None:
    """`watcher.json`, or — when it is damaged or gone while a watcher runs — a record made
    from the lock's holder (schedule unknown: `?`)."""
    record = WatcherRecord.read(folders.watcher)
    if record is not None:
        return record
    pid = lock_holder(folders)
    if pid is None:
        return None
    import psutil

    try:
        process = psutil.Process(pid)
        if not any("cpmai.watch" in part for part in process.cmdline()):
            return None
        return WatcherRecord(pid, process.create_time(), "?", "?", "?")
    except psutil.Error:
        return None


def watch_after_rollout(
    home: Path, name: str, env: str, manifest: Manifest, target: str, progress: Progress
) -> None:
    """Start the environment's watcher when the version now live sets `monitoring.schedule`
    (stop it when it sets none). The rollout stands either way: a watcher that cannot start
    is said, and shown by `cpmai status`."""
    schedule = manifest.monitoring.schedule
    if schedule is None or target not in ("local", "ray"):
        if stop_watcher(home, name, env):
            progress(f"watcher stopped: {manifest.name} sets no monitoring.schedule")
        return
    try:
        record = ensure_watcher(home, name, env, (schedule.every, schedule.window))
    except CpmaiError as exc:
        progress(f"warning: the watcher did not start: {exc.message}")
        return
    progress(f"watcher  pid {record.pid}, a check every {record.every}")
    for problem in channel_problems(manifest):
        progress(f"warning: {problem}")


def channel_problems(manifest: Manifest) -> list[str]:
    """What will stop a channel of `monitoring.alerts` from delivering, seen from here: the
    environment variables it reads (the watcher inherits this process's environment)."""
    from cpmai.alerts.channels import describe

    problems = []
    for channel in manifest.monitoring.alerts.channels:
        names = [getattr(channel, key, None) for key in ("secret_env", "username_env",
                                                         "password_env")]  # fmt: skip
        url = getattr(channel, "url", "")
        if isinstance(url, str) and url.startswith("env:"):
            names.append(url[4:])
        unset = [n for n in names if isinstance(n, str) and not os.environ.get(n)]
        if unset:
            problems.append(
                f"alerts through {describe(channel)} will fail: "
                + ", ".join(f"${n}" for n in unset)
                + " unset here, where the watcher starts"
            )
    return problems


def ensure_watcher(
    home: Path, name: str, env: str, schedule: tuple[str, str] | None = None
) -> WatcherRecord:
    """The running watcher of `env`, started when there is none. A running one takes a new
    live version's `schedule` (every, window) on its own when the ledger changes: waited for
    here (briefly) so that what is said is what runs."""
    folders = Home(home).env(name, env)
    record = current_record(folders)
    if alive(record):
        assert record is not None
        if record.started == "?" and schedule is not None:  # its watcher.json was damaged
            record = WatcherRecord(record.pid, record.created, iso(), *schedule)
            record.write(folders.watcher)
        deadline = time.monotonic() + 5.0
        while (
            schedule is not None
            and (record.every, record.window) != schedule
            and record.pid != os.getpid()
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
            record = WatcherRecord.read(folders.watcher) or record
        return record
    folders.watch.mkdir(parents=True, exist_ok=True)
    folders.watcher.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        if folders.watcher_log.stat().st_size > ROTATE_BYTES:
            folders.watcher_log.replace(folders.watcher_log.with_name("watcher.log.1"))
    command = [sys.executable, "-m", "cpmai.watch", "--home", str(home), "--name", name,
               "--env", env]  # fmt: skip
    from cpmai.guards import start_detached

    process = start_detached(command, folders.watcher_log)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        record = WatcherRecord.read(folders.watcher)
        if record is not None and alive(record):
            process.returncode = 0  # detached: reaped by nobody here, and not waited for
            return record
        code = process.poll()
        if code is not None:
            raise TargetError(
                f"the watcher of {name} in {env} exited with status {code} as it started:\n"
                + _tail(folders.watcher_log),
                hint=f"the whole log: {folders.watcher_log}",
            )
        time.sleep(0.05)
    _kill(process.pid)
    raise TargetError(f"the watcher of {name} in {env} did not start in {START_TIMEOUT:.0f} s")


def stop_watcher(home: Path, name: str, env: str) -> bool:
    """Stop the watcher of `env` (SIGTERM: it finishes the check it is making; SIGKILL after
    STOP_TIMEOUT). Returns whether one was running."""
    folders = Home(home).env(name, env)
    record = current_record(folders)
    running = alive(record)
    if running and record is not None and record.pid == os.getpid():
        os.kill(record.pid, signal.SIGTERM)  # the watcher itself (its rollback): it stops next
        return True
    if running:
        assert record is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while alive(record) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(record):
            _kill(record.pid)
    folders.watcher.unlink(missing_ok=True)
    return running


def watcher_status(home: Path, name: str, env: str) -> WatcherStatus:
    folders = Home(home).env(name, env)
    record = current_record(folders)
    if record is None:
        return WatcherStatus(state="stopped")
    status = WatcherStatus(
        state="running" if alive(record) else "down", pid=record.pid, every=record.every
    )
    last = _last_line(folders.checks)
    if last is not None:
        at, seconds = last.get("at"), last.get("seconds")
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            epoch(str(at))  # an edited line must not break `status`
            status.last_check = str(at)
        if isinstance(seconds, int | float) and not isinstance(seconds, bool):
            status.last_check_seconds = float(seconds)
    state = read_json_object(folders.alert_state) or {}
    opened = state.get("open")
    status.firing = sum(
        1 for a in (opened.values() if isinstance(opened, dict) else []) if isinstance(a, dict)
        and a.get("silenced_by") is None
    )  # fmt: skip
    status.pending_deliveries = _count(folders.outbox)
    if status.state == "down":
        status.detail = f"watcher process {record.pid} is not running (see {folders.watcher_log})"
    elif status.last_check and epoch(status.last_check) < time.time() - 3 * _seconds(record.every):
        status.detail = f"no check since {status.last_check}"
    return status


def _seconds(every: str) -> float:
    from cpmai.clock import parse_duration

    try:
        return parse_duration(every)
    except Exception:
        return 300.0


def _count(folder: Path) -> int:
    try:
        return sum(1 for p in folder.iterdir() if p.suffix == ".json")
    except OSError:
        return 0


def _last_line(path: Path) -> dict[str, Any] | None:
    from cpmai.fsutil import not_regular

    if not path.exists() or not_regular(path) is not None:
        return None
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(max(0, size - 65536))
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict):
            return data
    return None


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "  (no watcher log)"
    return "\n".join(f"  {line}" for line in text.splitlines()[-lines:])
