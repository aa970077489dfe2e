"""The watcher, for real: `cpmai deploy` starts it, shifted traffic makes an alert fire, the
alert reaches a webhook (signed), an SMTP server or a file once, repeats never, resolves when the
traffic is calm again; deliveries retried until the receiver is up; silences; an automatic
rollback after a sustained SLO breach with no request lost; a damaged state file and a killed
watcher. Everything on 127.0.0.1, every wait bounded. Then the alert lifecycle in process
(`AlertBook.step` with hand-made verdicts)."""

from __future__ import annotations

import contextlib
import email
import email.policy
import http.client
import importlib.util
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from _receivers import Receiver as Hook
from _receivers import receivers

from conftest import run_cpmai
from serving_helpers import free_port

NAME = "churn-classifier"
ENV = "staging"
SECRET = "watch-test-secret"
SECRET_ENV = "CPMAI_TEST_WATCH_SECRET"
TESTS = Path(__file__).resolve().parent
T = TypeVar("T")


# --- waiting ---------------------------------------------------------------------------------


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    *,
    every: float = 0.1,
    log: Path | None = None,
) -> T:
    """Poll `probe` until it returns something true; fail after `timeout` seconds, with the end
    of `log` (a watcher.log) when given."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = ""
            if log is not None and log.exists():
                tail = "\nwatcher.log:\n" + "\n".join(log.read_text().splitlines()[-15:])
            raise AssertionError(f"{what}: not within {timeout:g} s{tail}")
        time.sleep(every)


# --- the project -----------------------------------------------------------------------------


def load(manifest: Path) -> Any:
    """PyYAML reads `on:` as True (YAML 1.1); cpmai reads YAML 1.2, where it is a key."""
    doc = yaml.safe_load(manifest.read_text())
    for section in (doc.get("monitoring", {}).get("triggers", {}), doc.get("monitoring", {})):
        if True in section:
            section["on"] = section.pop(True)
    return doc


def write_manifest(
    manifest: Path,
    channels: list[dict[str, Any]],
    *,
    envs: tuple[str, ...] = (ENV,),
    window: str = "30s",
    repeat: str = "1h",
    retries: int = 5,
    slo: dict[str, Any] | None = None,
) -> Path:
    """The churn example watched every second over a short window, with quick gates, its drift
    bound low enough that `--shift`-like traffic drifts as a dataset, no latency SLO to miss
    on a busy machine (unless `slo`), and no triggers."""
    doc = load(manifest)
    doc["gates"] = {
        "metrics": {"accuracy": ">= 0.7"},
        "latency": {"p99_ms": 1000, "concurrency": 1, "duration_s": 0.3},
        "max_size_mb": 50,
    }
    doc["slo"] = slo or {"p99_ms": 5000, "error_rate": 0.5}
    doc["monitoring"] = {
        "drift": {"threshold": 0.1, "share": 0.2},
        "schedule": {"every": "1s", "window": window, "min_requests": 5},
        "alerts": {"channels": channels, "repeat": repeat, "retries": retries, "backoff_s": 0.2},
    }
    doc["environments"] = {env: {"target": "local", "port": free_port()} for env in envs}
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return manifest


def port_of(manifest: Path, env: str = ENV) -> int:
    return int(load(manifest)["environments"][env]["port"])


def watch_dir(home: Path, env: str = ENV) -> Path:
    return home / "watch" / NAME / env


def lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a file (none when it does not exist yet)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def ledger(home: Path, action: str | None = None) -> list[dict[str, Any]]:
    return [e for e in lines(home / "ledger.jsonl") if action is None or e["action"] == action]


def alive(pid: int) -> bool:
    """Whether `pid` is a running (not zombie) process."""
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


class Cleanup:
    """What a test started, stopped afterwards whatever happened: `cpmai stop` for every
    environment, then SIGKILL by PID for any cpmai process (watcher, server) still running."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.envs: set[str] = {ENV}
        self.pids: set[int] = set()

    def remember(self) -> None:
        """Note the PIDs the home's records name now (a watcher replaced later stays known)."""
        for env in self.envs:
            for path in (watch_dir(self.home, env) / "watcher.json",
                         self.home / "runs" / NAME / env / "run.json"):  # fmt: skip
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    self.pids.add(int(json.loads(path.read_text())["pid"]))

    def close(self) -> None:
        import psutil

        self.remember()
        from cpmai.lifecycle import stop
        from cpmai.targets.local import LocalTarget

        for env in sorted(self.envs):
            with contextlib.suppress(Exception):  # `cpmai stop`: the watcher, then the server
                stop(self.home, NAME, env, actor="test-cleanup")
            with contextlib.suppress(Exception):
                LocalTarget(self.home, NAME, env).stop()
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                if pid != os.getpid() and "cpmai" in " ".join(process.cmdline()):
                    process.kill()
                    process.wait(5)


@pytest.fixture
def cleanup(home: Path) -> Iterator[Cleanup]:
    done = Cleanup(home)
    try:
        yield done
    finally:
        done.close()


# --- traffic ---------------------------------------------------------------------------------

_TRAIN: dict[Path, Any] = {}


def customers(folder: Path, rows: int, seed: int, *, shift: bool = False) -> Any:
    """New customers from the example's own generator (train.py); `shift` as traffic.py
    --shift makes them: tenure down by 20 months, 90% on two-year contracts."""
    import numpy as np

    if folder not in _TRAIN:
        spec = importlib.util.spec_from_file_location(f"churn_train_{len(_TRAIN)}",
                                                      folder / "train.py")  # fmt: skip
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _TRAIN[folder] = module
    train = _TRAIN[folder]
    frame = train.make_customers(rows, seed)
    if shift:
        rng = np.random.default_rng(seed)
        frame["tenure_months"] = (frame["tenure_months"] - 20).clip(lower=0)
        frame["contract"] = np.where(rng.random(rows) < 0.9, "two-year", frame["contract"])
    return frame[train.NUMERIC + train.CATEGORICAL]


