"""Signed acts with real ssh-keygen keys made here: in an environment that requires them, only
an approval signed by an allowed principal other than the deployer counts; unsigned acts are
refused; `ledger verify` checks every signature, so a removed key or an edited signed event is
caught."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_deploy import NAME, load, write_manifest

from conftest import run_cpmai
from cpmai.home import Home
from cpmai.ledger import event_hash

pytestmark = pytest.mark.skipif(
    shutil.which("ssh-keygen") is None and os.environ.get("CPMAI_REQUIRE_TOOLS") != "1",
    reason="needs ssh-keygen (openssh-client; `make test` installs it)",
)


def _key(folder: Path, who: str) -> tuple[Path, str]:
    path = folder / who
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", who, "-f", str(path)],
                   check=True, timeout=60)  # fmt: skip
    return path, (folder / f"{who}.pub").read_text().strip()


@pytest.fixture
def governed(churn: Path, home: Path, tmp_path: Path) -> dict[str, Any]:
    manifest = write_manifest(churn)
    doc = load(manifest)
    doc["governance"] = {"require_signatures": ["production"]}
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    keys = tmp_path / "keys"
    keys.mkdir()
    people = {who: _key(keys, who) for who in ("alice", "bob", "mallory")}
    signers = home / "allowed_signers"
    home.mkdir(parents=True, exist_ok=True)
    signers.write_text("".join(f"{who}@example.com {people[who][1]}\n" for who in ("alice", "bob")))
    assert run_cpmai("package", manifest).code == 0
    return {"manifest": manifest, "keys": {w: str(p[0]) for w, p in people.items()},
            "signers": signers}  # fmt: skip


def _as(who: str, key: str | None, *args: Any) -> Any:
    env = {"CPMAI_ACTOR": f"{who}@example.com", "CPMAI_SIGNING_KEY": key or ""}
    return run_cpmai(*map(str, args), env=env)


def _events(home: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (home / "ledger.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_only_a_signed_approval_by_another_allowed_principal_counts(
    governed: dict[str, Any], home: Path
) -> None:
    keys = governed["keys"]
    approve = ("approve", NAME, "1.0.0", "--env", "production")
    unsigned = _as("bob", None, *approve)
    assert unsigned.code == 3 and "requires signed acts" in unsigned.err
    stranger = _as("mallory", keys["mallory"], *approve)  # a key the file does not know
    assert stranger.code == 3 and "may not sign as mallory@example.com" in stranger.err
    borrowed = _as("bob", keys["alice"], *approve)  # bob claiming alice's signature
    assert borrowed.code == 3 and "may not sign as bob@example.com" in borrowed.err
    own = _as("alice", keys["alice"], *approve)  # the deployer's own approval: signed, useless
    assert own.code == 0, own.err
    promote = ("promote", NAME, "1.0.0", "--env", "production")
    refused = _as("alice", keys["alice"], *promote)
    assert refused.code == 3 and "approvals" in refused.err
    unsigned_promote = _as("alice", None, *promote)
    assert unsigned_promote.code == 3 and "requires signed acts" in unsigned_promote.err

    good = _as("bob", keys["bob"], *approve)
    assert good.code == 0, good.err
    try:
        done = _as("alice", keys["alice"], *promote)
        assert done.code == 0, done.err
        signed = [e for e in _events(home) if e["action"] in ("approve", "promote")]
        assert all("BEGIN SSH SIGNATURE" in e["details"]["signature"] for e in signed)
        assert run_cpmai("ledger", "verify").code == 0
    finally:
        run_cpmai("stop", NAME, "--env", "production")

    # bob leaves: his key is removed, and what it signed no longer verifies
    signers = governed["signers"]
    signers.write_text("".join(line + "\n" for line in signers.read_text().splitlines()
                               if not line.startswith("bob@")))  # fmt: skip
    verify = run_cpmai("ledger", "verify")
    assert verify.code == 5 and "the signature of bob@example.com does not verify" in verify.err


@pytest.mark.slow
def test_an_edited_signed_event_is_caught_even_with_a_rebuilt_chain(
    governed: dict[str, Any], home: Path
) -> None:
    keys = governed["keys"]
    assert _as("bob", keys["bob"], "approve", NAME, "1.0.0", "--env", "production",
               "--note", "checked").code == 0  # fmt: skip
    events = _events(home)
    events[-1]["details"]["note"] = "checked the fairness report too"  # a rewrite ...
    prev = events[-2]["hash"]
    for event in events[-1:]:  # ... with every hash recomputed: the chain itself holds
        event["prev"] = prev
        event["hash"] = prev = event_hash(event)
    (home / "ledger.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    Home(home).ledger_head.write_text(json.dumps({"seq": events[-1]["seq"], "hash": prev}))
    verify = run_cpmai("ledger", "verify")
    assert verify.code == 5, verify.err
    assert f"ledger.jsonl:{events[-1]['seq']}: the signature of bob@example.com" in verify.err
    promote = _as("alice", keys["alice"], "promote", NAME, "1.0.0", "--env", "production")
    assert promote.code == 3 and "not counted, unsigned or not verified: bob" in promote.err
