"""`python -m cpmai.watch --home H --name N --env E`: the watcher process (started detached by
`cpmai.watch.process.ensure_watcher`; not a command users type).

The monitor's statistics run on a thread niced below the server it watches (a check is
background work: on a busy machine the scheduler gives the requests the CPU first); the
rest — the alert lifecycle, deliveries, a rollback and the server it may start — runs on the
main thread at normal priority.
"""

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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cpmai.clock import iso, parse_duration
from cpmai.home import Home
from cpmai.watch.process import WatcherRecord

NICENESS = 10


def _nice_this_thread() -> None:
    """On Linux a thread's priority is its own: only the measuring thread is niced."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)


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
    os.ftruncate(lock, 0)
    os.pwrite(lock, str(os.getpid()).encode(), 0)  # who holds it, should watcher.json be lost
    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        print(f"{iso()} signal {signum}: stopping after this step", flush=True)
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    from cpmai.watch.watcher import Watcher, _stamp

    said: set[str] = set()

    def say(text: str) -> None:  # the same failure every second is said once
        key = text.split(" ", 1)[-1][:200]
        if key not in said:
            said.add(key)
            print(text, flush=True)

    watcher = Watcher(args.home, args.name, args.env, say=say)
    if watcher.book.damaged:
        print(f"{iso()} {watcher.book.damaged}", flush=True)
    live = watcher.live()
    schedule = live.manifest.monitoring.schedule if live else None
    if live is None or schedule is None:
        print(f"{iso()} nothing to watch: no live version with monitoring.schedule", flush=True)
        return 2
    import psutil

    created, started = psutil.Process().create_time(), iso()

    def announce(every: str, window: str) -> None:
        WatcherRecord(pid=os.getpid(), created=created, started=started, every=every,
                      window=window).write(folders.watcher)  # fmt: skip

    announce(schedule.every, schedule.window)
    print(f"{iso()} watching {args.name} in {args.env}: every {schedule.every}, "
          f"window {schedule.window}", flush=True)  # fmt: skip
    watched = (live.version, schedule.every, schedule.window)
    ledger = Home(args.home).ledger
    seen = _stamp(ledger)
    next_check = time.time()
    reason = "the watcher stopped"
    measuring = ThreadPoolExecutor(1, thread_name_prefix="measure", initializer=_nice_this_thread)
    while not stopping.is_set() and not watcher.stopping:
        now = time.time()
        try:
            if _stamp(ledger) != seen:  # a rollout, a rollback, a stop: look again now
                seen = _stamp(ledger)
                changed = watcher.live()
                schedule = changed.manifest.monitoring.schedule if changed else None
                if changed is None or schedule is None:
                    reason = (
                        f"{args.env} was stopped"
                        if changed is None
                        else f"{changed.version} is live and sets no monitoring.schedule"
                    )
                    print(f"{iso()} {reason}: exiting", flush=True)
                    break
                if (changed.version, schedule.every, schedule.window) != watched:
                    watched = (changed.version, schedule.every, schedule.window)
                    announce(schedule.every, schedule.window)
                    print(f"{iso()} {changed.version} is live: every {schedule.every}, window "
                          f"{schedule.window}", flush=True)  # fmt: skip
                    next_check = now
            if now >= next_check:
                record = watcher.conclude(measuring.submit(watcher.measure, now).result())
                alerts = ", ".join(f["summary"] for f in record.findings) or "all within bounds"
                print(f"{record.at} check {record.seconds:.3f} s, {record.requests} requests: "
                      f"{alerts}", flush=True)  # fmt: skip
                every = parse_duration(watched[1])
                next_check = max(next_check + every, time.time() + min(every, 1.0))
            else:
                watcher.deliver()
        except Exception:  # a bug of the loop's: said (once), and the watching goes on
            say(f"{iso()} the watcher's loop failed:\n{traceback.format_exc()}")
            next_check = max(next_check, time.time() + 1.0)
        stopping.wait(max(0.05, min(1.0, next_check - time.time())))
    measuring.shutdown(wait=True)
    try:
        watcher.close(reason)
    except Exception:
        print(f"{iso()} closing failed:\n{traceback.format_exc()}", flush=True)
    with contextlib.suppress(OSError):
        record_now = WatcherRecord.read(folders.watcher)
        if record_now is not None and record_now.pid == os.getpid():
            folders.watcher.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
