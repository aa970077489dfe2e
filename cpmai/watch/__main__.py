"""`python -m cpmai.watch --home H --name N --env E`: the watcher process (started detached by
`cpmai.watch.process.ensure_watcher`; not a command users type)."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from cpmai.clock import iso, parse_duration
from cpmai.home import Home
from cpmai.watch.process import WatcherRecord

NICENESS = 10


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cpmai.watch")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--env", required=True)
    args = parser.parse_args(argv)
    folders = Home(args.home).env(args.name, args.env)
    folders.watch.mkdir(parents=True, exist_ok=True)
    lock = os.open(folders.watch / "watcher.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"{iso()} another watcher holds {folders.watch / 'watcher.lock'}", flush=True)
        return 3
    # below the server it watches: a check is background work, and on a busy machine the
    # scheduler should give the requests the CPU first
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        print(f"{iso()} signal {signum}: stopping after this step", flush=True)
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    from cpmai.watch.watcher import Watcher

    watcher = Watcher(args.home, args.name, args.env, say=lambda text: print(text, flush=True))
    if watcher.book.damaged:
        print(f"{iso()} {watcher.book.damaged}", flush=True)
    live = watcher.live()
    schedule = live.manifest.monitoring.schedule if live else None
    if live is None or schedule is None:
        print(f"{iso()} nothing to watch: no live version with monitoring.schedule", flush=True)
        return 2
    import psutil

    created = psutil.Process().create_time()

    def announce(every: str, window: str) -> None:
        WatcherRecord(pid=os.getpid(), created=created, started=started, every=every,
                      window=window).write(folders.watcher)  # fmt: skip

    started = iso()
    announce(schedule.every, schedule.window)
    print(f"{iso()} watching {args.name} in {args.env}: every {schedule.every}, "
          f"window {schedule.window}", flush=True)  # fmt: skip
    watched = (live.version, schedule.every, schedule.window)
    ledger = Home(args.home).ledger
    seen = _stamp(ledger)
    next_check = time.time()
    while not stopping.is_set():
        now = time.time()
        if _stamp(ledger) != seen:  # a rollout, a rollback, a stop: look again now
            seen = _stamp(ledger)
            try:
                changed = watcher.live()
            except Exception as exc:  # unreadable now: the next check says so as an alert
                print(f"{iso()} reading the ledger: {exc}", flush=True)
            else:
                schedule = changed.manifest.monitoring.schedule if changed else None
                if changed is None or schedule is None:
                    print(f"{iso()} nothing live with monitoring.schedule any more: exiting",
                          flush=True)  # fmt: skip
                    break
                if (changed.version, schedule.every, schedule.window) != watched:
                    watched = (changed.version, schedule.every, schedule.window)
                    announce(schedule.every, schedule.window)
                    print(f"{iso()} {changed.version} is live: every {schedule.every}, window "
                          f"{schedule.window}", flush=True)  # fmt: skip
                    next_check = now
        if now >= next_check:
            try:
                record = watcher.check(now)
            except Exception:  # the check records its own failures; this is a bug of the loop's
                print(f"{iso()} the check failed:\n{traceback.format_exc()}", flush=True)
            else:
                alerts = ", ".join(f["summary"] for f in record.findings) or "all within bounds"
                print(f"{record.at} check {record.seconds:.3f} s, {record.requests} requests: "
                      f"{alerts}", flush=True)  # fmt: skip
            every = parse_duration(watched[1])
            next_check = max(next_check + every, time.time() + min(every, 1.0))
        else:
            try:
                watcher.deliver()
            except Exception:
                print(f"{iso()} delivering failed:\n{traceback.format_exc()}", flush=True)
        stopping.wait(max(0.05, min(1.0, next_check - time.time())))
    folders.watcher.unlink(missing_ok=True)
    return 0


def _stamp(path: Path) -> tuple[int, int]:
    try:
        info = path.stat()
    except OSError:
        return (0, 0)
    return (info.st_size, info.st_mtime_ns)


if __name__ == "__main__":
    sys.exit(main())
