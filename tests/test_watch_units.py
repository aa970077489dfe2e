"""The watcher's parts in process, as the review of the first version found them wanting: an
SLO judged per metric, a silence that ends, a delivery no channel took, stopping, and state
files that are not what they should be (edited, a FIFO)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from cpmai.home import Home
from cpmai.watch.book import AlertBook, Silence
from cpmai.watch.findings import Finding, Verdict

NAME, ENV, T0 = "m", "staging", 1_800_000_000.0


@pytest.fixture
def book(tmp_path: Path) -> AlertBook:
    return AlertBook(Home(tmp_path).env(NAME, ENV), NAME, ENV)


def _step(book: AlertBook, at: float, *found: tuple[str, str | None], judged: set[str],
          silences: list[Silence] | None = None) -> list[str]:  # fmt: skip
    findings = [Finding(kind, feature, f"{kind} breached") for kind, feature in found]  # type: ignore[arg-type]
    out = book.step(Verdict(findings, judged), version="1", repeat_s=3600,
                    silences=silences or [], now=at)  # fmt: skip
    return [f"{m.event} {m.key}" for m in out]


def test_a_latency_alert_is_not_resolved_by_a_check_that_could_not_measure_latency(
    book: AlertBook,
) -> None:
    assert _step(book, T0, ("slo", "p99_ms"), judged={"slo/p99_ms"}) == [f"firing {ENV}/slo/p99_ms"]
    # every request failed: the error rate is judged (and breached), p99 is not measured
    out = _step(book, T0 + 1, ("errors", "error_rate"), judged={"errors/error_rate"})
    assert out == [f"firing {ENV}/errors/error_rate"]
    assert sorted(book.open) == [f"{ENV}/errors/error_rate", f"{ENV}/slo/p99_ms"]
    assert sorted(_step(book, T0 + 2, judged={"slo/p99_ms", "errors/error_rate"})) == [
        f"resolved {ENV}/errors/error_rate", f"resolved {ENV}/slo/p99_ms"
    ]  # fmt: skip


def test_an_alert_sent_before_a_silence_is_sent_again_when_it_ends(book: Any) -> None:
    assert _step(book, T0, ("drift", None), judged={"drift"}) == [f"firing {ENV}/drift"]
    hold = [Silence("s-1", ENV, None, None, until=T0 + 100, reason="x", actor="a")]
    assert _step(book, T0 + 10, ("drift", None), judged={"drift"}, silences=hold) == []
    assert _step(book, T0 + 100, ("drift", None), judged={"drift"}, silences=hold) == [
        f"repeat {ENV}/drift"
    ]  # the silence ended and it still fires: said now, not after `repeat`


def test_a_firing_no_channel_took_is_sent_again_by_the_next_check(book: AlertBook) -> None:
    assert _step(book, T0, ("drift", None), judged={"drift"}) == [f"firing {ENV}/drift"]
    alert = book.open[f"{ENV}/drift"]
    book.undelivered(alert.key, "2000-01-01T00:00:00Z")  # another alert of that key: no effect
    assert _step(book, T0 + 1, ("drift", None), judged={"drift"}) == []
    book.undelivered(alert.key, alert.started_at)
    assert _step(book, T0 + 2, ("drift", None), judged={"drift"}) == [f"firing {ENV}/drift"]


def test_stopping_resolves_what_was_sent_and_forgets_the_rest(book: AlertBook) -> None:
    _step(book, T0, ("drift", None), judged={"drift"})
    hold = [Silence("s-1", ENV, "slo", None, until=T0 + 999, reason="x", actor="a")]
    _step(book, T0 + 1, ("drift", None), ("slo", "p99_ms"), judged={"drift", "slo"},
          silences=hold)  # fmt: skip
    out = book.close_all("the environment was stopped", T0 + 2)
    assert [(m.event, m.key) for m in out] == [("resolved", f"{ENV}/drift")]
    assert out[0].summary.endswith("— the environment was stopped") and book.open == {}


def test_an_edited_watcher_record_is_no_record(tmp_path: Path) -> None:
    from cpmai.watch.process import WatcherRecord, alive, stop_watcher, watcher_status

    folders = Home(tmp_path).env(NAME, ENV)
    folders.watch.mkdir(parents=True)
    good = {"pid": os.getpid(), "created": 1.0, "started": "x", "every": "5m", "window": "1h"}
    for junk in ({"pid": "abc"}, {"pid": 1.5}, {"pid": True}, {"pid": -4}, {"created": "now"},
                 {"every": 5}, {"more": 1}):  # fmt: skip
        folders.watcher.write_text(json.dumps({**good, **junk}))
        assert WatcherRecord.read(folders.watcher) is None, junk
        assert watcher_status(tmp_path, NAME, ENV).state == "stopped"
        assert stop_watcher(tmp_path, NAME, ENV) is False  # and never a TypeError
    assert not alive(WatcherRecord(os.getpid(), 0.0, "x", "5m", "1h"))  # another start time


def test_special_files_where_the_watcher_keeps_state_never_block(tmp_path: Path) -> None:
    from cpmai.watch.process import watcher_status
    from cpmai.watch.view import view  # noqa: F401 (imports cleanly)

    folders = Home(tmp_path).env(NAME, ENV)
    folders.watch.mkdir(parents=True)
    for path in (folders.watcher, folders.alert_state, folders.checks, folders.alerts):
        os.mkfifo(path)
    done: list[Any] = []

    def run() -> None:
        done.append(watcher_status(tmp_path, NAME, ENV))
        done.append(AlertBook(folders, NAME, ENV))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(5)
    assert len(done) == 2, "a FIFO blocked the watcher's reading"
    status, opened = done
    assert status.state == "stopped" and status.last_check is None
    assert opened.damaged and "not a regular file" in opened.damaged
    assert not folders.alert_state.exists()  # the FIFO is gone; the next save writes a file


@pytest.mark.parametrize(
    ("monitoring", "said"),
    [
        ({"schedule": {"every": "1.5m"}}, "monitoring.schedule.every"),  # promtool refuses 1.5m
        ({"schedule": {"every": "0s"}}, "a whole number above zero"),
        ({"alerts": {"channels": [{"type": "webhook", "url": "http://u:pw@h/x"}]}}, "credentials"),
        ({"alerts": {"channels": [{"type": "webhook", "url": "http://h:99999/x"}]}}, "not a port"),
        ({"schedule": {"every": "1h", "window": "5m"}}, "would never be judged"),
        ({"alerts": {"channels": [{"type": "webhook", "url": "https://h/x\x01y"}]}}, "env:VAR"),
        ({"alerts": {"channels": [{"type": "webhook", "url": "ftp://h/x"}]}}, "http://"),
        ({"alerts": {"channels": [{"type": "pager"}]}}, "channels"),
        ({"alerts": {"on": ["drift", "drift"]}}, "each kind once"),
    ],
)
def test_watching_settings_that_cannot_work_are_refused(
    monitoring: dict[str, Any], said: str, tmp_path: Path
) -> None:
    import yaml

    from cpmai.errors import ManifestError
    from cpmai.manifest_file import load_manifest

    doc = {"name": "m", "model": {"path": "m.joblib", "task": "classification"},
           "monitoring": monitoring}  # fmt: skip
    (tmp_path / "cpmai.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ManifestError) as caught:
        load_manifest(tmp_path / "cpmai.yaml", check_files=False)
    assert said in caught.value.message, caught.value.message


def test_a_running_watcher_whose_record_was_damaged_is_still_found_and_stopped(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    from cpmai.watch.process import stop_watcher, watcher_status

    folders = Home(tmp_path).env(NAME, ENV)
    folders.watch.mkdir(parents=True)
    lock = folders.watch / "watcher.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time  # as cpmai.watch holds its lock\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX); os.pwrite(fd, str(os.getpid()).encode(), 0)\n"
        "print('held', flush=True); time.sleep(60)\n")], stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        folders.watcher.write_text("{ damaged")
        status = watcher_status(tmp_path, NAME, ENV)
        assert (status.state, status.pid) == ("running", holder.pid)
        assert stop_watcher(tmp_path, NAME, ENV) is True
        holder.wait(10)
        assert watcher_status(tmp_path, NAME, ENV).state == "stopped"
    finally:
        holder.kill()
        holder.wait()


def test_deploy_warns_of_channels_whose_variables_are_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from cpmai.manifest_file import load_manifest
    from cpmai.watch.process import channel_problems

    channels = [
        {"type": "webhook", "url": "env:CPMAI_T_URL", "secret_env": "CPMAI_T_SECRET"},
        {"type": "email", "to": ["a@b"], "username_env": "CPMAI_T_USER"},
        {"type": "file", "path": "out.jsonl"},
    ]
    doc = {"name": "m", "model": {"path": "m.joblib", "task": "classification"},
           "monitoring": {"alerts": {"channels": channels}}}  # fmt: skip
    (tmp_path / "cpmai.yaml").write_text(yaml.safe_dump(doc))
    manifest = load_manifest(tmp_path / "cpmai.yaml", check_files=False)
    for name in ("CPMAI_T_URL", "CPMAI_T_SECRET", "CPMAI_T_USER"):
        monkeypatch.delenv(name, raising=False)
    problems = channel_problems(manifest)
    assert len(problems) == 2
    assert "$CPMAI_T_SECRET, $CPMAI_T_URL" in problems[0] or "$CPMAI_T_URL" in problems[0]
    assert "$CPMAI_T_USER" in problems[1]
    monkeypatch.setenv("CPMAI_T_URL", "https://h/x")
    monkeypatch.setenv("CPMAI_T_SECRET", "s")
    monkeypatch.setenv("CPMAI_T_USER", "u")
    assert channel_problems(manifest) == []


def test_lines_that_are_not_the_watchers_are_counted_not_shown(tmp_path: Path) -> None:
    from cpmai.watch.book import read_events

    path = tmp_path / "alerts.jsonl"
    path.write_text('{"type": "event", "event": "firing", "key": "k"}\n7\n{"a": 1}\nnot json\n')
    events = read_events(path)
    assert events == [{"type": "event", "event": "firing", "key": "k"},
                      {"type": "unreadable", "lines": 3}]  # fmt: skip