def send(port: int, frame: Any, per_request: int = 50) -> int:
    """POST the rows to /invocations, `per_request` at a time; every answer must be 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    sent = 0
    try:
        for start in range(0, len(frame), per_request):
            chunk = frame.iloc[start : start + per_request]
            body = json.dumps({"dataframe_split": json.loads(chunk.to_json(orient="split"))})
            conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
            reply = conn.getresponse()
            answer = reply.read()
            assert reply.status == 200, answer[:300]
            sent += 1
    finally:
        conn.close()
    return sent


def drifted(folder: Path, port: int, seed: int = 11) -> None:
    """500 shifted customers in 10 requests: 2 of 8 features drift (share 0.25 >= 0.2)."""
    send(port, customers(folder, 500, seed, shift=True))


def calm(folder: Path, port: int, rows: int = 6000) -> None:
    """Customers like the reference data, enough to outweigh 500 shifted ones in the window."""
    send(port, customers(folder, rows, 23), per_request=100)


class Load:
    """Threads sending one-row requests to the v2 infer endpoint on keep-alive connections,
    counting every outcome: (200, served version), another status, or an exception's name."""

    def __init__(self, folder: Path, port: int, threads: int = 3, pause: float = 0.02) -> None:
        rows = customers(folder, 200, 31).to_dict(orient="records")
        self.bodies = [
            json.dumps({"inputs": [
                {"name": k, "shape": [1, 1], "datatype": "BYTES" if isinstance(v, str) else "FP64",
                 "data": [v]} for k, v in row.items()]})
            for row in rows
        ]  # fmt: skip
        self.port = port
        self.pause = pause
        self.outcomes: Counter[Any] = Counter()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(threads)]  # fmt: skip

    def start(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def _run(self, offset: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        deadline = time.monotonic() + 120  # stops by itself whatever happens
        i = offset
        while not self.stopping.is_set() and time.monotonic() < deadline:
            body = self.bodies[i % len(self.bodies)]
            i += 1
            try:
                conn.request("POST", f"/v2/models/{NAME}/infer", body,
                             {"Content-Type": "application/json"})  # fmt: skip
                reply = conn.getresponse()
                data = reply.read()
                outcome: Any = (reply.status, json.loads(data).get("model_version"))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                outcome = type(exc).__name__
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
            with self.lock:
                self.outcomes[outcome] += 1
            self.stopping.wait(self.pause)
        conn.close()

    def finish(self) -> Counter[Any]:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)
        return self.outcomes


# --- receivers -------------------------------------------------------------------------------


@pytest.fixture
def hooks() -> Iterator[Callable[[int], Hook]]:
    """Starts HTTP receivers on 127.0.0.1 (port 0: any free one); all stopped afterwards."""
    with receivers() as start:
        yield start


@dataclass
class Mailbox:
    port: int
    envelopes: list[Any] = field(default_factory=list)


@pytest.fixture
def smtp_server() -> Iterator[Mailbox]:
    from aiosmtpd.controller import Controller

    box = Mailbox(free_port())

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            box.envelopes.append(envelope)
            return "250 Message accepted"

    controller = Controller(Handler(), hostname="127.0.0.1", port=box.port, ready_timeout=10)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


def deliveries(home: Path, env: str = ENV) -> list[dict[str, Any]]:
    return [e for e in lines(watch_dir(home, env) / "alerts.jsonl") if e["type"] == "delivery"]


def watcher_row(cli: Any) -> dict[str, Any]:
    status = cli("status", NAME, "--json")
    assert status.code == 0, status.err
    [row] = [r for r in json.loads(status.out)["environments"] if r["env"] == ENV]
    watcher: dict[str, Any] = row["watcher"]
    return watcher


# --- end to end --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_drift_fires_once_signed_and_resolves_when_the_traffic_is_calm(
    churn: Path,
    home: Path,
    cli: Any,
    hooks: Callable[[int], Hook],
    cleanup: Cleanup,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cpmai.alerts.channels import verify_signature

    hook = hooks(0)
    webhook = {"type": "webhook", "url": hook.url, "secret_env": SECRET_ENV}
    manifest = write_manifest(churn, [webhook])
    folder, port, log = churn.parent, port_of(manifest), watch_dir(home) / "watcher.log"
    monkeypatch.setenv(SECRET_ENV, SECRET)  # the watcher inherits the deploy's environment
    deployed = run_cpmai("deploy", str(manifest), "--env", ENV)
    cleanup.remember()
    assert deployed.code == 0, deployed.err
    assert "watcher  pid" in deployed.err
    watcher = watcher_row(cli)
    assert watcher["state"] == "running" and watcher["every"] == "1s", watcher
    pid = watcher["pid"]
    assert alive(pid)

    drifted(folder, port)
    [firing] = wait_for("a firing at the receiver", hook.bodies, 20, log=log)
    assert firing["event"] == "firing" and firing["key"] == f"{ENV}/drift"
    assert firing["text"].startswith("[FIRING]") and firing["version"] == "1.0.0"
    assert "tenure_months" in firing["details"]["drifted"]
    assert watcher_row(cli)["firing"] == 1  # state.json is saved before anything is sent
    _, headers, body = hook.got[0]
    stamp = headers["X-Cpmai-Timestamp"]
    assert headers["X-Cpmai-Delivery-Id"] == firing["id"]
    assert abs(int(stamp) - time.time()) < 60
    signature = headers["X-Cpmai-Signature"]
    assert verify_signature(SECRET, firing["id"], stamp, body, signature)
    assert not verify_signature("another secret", firing["id"], stamp, body, signature)

    # the drift is still there check after check: one alert, not one a check
    def drift_checks_since_firing() -> int:
        checks = lines(watch_dir(home) / "checks.jsonl")
        return sum(1 for c in checks if c["at"] > firing["at"]
                   and any(f["kind"] == "drift" for f in c["findings"]))  # fmt: skip

    wait_for("three more checks finding the drift", lambda: drift_checks_since_firing() >= 3, 15,
             log=log)  # fmt: skip
    assert [b["event"] for b in hook.bodies()] == ["firing"]

    calm(folder, port)
    wait_for("a resolved at the receiver", lambda: len(hook.got) >= 2, 20, log=log)
    time.sleep(0.5)  # anything sent after it would be a bug: give it a moment to show
    first, resolved = hook.bodies()
    assert first == firing and len(hook.got) == 2
    assert resolved["event"] == "resolved" and resolved["status"] == "resolved"
    assert resolved["key"] == firing["key"] and resolved["started_at"] == firing["started_at"]
    assert resolved["text"].startswith("[RESOLVED]") and resolved["resolved_at"]
    _, headers, body = hook.got[1]
    assert headers["X-Cpmai-Delivery-Id"] == resolved["id"] != firing["id"]
    assert verify_signature(SECRET, resolved["id"], headers["X-Cpmai-Timestamp"], body,
                            headers["X-Cpmai-Signature"])  # fmt: skip

    shown = cli("alerts", NAME, "--json")
    assert shown.code == 0, shown.err
    [env] = json.loads(shown.out)["environments"]
    assert env["env"] == ENV and env["firing"] == [] and env["failed_deliveries"] == 0
    assert env["watcher"]["state"] == "running" and env["watcher"]["pid"] == pid
    events = [(e["event"], e["key"]) for e in env["events"] if e["type"] == "event"]
    assert events == [("firing", f"{ENV}/drift"), ("resolved", f"{ENV}/drift")]
    sent = [(e["event"], e["ok"]) for e in env["events"] if e["type"] == "delivery"]
    assert sent == [("firing", True), ("resolved", True)]
    human = cli("alerts", NAME)
    assert human.code == 0 and "RESOLVED" in human.out and "watcher running" in human.out

    stopped = cli("stop", NAME, "--env", ENV)
    assert stopped.code == 0, stopped.err
    wait_for("the watcher gone after cpmai stop", lambda: not alive(pid), 10)
    assert watcher_row(cli)["state"] == "stopped"


@pytest.mark.slow
def test_an_alert_is_retried_until_the_receiver_is_up(
    churn: Path, home: Path, cli: Any, hooks: Callable[[int], Hook], cleanup: Cleanup
) -> None:
    port_down = free_port()  # nothing listens there yet
    webhook = {"type": "webhook", "url": f"http://127.0.0.1:{port_down}/hook", "timeout_s": 2}
    manifest = write_manifest(churn, [webhook], retries=8)
    log = watch_dir(home) / "watcher.log"
    deployed = cli("deploy", manifest, "--env", ENV)
    cleanup.remember()
    assert deployed.code == 0, deployed.err

    drifted(churn.parent, port_of(manifest))
    wait_for("two failed attempts", lambda: len(deliveries(home)) >= 2, 20, log=log)
    hook = hooks(port_down)
    [firing] = wait_for("the firing, once the receiver is up", hook.bodies, 15, log=log)
    assert firing["event"] == "firing" and firing["key"] == f"{ENV}/drift"

    attempts = [d for d in deliveries(home) if d["message_id"] == firing["id"]]
    *failed, ok = attempts
    assert len(failed) >= 2, attempts
    assert [a["attempt"] for a in attempts] == list(range(1, len(attempts) + 1))
    assert all(not a["ok"] and not a["final"] and "cannot connect" in a["error"] for a in failed)
    assert ok["ok"] and ok["final"] and ok["error"] is None
    assert ok["channel"] == f"webhook http://127.0.0.1:{port_down}/hook"
    assert not list((watch_dir(home) / "outbox").glob("*.json"))  # nothing left to deliver


@pytest.mark.slow
def test_one_dead_channel_does_not_make_the_others_hear_an_alert_twice(
    churn: Path, home: Path, cli: Any, cleanup: Cleanup
) -> None:
    """A firing a channel took is not sent again because another channel gave up on it; a
    firing that no channel took is (the next check that still finds it)."""
    out = churn.parent / "out.jsonl"
    dead = {"type": "webhook", "url": f"http://127.0.0.1:{free_port()}/hook", "timeout_s": 1}
    manifest = write_manifest(churn, [{"type": "file", "path": str(out)}, dead], retries=1)
    log = watch_dir(home) / "watcher.log"
    assert cli("deploy", manifest, "--env", ENV).code == 0
    cleanup.remember()
    drifted(churn.parent, port_of(manifest))
    wait_for("the dead channel given up", lambda: [d for d in deliveries(home) if d["final"]
                                                   and not d["ok"]], 20, log=log)  # fmt: skip
    checks = len(lines(watch_dir(home) / "checks.jsonl"))
    wait_for("three more checks", lambda: len(lines(watch_dir(home) / "checks.jsonl"))
             >= checks + 3, 15, log=log)  # fmt: skip
    firings = [m for m in lines(out) if m["key"] == f"{ENV}/drift"]
    assert [m["event"] for m in firings] == ["firing"], firings


@pytest.mark.slow
def test_a_firing_alert_arrives_by_email(
    churn: Path, home: Path, cli: Any, smtp_server: Mailbox, cleanup: Cleanup
) -> None:
    channel = {"type": "email", "to": ["ops@example.com"], "sender": "cpmai@example.com",
               "smtp": f"127.0.0.1:{smtp_server.port}"}  # fmt: skip
    manifest = write_manifest(churn, [channel])
    deployed = cli("deploy", manifest, "--env", ENV)
    cleanup.remember()
    assert deployed.code == 0, deployed.err

    drifted(churn.parent, port_of(manifest))
    [envelope] = wait_for("a mail", lambda: list(smtp_server.envelopes), 20,
                          log=watch_dir(home) / "watcher.log")  # fmt: skip
    assert envelope.mail_from == "cpmai@example.com" and envelope.rcpt_tos == ["ops@example.com"]
    mail = email.message_from_bytes(envelope.content, policy=email.policy.default)
    assert mail["Subject"].startswith(f"[FIRING] {NAME} {ENV} 1.0.0: ")
    assert "drifted" in mail["Subject"]
    body = mail.get_body().get_content()  # type: ignore[union-attr]
    assert f"{ENV}/drift (firing)" in body and "tenure_months" in body


@pytest.mark.slow
def test_silences_hold_alerts_back_until_they_expire_or_are_ended(
    churn: Path, home: Path, cli: Any, cleanup: Cleanup
) -> None:
    """staging: a 6 s silence of everything; qa: an hour's silence of drift, ended early by
    `cpmai alerts expire`. Both environments drift at once; each silence holds only its own."""
    from cpmai.clock import epoch

    out = churn.parent / "alerts-out.jsonl"
    manifest = write_manifest(churn, [{"type": "file", "path": str(out)}], envs=(ENV, "qa"))
    cleanup.envs.add("qa")
    for env in (ENV, "qa"):
        deployed = cli("deploy", manifest, "--env", env)
        cleanup.remember()
        assert deployed.code == 0, deployed.err

    short = cli("alerts", "silence", NAME, "--env", ENV, "--for", "6s", "--reason", "maintenance",
                "--json")  # fmt: skip
    assert short.code == 0, short.err
    short_doc = json.loads(short.out)
    long = cli("alerts", "silence", NAME, "--env", "qa", "--for", "1h", "--reason", "drill",
               "--kind", "drift")  # fmt: skip
    assert long.code == 0, long.err
    recorded = ledger(home, "silence")
    assert [(e["env"], e["details"]["reason"]) for e in recorded] == [
        (ENV, "maintenance"), ("qa", "drill")
    ]  # fmt: skip
    assert recorded[0]["details"]["id"] == short_doc["id"]
    assert recorded[0]["actor"] == "tester@example.com"
    history = cli("history", NAME, "--json")
    assert history.code == 0 and short_doc["id"] in history.out
    long_id = recorded[1]["details"]["id"]

    for env in (ENV, "qa"):
        drifted(churn.parent, port_of(manifest, env))

    def held(env: str) -> list[dict[str, Any]]:
        return [e for e in lines(watch_dir(home, env) / "alerts.jsonl") if e["type"] == "silenced"]

    [held_staging] = wait_for("staging's drift held back", lambda: held(ENV), 15)
    assert held_staging["silence"] == short_doc["id"] and held_staging["key"] == f"{ENV}/drift"
    wait_for("qa's drift held back", lambda: held("qa"), 15)
    assert lines(out) == []  # nothing delivered while the silences hold
    shown = json.loads(cli("alerts", NAME, "--env", "qa", "--json").out)["environments"][0]
    assert [s["id"] for s in shown["silences"]] == [long_id]
    assert [(a["key"], a["silenced_by"]) for a in shown["firing"]] == [("qa/drift", long_id)], shown

    [firing] = wait_for("staging's firing once its silence expired", lambda: lines(out), 15)
    assert (firing["env"], firing["event"], firing["key"]) == (ENV, "firing", f"{ENV}/drift")
    assert epoch(firing["at"]) >= epoch(short_doc["until"]) - 1  # `at` is in whole seconds
    time.sleep(1.5)  # more checks: qa stays held back (its own silence), staging sent once
    assert [(m["env"], m["event"]) for m in lines(out)] == [(ENV, "firing")]

    ended = cli("alerts", "expire", NAME, long_id, "--env", "qa")
    assert ended.code == 0 and f"silence {long_id} ended" in ended.out
    assert ledger(home)[-1]["action"] == "unsilence"
    wait_for("qa's firing once its silence was ended", lambda: len(lines(out)) >= 2, 15)
    assert [(m["env"], m["event"], m["key"]) for m in lines(out)] == [
        (ENV, "firing", f"{ENV}/drift"), ("qa", "firing", "qa/drift")
    ]  # fmt: skip
    again = cli("alerts", "expire", NAME, long_id, "--env", "qa")  # ended already
    assert again.code == 2 and "no silence" in again.err


def test_silence_refuses_bad_input_with_exit_2_and_no_traceback(
    churn: Path, home: Path, cli: Any
) -> None:
    manifest = write_manifest(churn, [])
    assert cli("package", manifest).code == 0
    base = ["alerts", "silence", NAME, "--env", ENV]
    cases = [
        ([*base, "--for", "0s", "--reason", "x"], "'0s'"),
        ([*base, "--for", "200d", "--reason", "x"], "at most 90d"),
        ([*base, "--for", "soon", "--reason", "x"], "'soon' is not a duration"),
        ([*base, "--for", "1h", "--reason", "x", "--kind", "nonsense"], "--kind 'nonsense'"),
        ([*base, "--for", "1h", "--reason", ""], "--reason"),
        ([*base, "--for", "1h", "--reason", "   "], "--reason"),
        (["alerts", "silence", "nope", "--env", ENV, "--for", "1h", "--reason", "x"],
         "no model named 'nope'"),
        (["alerts", "expire", NAME, "s-00000000", "--env", ENV], "no silence 's-00000000'"),
        (["alerts", "nope"], "no model named 'nope'"),
    ]  # fmt: skip
    for args, said in cases:
        result = cli(*args)
        assert result.code == 2, (args, result)
        assert said in result.err and "Traceback" not in result.err, (args, result.err)
    assert not ledger(home, "silence")
    # the same through a real process: exit status and streams as a script sees them
    outcome = run_cpmai(*base, "--for", "200d", "--reason", "x")
    assert outcome.code == 2 and outcome.out == "" and "at most 90d" in outcome.err
    assert "Traceback" not in outcome.err


def test_silence_of_an_unknown_environment_is_refused(churn: Path, home: Path, cli: Any) -> None:
    manifest = write_manifest(churn, [{"type": "file", "path": str(churn.parent / "out.jsonl")}])
    assert cli("package", manifest).code == 0
    result = cli("alerts", "silence", NAME, "--env", "nowhere", "--for", "1h", "--reason", "x")
    assert result.code == 2 and "nowhere" in result.err, result
    assert not ledger(home, "silence")
    tested = cli("alerts", "test", NAME, "--env", "nowhere")  # sent as if from `nowhere`
    assert tested.code == 2 and "nowhere" in tested.err, tested


@pytest.mark.slow
def test_a_sustained_slo_breach_rolls_back_by_itself_without_losing_a_request(
    churn: Path, home: Path, cli: Any, cleanup: Cleanup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1.0.0 is the churn model; 1.1.0 the same wrapped in SlowClassifier (80 ms a call)
    against a 50 ms p99 SLO, with `auto_rollback_on: [slo], for: 2`. Under load, the watcher
    puts 1.0.0 back by itself; the load sees no failed request before, during or after."""
    import joblib

    # the servers (and the watcher) unpickle _custom_model.SlowClassifier: the tests folder
    # on their path; this process pickles it
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p))  # fmt: skip
    monkeypatch.syspath_prepend(str(TESTS))
    from _custom_model import SlowClassifier

    folder = churn.parent
    out = folder / "alerts-out.jsonl"
    manifest = write_manifest(churn, [{"type": "file", "path": str(out)}],
                              slo={"p99_ms": 5000, "error_rate": 0.01})  # fmt: skip
    first = cli("deploy", manifest, "--env", ENV)
    cleanup.remember()
    assert first.code == 0, first.err
    port = port_of(manifest)

    joblib.dump(SlowClassifier(joblib.load(folder / "model.joblib"), delay_s=0.08),
                folder / "slow.joblib")  # fmt: skip
    doc = load(manifest)
    doc["model"]["path"] = "slow.joblib"
    doc["slo"] = {"p99_ms": 50, "error_rate": 0.01}
    doc["environments"][ENV]["rollout"] = {"auto_rollback_on": ["slo"], "for": 2}
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))

    load_ = Load(folder, port).start()
    try:
        second = cli("deploy", manifest, "--env", ENV)
        cleanup.remember()
        assert second.code == 0, second.err
        assert "deployed churn-classifier 1.1.0 in staging (was 1.0.0)" in second.out
        [rolled] = wait_for("an automatic rollback", lambda: ledger(home, "rollback"), 30,
                            log=watch_dir(home) / "watcher.log")  # fmt: skip
        time.sleep(1.5)  # and on, after the rollback
    finally:
        outcomes = load_.finish()
    watched = [c for c in lines(watch_dir(home) / "checks.jsonl") if c["version"] == "1.1.0"]
    breached = [c for c in watched if any(f["kind"] == "slo" for f in c["findings"])]
    assert len(breached) >= 2 and breached[-1]["rollback"]["to"] == "1.0.0", watched
    assert set(outcomes) <= {(200, "1.0.0"), (200, "1.1.0")}, outcomes  # no failure of any kind
    assert outcomes[(200, "1.1.0")] >= 10 and outcomes[(200, "1.0.0")] >= 10, outcomes

    assert rolled["actor"] == "cpmai-watcher" and rolled["version"] == "1.0.0"
    details = rolled["details"]
    assert details["result"] == "live" and details["previous"] == "1.1.0"
    assert "automatic rollback: slo breached in 2 checks in a row" in details["reason"]
    evidence = details["evidence"]
    assert evidence["kinds"] == ["slo"] and evidence["checks"] == {"slo": 2}
    [finding] = evidence["findings"]
    assert finding["kind"] == "slo" and finding["feature"] == "p99_ms"
    assert finding["details"]["measured"] > 50 and finding["details"]["requests"] >= 5

    status = cli("status", NAME, "--json")
    [row] = json.loads(status.out)["environments"]
    assert row["version"] == "1.0.0" and row["server"]["live"] == "1.0.0", row
    assert row["how"] == "rollback" and row["watcher"]["state"] == "running"

    def sent() -> list[dict[str, Any]]:
        return [m for m in lines(out) if m["kind"] == "rollback"]

    [news] = wait_for("the rollback alert in the file", sent, 10)
    assert news["event"] == "firing" and news["version"] == "1.0.0"
    assert news["text"].startswith(f"[FIRING] {NAME} {ENV} 1.0.0: rolled back from 1.1.0 to 1.0.0")
    assert news["details"]["to"] == "1.0.0" and news["details"]["kinds"] == ["slo"]

    # 1.1.0's SLO alert: fired, then resolved as its version is no longer live
    def slo_events() -> list[str]:
        return [m["event"] for m in lines(out) if m["key"] == f"{ENV}/slo/p99_ms"]

    wait_for("1.1.0's SLO alert resolved", lambda: slo_events() == ["firing", "resolved"], 10)
    [resolved] = [m for m in lines(out) if m["key"] == f"{ENV}/slo/p99_ms"][1:]
    assert resolved["version"] == "1.1.0" and "1.1.0 is no longer live" in resolved["summary"]

    # a rollback judged on a version that is no longer live is not made (a rollout came first)
    from cpmai.errors import UsageError
    from cpmai.lifecycle import rollback

    with pytest.raises(UsageError, match=r"1\.1\.0 is no longer live"):
        rollback(home, NAME, ENV, actor="tester@example.com", expect="1.1.0")
    assert len(ledger(home, "rollback")) == 1


@pytest.mark.slow
def test_a_damaged_state_file_and_a_killed_watcher_are_survived(
    churn: Path, home: Path, cli: Any, cleanup: Cleanup
) -> None:
    folder = watch_dir(home)
    folder.mkdir(parents=True)
    (folder / "state.json").write_bytes(b"\x00\xff{not json\x9c")
    manifest = write_manifest(churn, [])
    deployed = cli("deploy", manifest, "--env", ENV)
    cleanup.remember()
    assert deployed.code == 0, deployed.err
    assert "warning" not in deployed.err
    log = folder / "watcher.log"
    wait_for("a check", lambda: lines(folder / "checks.jsonl"), 10, log=log)
    said = log.read_text()
    assert "state.json could not be read" in said and "start afresh" in said, said
    state = wait_for("state.json rewritten", lambda: _state(folder), 10, log=log)
    assert state["format"] == "cpmai-watch-state/1" and state["open"] == {}

    first = watcher_row(cli)
    assert first["state"] == "running", first
    os.kill(first["pid"], signal.SIGKILL)
    wait_for("the watcher seen down", lambda: watcher_row(cli)["state"] == "down", 5)
    human = cli("status")
    assert "watcher: down" in human.err and f"watcher process {first['pid']}" in human.err
    shown = cli("alerts", NAME)
    assert shown.code == 0 and "watcher down" in shown.out

    again = cli("deploy", manifest, "--env", ENV)  # the same version: the watcher is back
    cleanup.remember()
    assert again.code == 0, again.err
    second = watcher_row(cli)
    assert second["state"] == "running" and second["pid"] != first["pid"], second
    checks = len(lines(folder / "checks.jsonl"))
    wait_for("the new watcher checking", lambda: len(lines(folder / "checks.jsonl")) > checks, 10,
             log=log)  # fmt: skip


@pytest.mark.slow
def test_a_new_version_is_watched_on_its_own_schedule(
    churn: Path, home: Path, cli: Any, cleanup: Cleanup
) -> None:
    """1.0.0 is checked hourly, 1.1.0 every second: once 1.1.0 is live, the running watcher
    checks it on 1.1.0's schedule, not an hour later."""
    manifest = write_manifest(churn, [])
    doc = load(manifest)
    doc["monitoring"]["schedule"].update(every="1h", window="1h")
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    first = cli("deploy", manifest, "--env", ENV)
    cleanup.remember()
    assert first.code == 0, first.err
    checks = watch_dir(home) / "checks.jsonl"
    log = watch_dir(home) / "watcher.log"
    wait_for("the first check", lambda: lines(checks), 10, log=log)

    doc["monitoring"]["schedule"]["every"] = "1s"
    doc["description"] = "checked every second"
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    second = cli("deploy", manifest, "--env", ENV)
    cleanup.remember()
    assert second.code == 0, second.err
    wait_for("a check of 1.1.0", lambda: [c for c in lines(checks) if c["version"] == "1.1.0"],
             5, log=log)  # fmt: skip
    wait_for("status showing 1.1.0's schedule", lambda: watcher_row(cli)["every"] == "1s", 5)


def _state(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def test_alerts_test_names_the_failing_channel_and_reaches_the_working_one(
    churn: Path, home: Path, cli: Any, hooks: Callable[[int], Hook]
) -> None:
    hook = hooks(0)
    dead = f"http://127.0.0.1:{free_port()}/down"
    manifest = write_manifest(
        churn, [{"type": "webhook", "url": hook.url}, {"type": "webhook", "url": dead}]
    )
    assert cli("package", manifest).code == 0
    result = cli("alerts", "test", NAME, "--env", ENV)
    assert result.code == 6, result
    assert f"✓ webhook {hook.url}" in result.out and f"✗ webhook {dead}" in result.out
    assert "1 of 2 channel(s) failed" in result.err and dead in result.err
    assert "cannot connect" in result.err and hook.url not in result.err
    [message] = hook.bodies()
    assert message["event"] == "test" and message["status"] == "test"
    assert message["text"].startswith(f"[TEST] {NAME} {ENV} 1.0.0: ")
    as_json = cli("alerts", "test", NAME, "--env", ENV, "--json")
    assert as_json.code == 6
    channels = json.loads(as_json.out)["channels"]
    assert [c["ok"] for c in channels] == [True, False]
    assert len(hook.got) == 2


# --- the lifecycle, in process -------------------------------------------------------------------


@pytest.fixture
def book(tmp_path: Path) -> Any:
    from cpmai.home import Home
    from cpmai.watch.book import AlertBook

    return AlertBook(Home(tmp_path).env(NAME, ENV), NAME, ENV)


def verdict(*findings: tuple[str, str | None], judged: tuple[str, ...] = ("drift",)) -> Any:
    from cpmai.watch.findings import Finding, Verdict

    return Verdict(
        [Finding(kind, feature, f"{kind} breached", {"n": 1}) for kind, feature in findings],  # type: ignore[arg-type]
        set(judged),
    )


T0 = 1_800_000_000.0


def test_book_fires_once_then_repeats_after_repeat_s(book: Any) -> None:
    def step(at: float) -> list[str]:
        out = book.step(verdict(("drift", None)), version="1.0.0", repeat_s=60, silences=[],
                        now=at)  # fmt: skip
        return [m.event for m in out]

    assert step(T0) == ["firing"]
    assert step(T0 + 1) == [] and step(T0 + 59) == []
    assert step(T0 + 60) == ["repeat"]
    assert step(T0 + 61) == [] and step(T0 + 119) == []
    assert step(T0 + 120) == ["repeat"]
    [alert] = book.open.values()
    assert alert.key == f"{ENV}/drift" and alert.checks == 7
    events = [e for e in lines(book.folders.alerts) if e["type"] == "event"]
    assert [e["event"] for e in events] == ["firing", "repeat", "repeat"]


def test_book_resolves_only_when_the_kind_was_judged(book: Any) -> None:
    [firing] = book.step(verdict(("slo", "p99_ms"), judged=("slo",)), version="1.0.0",
                         repeat_s=3600, silences=[], now=T0)  # fmt: skip
    assert firing.key == f"{ENV}/slo/p99_ms" and firing.text.startswith("[FIRING]")
    # too few requests to judge the SLO: the alert neither fires again nor resolves
    for i in range(1, 4):
        assert book.step(verdict(judged=("drift",)), version="1.0.0", repeat_s=3600,
                         silences=[], now=T0 + i) == []  # fmt: skip
    assert list(book.open) == [f"{ENV}/slo/p99_ms"]
    [resolved] = book.step(verdict(judged=("slo",)), version="1.0.0", repeat_s=3600,
                           silences=[], now=T0 + 10)  # fmt: skip
    assert (resolved.event, resolved.key, resolved.status) == ("resolved", firing.key, "resolved")
    assert resolved.started_at == firing.started_at and resolved.resolved_at
    assert resolved.id != firing.id and resolved.text.startswith("[RESOLVED]")
    assert book.open == {}
    # a new breach afterwards is a new alert
    [again] = book.step(verdict(("slo", "p99_ms"), judged=("slo",)), version="1.0.0",
                        repeat_s=3600, silences=[], now=T0 + 20)  # fmt: skip
    assert again.event == "firing" and again.started_at != firing.started_at


def test_book_keys_alerts_by_kind_and_feature(book: Any) -> None:
    out = book.step(verdict(("slo", "p99_ms"), ("slo", "p50_ms"), ("drift", None),
                            judged=("slo", "drift")), version="1.0.0", repeat_s=3600,
                    silences=[], now=T0)  # fmt: skip
    assert sorted(m.key for m in out) == [f"{ENV}/drift", f"{ENV}/slo/p50_ms", f"{ENV}/slo/p99_ms"]
    # p50 back within bounds, p99 still out: only p50 resolves
    out = book.step(verdict(("slo", "p99_ms"), ("drift", None), judged=("slo", "drift")),
                    version="1.0.0", repeat_s=3600, silences=[], now=T0 + 1)  # fmt: skip
    assert [(m.event, m.key) for m in out] == [("resolved", f"{ENV}/slo/p50_ms")]


def test_book_silence_holds_back_then_releases(book: Any) -> None:
    from cpmai.watch.book import Silence

    hold = Silence("s-1", ENV, "drift", None, until=T0 + 30, reason="maintenance", actor="a")
    other_env = Silence("s-2", "production", None, None, until=T0 + 999, reason="x", actor="a")
    other_kind = Silence("s-3", ENV, "slo", None, until=T0 + 999, reason="x", actor="a")
    silences = [other_env, other_kind, hold]

    def step(at: float, *findings: tuple[str, str | None]) -> list[str]:
        out = book.step(verdict(*findings, judged=("drift", "slo")), version="1.0.0",
                        repeat_s=3600, silences=silences, now=at)  # fmt: skip
        return [f"{m.event} {m.key}" for m in out]

    assert step(T0, ("drift", None)) == []
    assert step(T0 + 10, ("drift", None)) == []
    [alert] = book.open.values()
    assert alert.silenced_by == "s-1" and alert.sent_at is None and alert.checks == 2
    held = [e for e in lines(book.folders.alerts) if e["type"] == "silenced"]
    assert [e["silence"] for e in held] == ["s-1"]  # recorded once, not once a check
    assert step(T0 + 30, ("drift", None)) == [f"firing {ENV}/drift"]  # expired: sent as it is
    assert book.open[f"{ENV}/drift"].silenced_by is None
    assert step(T0 + 31, ("drift", None)) == []


def test_book_an_alert_resolved_while_silenced_is_never_sent(book: Any) -> None:
    from cpmai.watch.book import Silence

    hold = [Silence("s-1", ENV, None, None, until=T0 + 999, reason="x", actor="a")]
    assert book.step(verdict(("drift", None)), version="1.0.0", repeat_s=3600, silences=hold,
                     now=T0) == []  # fmt: skip
    assert book.step(verdict(), version="1.0.0", repeat_s=3600, silences=hold, now=T0 + 1) == []
    assert book.open == {}
    events = [e for e in lines(book.folders.alerts) if e["type"] == "event"]
    assert [(e["event"], e["sent"]) for e in events] == [("resolved", False)]


def test_book_an_alert_of_a_version_no_longer_live_resolves(book: Any) -> None:
    [firing] = book.step(verdict(("slo", "p99_ms"), judged=("slo",)), version="1.1.0",
                         repeat_s=3600, silences=[], now=T0)  # fmt: skip
    assert firing.version == "1.1.0"
    # rolled back: 1.0.0 is live; the check could not judge the SLO yet, yet 1.1.0's alert ends
    [resolved] = book.step(verdict(judged=()), version="1.0.0", repeat_s=3600, silences=[],
                           now=T0 + 1)  # fmt: skip
    assert resolved.event == "resolved" and resolved.key == firing.key
    assert resolved.version == "1.1.0" and "1.1.0 is no longer live" in resolved.summary
    assert book.open == {}


def test_book_a_check_that_could_not_be_made_is_not_resolved_by_a_version_change(
    book: Any,
) -> None:
    from cpmai.watch.findings import failed_check

    [firing] = book.step(failed_check("the log cannot be read"), version="1.0.0", repeat_s=3600,
                         silences=[], now=T0)  # fmt: skip
    assert firing.key == f"{ENV}/check"
    assert book.step(verdict(judged=()), version="1.1.0", repeat_s=3600, silences=[],
                     now=T0 + 1) == []  # fmt: skip
    [resolved] = book.step(verdict(judged=("check",)), version="1.1.0", repeat_s=3600,
                           silences=[], now=T0 + 2)  # fmt: skip
    assert resolved.event == "resolved" and resolved.key == f"{ENV}/check"


def test_book_state_survives_a_restart(book: Any) -> None:
    from cpmai.watch.book import AlertBook

    book.step(verdict(("drift", None)), version="1.0.0", repeat_s=3600, silences=[], now=T0)
    book.streak.version, book.streak.count = "1.0.0", 2
    book.save()
    again = AlertBook(book.folders, NAME, ENV)
    assert again.damaged is None and list(again.open) == [f"{ENV}/drift"]
    assert again.streak.count == 2 and again.checks == 1
    # still open after the restart: not sent a second time
    assert again.step(verdict(("drift", None)), version="1.0.0", repeat_s=3600, silences=[],
                      now=T0 + 1) == []  # fmt: skip


def _state_doc(**changes: Any) -> dict[str, Any]:
    alert: dict[str, Any] = {
        "key": f"{ENV}/drift", "kind": "drift", "feature": None, "version": "1.0.0",
        "summary": "s", "started_at": "2027-01-15T08:00:00Z", "checks": 1,
        "sent_at": "2027-01-15T08:00:00Z", "silenced_by": None, "details": {},
    }  # fmt: skip
    doc: dict[str, Any] = {"format": "cpmai-watch-state/1", "open": {alert["key"]: alert},
                           "streak": {}, "checks": 1}  # fmt: skip
    for path, value in changes.items():
        if path.startswith("alert_"):
            alert[path.removeprefix("alert_")] = value
        else:
            doc[path] = value
    return doc


DAMAGED_STATES = [
    pytest.param(b"\x00\xff junk", id="junk-bytes"),
    pytest.param(b'{"format": "cpmai-watch-state/1", "open": {', id="cut-short"),
    pytest.param(b"[1, 2]", id="a-list"),
    pytest.param(json.dumps(_state_doc(format="other/9")).encode(), id="another-format"),
    pytest.param(json.dumps(_state_doc(checks=None)).encode(), id="checks-null"),
    pytest.param(json.dumps(_state_doc(streak=[])).encode(), id="streak-a-list"),
    pytest.param(json.dumps(_state_doc(open=[])).encode(), id="open-a-list"),
    pytest.param(
        json.dumps(_state_doc(alert_sent_at="yesterday")).encode(),
        id="sent-at-junk",
    ),
    pytest.param(
        json.dumps(_state_doc(alert_checks="3")).encode(),
        id="alert-checks-a-string",
    ),
    pytest.param(
        json.dumps(_state_doc(streak={"version": "1.0.0", "count": "2"})).encode(),
        id="streak-count-a-string",
    ),
]


@pytest.mark.parametrize("data", DAMAGED_STATES)
def test_book_a_damaged_state_file_starts_afresh_and_the_lifecycle_goes_on(
    tmp_path: Path, data: bytes
) -> None:
    """Whatever state.json holds, the book loads (afresh when it cannot use it, and says so)
    and the next steps work: the watcher never dies on its own file."""
    from cpmai.home import Home
    from cpmai.watch.book import AlertBook

    folders = Home(tmp_path).env(NAME, ENV)
    folders.watch.mkdir(parents=True)
    folders.alert_state.write_bytes(data)
    book = AlertBook(folders, NAME, ENV)
    for i in range(3):
        book.step(verdict(("drift", None)), version="1.0.0", repeat_s=3600, silences=[],
                  now=T0 + i)  # fmt: skip
        book.streak.count += 1  # as the watcher's rollback streak counts
        book.save()
    assert list(book.open) == [f"{ENV}/drift"]
    assert AlertBook(folders, NAME, ENV).damaged is None  # what it saved reads back


def test_a_watchers_line_file_is_rotated_not_grown_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cpmai.watch import book

    monkeypatch.setattr(book, "ROTATE_BYTES", 200)
    path = tmp_path / "checks.jsonl"
    for i in range(30):
        book.append_line(path, {"check": i, "padding": "x" * 20})
    kept = [json.loads(line)["check"] for line in path.read_text().splitlines()]
    older = [
        json.loads(line)["check"] for line in (tmp_path / "checks.jsonl.1").read_text().splitlines()
    ]
    assert path.stat().st_size <= 200 + 60 and kept[-1] == 29
    assert older[-1] == kept[0] - 1  # nothing lost between the two files
    assert not (tmp_path / "checks.jsonl.2").exists()
