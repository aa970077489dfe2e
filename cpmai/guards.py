"""What keeps a rollout safe: one at a time per environment (`runs/NAME/ENV/rollout.lock`),
and SIGTERM or SIGHUP interrupting it as Ctrl-C does, so the previous routing is put back and
recorded; and how a supervised process (a server, a watcher) is started detached."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpmai.errors import TargetError
from cpmai.serving.runstate import RunFiles

if TYPE_CHECKING:
    import subprocess

LOCK_TIMEOUT = 600.0


@contextmanager
def env_lock(
    home: Path, name: str, env: str, progress: Callable[[str], None], timeout: float = LOCK_TIMEOUT
) -> Iterator[None]:
    """Hold the rollout lock of one environment; waits (saying so) while another holds it."""
    files = RunFiles.of(home, name, env)
    files.folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(files.lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not said:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                    progress(f"waiting: another rollout of {name} in {env} is running ({holder})")
                    said = True
                if time.monotonic() > deadline:
                    raise TargetError(
                        f"another rollout of {name} in {env} held the lock for {timeout:.0f} s"
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP (a cancelled CI job, a closed terminal) interrupt a rollout the way
    Ctrl-C does, so the target puts the previous routing back and the ledger records it."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {
        sig: signal.signal(sig, interrupt)
        for sig in (signal.SIGTERM, signal.SIGHUP)
        if signal.getsignal(sig) is not signal.SIG_IGN  # e.g. SIGHUP under nohup stays ignored
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def start_detached(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start `command` in a session of its own (it outlives the command that started it and
    is stopped by its group), its output appended to `log` after a `--- TIME start` line."""
    import subprocess

    with log.open("ab") as handle:
        handle.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} start\n".encode())
        handle.flush()
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=handle,
            start_new_session=True,
            close_fds=True,
        )
