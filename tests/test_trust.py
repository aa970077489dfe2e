"""Nothing is trusted that the chain does not vouch for: a ledger edited by hand (a digest with
a stale hash, a forged approval, events cut from the end with the head removed) stops every
command that acts on it before anything is unpickled; truncation and unrecorded artifacts are
evident; a head pinned outside the machine is checked."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
from test_deploy import NAME, load, write_manifest

from conftest import run_cpmai
from cpmai.artifacts import ARTIFACT_FILE, digest_of
from cpmai.home import Home
from cpmai.ledger import Ledger, event_hash


class _Marker:
    """Unpickling this writes a file: proof that a pickle was loaded (and its code run)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (exec, (f"open({self.path!r}, 'w').write('unpickled')",))


def _lines(home: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (home / "ledger.jsonl").read_text().splitlines()]


def _write(home: Path, events: list[dict[str, Any]]) -> None:
    (home / "ledger.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def _swap_model(home: Path, marker: Path) -> str:
    """What someone with write access does: a model file of their own, the ONNX twin removed
    (so the pickle is what loads), artifact.json rewritten to match. Returns the new digest."""
    import hashlib

    folder = home / "artifacts" / NAME / "1.0.0"
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    meta = json.loads((folder / ARTIFACT_FILE).read_text())
    (folder / meta["model"]).write_bytes(pickle.dumps(_Marker(str(marker))))
    runtime = json.loads((folder / "runtime.json").read_text())
    (folder / runtime.pop("onnx_model")).unlink()
    runtime["runtime"] = "sklearn"
    (folder / "runtime.json").write_text(json.dumps(runtime))
    meta["files"] = {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file() and p.name != ARTIFACT_FILE
    }
    meta["digest"] = digest_of(meta["files"])
    (folder / ARTIFACT_FILE).write_text(json.dumps(meta))
    return str(meta["digest"])


@pytest.fixture
def packaged(churn: Path, home: Path) -> Path:
    manifest = write_manifest(churn)
    assert run_cpmai("package", manifest).code == 0
    return manifest


def _nothing_unpickled(marker: Path, *commands: list[str]) -> None:
    for command in commands:
        result = run_cpmai(*command)
        assert result.code == 5, (command, result.err)
        assert "does not verify" in result.err and "ledger.jsonl:" in result.err, result.err
    assert not marker.exists(), "a pickle was loaded from a ledger that does not verify"


@pytest.mark.slow
def test_a_digest_edited_with_a_stale_hash_loads_nothing(
    packaged: Path, home: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    events = _lines(home)
    events[0]["details"]["digest"] = _swap_model(home, marker)  # its hash left as it was
    _write(home, events)
    _nothing_unpickled(marker, ["serve", NAME, "--port", "1"], ["predict", NAME, "--input",
                       str(packaged.parent / "data" / "holdout.csv")], ["versions"],
                       ["deploy", packaged, "--env", "staging"])  # fmt: skip
    verify = run_cpmai("ledger", "verify")
    assert verify.code == 5 and "ledger.jsonl:1: content does not match its hash" in verify.err


@pytest.mark.slow
def test_a_forged_approval_counts_for_nothing_and_nothing_chains_after_it(
    packaged: Path, home: Path, tmp_path: Path
) -> None:
    events = _lines(home)
    forged = {"seq": 2, "time": events[0]["time"], "actor": "boss@example.com",
              "action": "approve", "name": NAME, "version": "1.0.0", "env": "production",
              "details": {"note": "lgtm"}, "prev": events[0]["hash"], "hash": "0" * 64}  # fmt: skip
    _write(home, [*events, forged])
    Home(home).ledger_head.write_text(json.dumps({"seq": 2, "hash": "0" * 64}))
    promoted = run_cpmai("promote", NAME, "1.0.0", "--env", "production")
    assert promoted.code == 5 and "ledger.jsonl:2: content does not match its hash" in promoted.err
    approve = run_cpmai("approve", NAME, "1.0.0", "--env", "production",
                        env={"CPMAI_ACTOR": "other@example.com"})  # fmt: skip
    assert approve.code == 5
    assert len(_lines(home)) == 2  # nothing appended after the bad line


@pytest.mark.slow
def test_events_cut_from_the_end_with_the_head_removed_are_evident(
    packaged: Path, home: Path, tmp_path: Path
) -> None:
    assert run_cpmai("approve", NAME, "1.0.0", "--env", "production",
                     env={"CPMAI_ACTOR": "other@example.com"}).code == 0  # fmt: skip
    pinned = run_cpmai("ledger", "head").out.strip()
    assert pinned.startswith("2:") and len(pinned) == 2 + 64
    assert run_cpmai("ledger", "verify", "--expect-head", pinned).code == 0
    events = _lines(home)
    marker = tmp_path / "unpickled"
    digest = _swap_model(home, marker)  # and re-record the package as if it had been this one
    package = {**events[0], "details": {**events[0]["details"], "digest": digest}}
    package["hash"] = event_hash(package)
    for cut in ([package, events[1]], [package]):  # rewritten, then cut back too
        _write(home, cut)
        Home(home).ledger_head.unlink(missing_ok=True)
        if len(cut) > 1:  # a rewritten chain with its head gone: the missing head gives it away
            _nothing_unpickled(marker, ["serve", NAME, "--port", "1"])
    # cut to one event, head gone: the chain alone cannot tell, the pinned head can
    assert not marker.exists()
    verify = run_cpmai("ledger", "verify", "--expect-head", pinned)
    assert verify.code == 5 and "is not an event of ledger.jsonl" in verify.err
    (home / "ledger.jsonl").write_text("")
    emptied = run_cpmai("ledger", "verify")
    assert emptied.code == 5 and "on disk but not recorded in the ledger" in emptied.err


def test_the_verified_prefix_is_remembered_and_an_edit_behind_it_is_still_caught(
    tmp_path: Path,
) -> None:
    ledger = Ledger(tmp_path)
    for i in range(50):
        ledger.append("note", actor="a", details={"i": i})
    assert len(ledger.events()) == 50
    remembered = json.loads((tmp_path / "cache" / "ledger-verified.json").read_text())
    assert remembered["events"] == 50
    text = (tmp_path / "ledger.jsonl").read_text().replace('"i":3}', '"i":4}', 1)
    (tmp_path / "ledger.jsonl").write_text(text)
    from cpmai.errors import IntegrityError

    with pytest.raises(IntegrityError, match=r"ledger\.jsonl:4: content does not match"):
        ledger.events()
    with pytest.raises(IntegrityError, match="does not verify"):
        ledger.append("note", actor="a")
    shutil.rmtree(tmp_path / "cache")
    with pytest.raises(IntegrityError, match=r"ledger\.jsonl:4"):
        ledger.events()


def test_events_of_any_content_verify_as_written(tmp_path: Path) -> None:
    """The fast check (orjson) and the writer's hash (json) agree, or the writer's decides."""
    ledger = Ledger(tmp_path)
    odd = {"note": "café ✓ \u2028 \x7f \\ \"", "x": 0.1, "big": 1e300, "small": 5e-324,
           "n": -(2**63), "nested": {"b": [1, None, True], "a": {}}}  # fmt: skip
    for _ in range(3):
        ledger.append("note", actor="ünïcode@example.com", details=odd)
    assert ledger.verify().ok and len(ledger.events()) == 3


def _edit_data(folder: Path, name: str, change: Any) -> str:
    import pandas as pd

    frame = change(pd.read_csv(folder / "data" / f"{name}.csv"))
    rel = f"data/{name}-bad-{len(list((folder / 'data').glob('*-bad-*')))}.csv"
    frame.to_csv(folder / rel, index=False)
    return rel


@pytest.mark.slow
def test_bad_data_and_special_files_are_exit_2_with_a_message(churn: Path, home: Path) -> None:
    import os

    import yaml

    folder = churn.parent

    def infinite(frame: Any) -> Any:
        frame["monthly_charges"] = frame["monthly_charges"].astype(float)
        frame.loc[3, "monthly_charges"] = float("inf")
        return frame

    def variant(**data: str) -> Path:
        doc = load(churn)
        doc["data"].update(data)
        path = folder / f"variant-{len(list(folder.glob('variant-*')))}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    fifo = folder / "pipe.yaml"
    os.mkfifo(fifo)
    (folder / "zero.joblib").symlink_to("/dev/zero")
    zero_model = folder / "zero.yaml"
    zero_model.write_text(churn.read_text().replace("path: model.joblib", "path: zero.joblib"))
    cases = [
        (["package", variant(reference=_edit_data(folder, "reference", infinite))],
         "column 'monthly_charges' holds inf (row 4 of the data, line 5"),
        (["package", variant(holdout=_edit_data(folder, "holdout", infinite))],
         "data.holdout (data/holdout-bad-1.csv): column 'monthly_charges' holds inf"),
        (["package", variant(holdout=_edit_data(folder, "holdout", lambda f: f.iloc[:0]))],
         "no rows (only a header?)"),
        (["validate", fifo], "is a FIFO (named pipe), not a regular file"),
        (["validate", "/dev/zero"], "/dev/zero: is a device, not a regular file"),
        (["package", zero_model], "model.path: zero.joblib is a device, not a regular file"),
        (["predict", "churn-classifier", "--input", fifo], "is a FIFO (named pipe)"),
    ]  # fmt: skip
    for command, message in cases:
        result = run_cpmai(*map(str, command), timeout=60)
        assert result.code == 2, (command, result.err)
        assert message in result.err and "Traceback" not in result.err, (command, result.err)


def _stalls(port: int, sent: bytes, wait: float) -> tuple[bytes, float]:
    """Connect, send `sent`, then nothing: what the server answers, and when it hung up."""
    import socket
    import time

    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(sent)
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except TimeoutError:
            return answer + b"<still open>", time.monotonic() - started
    return answer, time.monotonic() - started


@pytest.mark.slow
def test_stalled_clients_are_cut_off(churn: Path, home: Path) -> None:
    """Headers that never finish, a body that never comes, a connection that says nothing:
    408 and closed after the manifest's timeouts, on `cpmai serve` and on a deployed server."""
    import yaml

    from serving_helpers import Server

    manifest = write_manifest(churn)
    doc = load(manifest)
    doc["serving"] = {"header_timeout_s": 0.5, "body_timeout_s": 1.0}
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert run_cpmai("package", manifest).code == 0
    post = (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{\"dataframe_records\":")  # fmt: skip
    served = Server(home, NAME)
    deployed = run_cpmai("deploy", manifest, "--env", "staging")
    assert deployed.code == 0, deployed.err
    try:
        from test_deploy import port_of

        for port in (served.port, port_of(manifest, "staging")):
            for sent, limit in ((b"POST /invocations HTTP/1.1\r\nHost: x\r\n", 0.5),
                                (b"", 0.5), (post, 1.0)):  # fmt: skip
                answer, seconds = _stalls(port, sent, wait=10)
                assert answer.startswith(b"HTTP/1.1 408 "), (port, sent, answer)
                # the server times from its loop's clock, the test from its own: 50 ms slack
                assert limit - 0.05 <= seconds < limit + 2, (port, sent, seconds)
            assert served.get("/v2/health/ready").status == 200  # and it goes on serving
    finally:
        served.close()
        run_cpmai("stop", NAME, "--env", "staging")


@pytest.mark.slow
def test_a_restarted_environment_keeps_its_bearer_token(churn: Path, home: Path) -> None:
    """Deployed with $CPMAI_TOKEN, killed, brought back from a shell without it: the token is
    still required, and it is kept nowhere in the clear."""
    import os
    import signal
    import stat
    import time

    from test_deploy import infer, port_of

    manifest = write_manifest(churn)
    port = port_of(manifest, "staging")
    first = run_cpmai("deploy", manifest, "--env", "staging", env={"CPMAI_TOKEN": "s3cret-42"})
    assert first.code == 0, first.err
    try:
        assert infer(port)[0] == 401
        auth = home / "runs" / NAME / "staging" / "auth.json"
        assert stat.S_IMODE(auth.stat().st_mode) == 0o600 and "s3cret" not in auth.read_text()
        run = json.loads((home / "runs" / NAME / "staging" / "run.json").read_text())
        os.kill(int(run["pid"]), signal.SIGKILL)  # the server dies
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(int(run["pid"]), 0)
                time.sleep(0.1)
            except ProcessLookupError:
                break
        env = {k: v for k, v in os.environ.items() if k != "CPMAI_TOKEN"}
        again = run_cpmai("deploy", manifest, "--env", "staging", env=env)
        assert again.code == 0, again.err
        assert "keeps requiring its recorded bearer token" in again.err
        assert infer(port)[0] == 401  # still protected
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/invocations", json.dumps({"dataframe_records": [_row(churn)]}),
                     {"Content-Type": "application/json",
                      "Authorization": "Bearer s3cret-42"})  # fmt: skip
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        run_cpmai("stop", NAME, "--env", "staging")


def _row(churn: Path) -> dict[str, Any]:
    import pandas as pd

    from conftest import FEATURES

    frame = pd.read_csv(churn.parent / "data" / "reference.csv")
    return dict(json.loads(frame[FEATURES].iloc[:1].to_json(orient="records"))[0])


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 1 MiB tmpfs (root only: skipped where it cannot be mounted, saying why)."""
    import subprocess

    mount = tmp_path / "small-disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.strip() or made.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


@pytest.mark.slow
def test_a_full_disk_loses_no_request_silently(
    packaged: Path, home: Path, small_disk: Path
) -> None:
    """The prediction log on a disk that fills up: serving goes on, the requests it could not
    log are counted on /metrics and, once there is room again, written down as lost, and
    `cpmai monitor` says how many, when and why. A ledger append on a full disk
    that fits but whose head file does not is recorded and reported so (exit 0), and the ledger
    still verifies."""
    import time

    from serving_helpers import Server

    (home / "logs").symlink_to(small_disk)
    row = _row(packaged)
    server = Server(home, NAME)
    try:

        def send(count: int) -> None:
            for _ in range(count):
                assert server.post_json("/invocations", {"dataframe_records": [row]}).status == 200

        send(200)
        time.sleep(1.5)
        filler = _fill(small_disk)
        send(300)  # answered, though the log cannot keep them
        time.sleep(2.5)
        metrics = server.get("/metrics").body.decode()
        import re

        found = re.search(r"^cpmai_prediction_log_dropped_total (\S+)$", metrics, re.MULTILINE)
        assert found is not None, metrics
        dropped = float(found.group(1))
        assert dropped >= 300
        filler.unlink()
        send(50)
        time.sleep(1.5)
    finally:
        server.close()
    result = run_cpmai("--json", "monitor", NAME, "--env", "default")
    assert result.code in (0, 4), result.err
    doc = json.loads(result.out)
    lost = doc["log"]["lost"]
    assert lost["requests"] + doc["traffic"]["requests"] == 550, (lost, doc["traffic"])
    assert lost["requests"] >= 300 and any("space" in r for r in lost["reasons"])
    text = run_cpmai("monitor", NAME, "--env", "default")
    assert "requests answered but not logged" in text.err

    for item in small_disk.iterdir():  # room again for the state folder itself
        shutil.rmtree(item) if item.is_dir() else item.unlink()
    state = small_disk / "state"
    shutil.copytree(home, state, symlinks=True, ignore=shutil.ignore_patterns("logs", "cache"))
    filler = _fill(small_disk)
    # the line fits in the file's last page, its head file does not: recorded, said so, exit 0
    kpi = run_cpmai("--home", str(state), "kpi", "record", NAME, "retained", "3")
    assert kpi.code == 0 and "recorded retained = 3" in kpi.err, kpi.err
    filler.unlink()
    assert (state / "ledger.jsonl").read_text().count('"retained"') == 1
    verified = run_cpmai("--home", str(state), "ledger", "verify")
    assert verified.code == 0, verified.err


def _deploy_killed_at(manifest: Path, env: str, marker: str) -> str:
    """`cpmai deploy` SIGKILLed as soon as its progress shows `marker`; returns what it said."""
    import os
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "cpmai", "deploy", str(manifest), "--env", env],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "CPMAI_ACTOR": "ops@example.com"},
    )  # fmt: skip
    said = []
    deadline = time.monotonic() + 120
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            said.append(line)
            if marker in line or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert any(marker in line for line in said), "".join(said)
    return "".join(said)


@pytest.mark.slow
@pytest.mark.parametrize(
    "marker",
    ["package  ", "gates    ", "starting a server", "loading", "%: live", "rollout  "],
    ids=["packaged", "gated", "server-started", "switching", "canary-step", "before-the-event"],
)
def test_a_deploy_killed_anywhere_is_reconciled(churn: Path, home: Path, marker: str) -> None:
    """SIGKILL of `cpmai deploy` at six points of a rollout. Afterwards `status` tells the
    truth, `stop` stops what actually runs, a new `deploy` succeeds, nothing is left listening,
    an unfinished rollout is recorded as interrupted, and the ledger verifies."""
    import socket

    import yaml
    from test_deploy import edit, port_of

    manifest = write_manifest(churn)
    env = "production" if marker in ("loading", "%: live") else "staging"
    if env == "production":  # a canary needs a live version, and production an approval
        doc = load(manifest)
        doc["gates"]["approvals"] = {}
        manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    port = port_of(manifest, env)
    if marker in ("loading", "%: live"):  # an in-place switch: something must be live first
        assert run_cpmai("deploy", manifest, "--env", env).code == 0
        edit(manifest, description="a second version")

    def listening() -> bool:
        with socket.socket() as probe:
            probe.settimeout(0.5)
            return probe.connect_ex(("127.0.0.1", port)) == 0

    try:
        before = len(_lines(home)) if (home / "ledger.jsonl").exists() else 0
        _deploy_killed_at(manifest, env, marker)
        killed = [e["action"] for e in _lines(home)][before:]
        status = run_cpmai("--json", "status", NAME)
        assert status.code == 0, status.err
        rows = [r for r in json.loads(status.out)["environments"] if r["env"] == env]
        if rows and rows[0]["server"]["state"] != "stopped":  # status says what really runs
            row = rows[0]
            assert row.get("differs") or row["server"]["live"] == row["version"], row
        stopped = run_cpmai("stop", NAME, "--env", env)
        assert stopped.code == 0, stopped.err
        assert not listening()  # whatever the ledger said, nothing runs now
        again = run_cpmai("deploy", manifest, "--env", env)
        assert again.code == 0, again.err
        assert listening()
        actions = [e["action"] for e in _lines(home)]
        if "intent" in killed and killed[-1] == "intent":  # begun, never finished
            assert actions[before + len(killed)] == "interrupted", actions
        assert run_cpmai("ledger", "verify").code == 0
    finally:
        run_cpmai("stop", NAME, "--env", env)
    assert not listening()
