"""The hash-chained ledger: appends, replay, tamper detection, concurrency, torn tails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from cpmai.errors import IntegrityError
from cpmai.ledger import GENESIS, Ledger, TornTailError, event_hash
from cpmai.replay import replay


def fill(ledger: Ledger, n: int) -> None:
    for i in range(n):
        ledger.append("note", actor="a", name="m", details={"i": i})


def test_append_chains_events(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    first = ledger.append(
        "package", actor="alice", name="m", version="1.0.0", details={"digest": "ab" * 32}
    )
    second = ledger.append("approve", actor="bob", name="m", version="1.0.0", env="prod")
    assert (first.seq, second.seq) == (1, 2)
    assert first.prev == GENESIS and second.prev == first.hash
    assert first.hash == event_hash(first.to_dict())
    lines = ledger.path.read_text().splitlines()
    assert [json.loads(line)["action"] for line in lines] == ["package", "approve"]
    assert ledger.verify().ok
    state = replay(ledger.events())
    assert state.versions["m"]["1.0.0"].digest == "ab" * 32
    assert state.versions["m"]["1.0.0"].actor == "alice"


def test_edited_line_is_named(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    fill(ledger, 5)
    lines = ledger.path.read_text().splitlines()
    lines[2] = lines[2].replace('"actor":"a"', '"actor":"mallory"')
    ledger.path.write_text("\n".join(lines) + "\n")
    report = ledger.verify()
    assert not report.ok
    assert report.problems == ["ledger.jsonl:3: content does not match its hash (edited?)"]


def test_edit_with_recomputed_hash_breaks_the_next_link(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    fill(ledger, 5)
    lines = ledger.path.read_text().splitlines()
    event = json.loads(lines[1])
    event["actor"] = "mallory"
    event["hash"] = event_hash(event)
    lines[1] = json.dumps(event)
    ledger.path.write_text("\n".join(lines) + "\n")
    problems = ledger.verify().problems
    assert any(p.startswith("ledger.jsonl:3: prev does not match") for p in problems)


def test_deleted_middle_line_is_named(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    fill(ledger, 5)
    lines = ledger.path.read_text().splitlines()
    del lines[1]
    ledger.path.write_text("\n".join(lines) + "\n")
    problems = ledger.verify().problems
    assert problems[0].startswith("ledger.jsonl:2: seq 3 where 2 was expected")
    assert any("ledger.jsonl:2: prev does not match" in p for p in problems)


def test_deleted_last_line_is_caught_by_the_head(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    fill(ledger, 5)
    lines = ledger.path.read_text().splitlines()
    ledger.path.write_text("\n".join(lines[:-1]) + "\n")
    problems = ledger.verify().problems
    assert problems == [
        "ledger.jsonl: ends at seq 4 but ledger.head records seq 5 (events removed from the end?)"
    ]


def test_garbage_line_is_named(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    fill(ledger, 3)
    lines = ledger.path.read_text().splitlines()
    lines.insert(1, "{not json")
    ledger.path.write_text("\n".join(lines) + "\n")
    problems = ledger.verify().problems
    assert problems[0] == "ledger.jsonl:2: not a valid ledger event"
    with pytest.raises(IntegrityError, match=r"ledger\.jsonl:2: not a valid ledger event"):
        ledger.read()


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from cpmai.ledger import Ledger
    ledger = Ledger(Path(sys.argv[1]))
    for i in range(int(sys.argv[3])):
        ledger.append("note", actor=sys.argv[2], name="m", details={"i": i})
    """
)


@pytest.mark.slow
def test_eight_processes_appending_at_once(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), f"w{i}", "50"])
        for i in range(8)
    ]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    ledger = Ledger(tmp_path)
    events = ledger.events()
    assert len(events) == 400
    assert [e.seq for e in events] == list(range(1, 401))
    for writer in range(8):
        mine = [e.details["i"] for e in events if e.actor == f"w{writer}"]
        assert mine == list(range(50)), "each writer's events in its own order, none lost"
    report = ledger.verify()
    assert report.ok, report.problems
    assert report.events == 400


# A writer that is killed in the middle of its write: it writes half of the line, then waits.
HALF_WRITER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import cpmai.ledger as L
    real_write = os.write
    def half_write(fd, data):
        real_write(fd, data[: len(data) // 2])
        Path(sys.argv[2]).touch()
        time.sleep(60)
    L.os.write = half_write
    L.Ledger(Path(sys.argv[1])).append("note", actor="doomed", name="m", details={"x": 1})
    """
)


def kill_mid_write(home: Path) -> None:
    marker = home / "half-written"
    proc = subprocess.Popen([sys.executable, "-c", HALF_WRITER, str(home), str(marker)])
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert time.monotonic() < deadline, "the writer never started writing"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    marker.unlink()


@pytest.mark.slow
def test_sigkill_mid_append_leaves_a_torn_tail_that_is_reported(home: Path, cli: Any) -> None:
    ledger = Ledger(home)
    fill(ledger, 3)
    before = ledger.path.read_bytes()
    kill_mid_write(home)
    # the lock died with the writer; the torn bytes are still there
    read = ledger.read()
    assert [e.seq for e in read.events] == [1, 2, 3]
    assert read.torn is not None and read.torn.line == 4
    assert ledger.path.read_bytes().startswith(before)

    # writers refuse to append after it
    with pytest.raises(TornTailError, match=r"ledger.jsonl:4: incomplete last line"):
        ledger.append("note", actor="a", name="m")
    # readers report it and still show what is intact
    result = cli("history", "m")
    assert result.code == 0
    assert "incomplete last line" in result.err and "cpmai ledger repair" in result.err
    # verify fails (exit 5) until repaired
    result = cli("ledger", "verify")
    assert result.code == 5
    assert "ledger.jsonl:4: incomplete last line" in result.err
    result = cli("ledger", "repair", "--yes")
    assert result.code == 0, result.err
    assert cli("ledger", "verify").code == 0

    events = ledger.events()
    assert [e.action for e in events] == ["note", "note", "note", "repair"]
    assert events[3].details["removed_bytes"] > 0
    kept = home / events[3].details["saved_to"]
    assert kept.read_bytes().startswith(b'{"seq":4')
    assert ledger.path.read_bytes().startswith(before)


@pytest.mark.slow
def test_random_kills_never_lose_a_committed_event(tmp_path: Path) -> None:
    """Kill a busy writer at random moments; every event it saw committed is still there and
    the ledger is either intact or reports a torn tail (never silently wrong)."""
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from cpmai.ledger import Ledger
        ledger = Ledger(Path(sys.argv[1]))
        log = open(sys.argv[2], "a", buffering=1)
        for i in range(100000):
            event = ledger.append("note", actor="w", name="m", details={"pad": "x" * 2000})
            log.write(f"{event.seq}\\n")
        """
    )
    import random

    rng = random.Random(7)
    committed = tmp_path / "committed.txt"
    ledger = Ledger(tmp_path)
    for _ in range(6):
        before = len(committed.read_text().split()) if committed.exists() else 0
        proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(committed)])
        deadline = time.monotonic() + 60  # a slow machine: wait for the writer to get going
        while (len(committed.read_text().split()) if committed.exists() else 0) <= before:
            assert time.monotonic() < deadline and proc.poll() is None, "writer never started"
            time.sleep(0.01)
        time.sleep(rng.random() * 0.3)  # then kill it at a random moment of its work
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        read = ledger.read()
        seen = [int(s) for s in committed.read_text().split()]
        assert seen, "the writer committed nothing before it was killed"
        assert len(read.events) >= max(seen)
        report = ledger.verify()
        if read.torn:
            assert report.problems == [read.torn.describe(ledger.path)]
            ledger.repair(actor="test")
        else:
            assert report.ok, report.problems
    assert ledger.verify().ok


def test_transaction_sees_a_consistent_tail(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    fill(ledger, 2)
    with ledger.transaction() as tx:
        assert tx.last() is not None and tx.last().seq == 2  # type: ignore[union-attr]
        tx.append("a", actor="x")
        tx.append("b", actor="x")
    assert [e.seq for e in ledger.events()] == [1, 2, 3, 4]
    assert ledger.verify().ok


def test_empty_ledger(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "none")
    assert ledger.read().events == []
    assert ledger.verify().ok
    assert not os.path.exists(tmp_path / "none")
