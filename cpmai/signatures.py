"""Signed acts: an actor signs the ledger events they record with their SSH key, as git signs
commits (`ssh-keygen -Y sign` / `-Y verify`, namespace "cpmai"; ssh-agent and security keys work
as they do for git). An event's signature covers its canonical JSON — seq, time, actor, action,
model, version, environment, details and the previous event's hash — so it cannot be moved to
another event or kept through an edit.

Who may sign as whom is an allowed-signers file (`ssh-keygen`'s format: `PRINCIPAL KEY`, one a
line; principals are actors' names): `$CPMAI_ALLOWED_SIGNERS`, else `allowed_signers` in the
state folder. The key an actor signs with is `$CPMAI_SIGNING_KEY` (a private key file, or a
public key whose private half is in ssh-agent). No cryptography is written here: the system's
ssh-keygen (openssh-client) does all of it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from cpmai.errors import UsageError
from cpmai.home import Home

NAMESPACE = "cpmai"
SIGNED_ACTIONS = ("approve", "deploy", "promote", "rollback")
KEY_ENV = "CPMAI_SIGNING_KEY"
SIGNERS_ENV = "CPMAI_ALLOWED_SIGNERS"
_FIELDS = ("seq", "time", "actor", "action", "name", "version", "env", "details", "prev")


def signing_key() -> Path | None:
    """The key to sign with ($CPMAI_SIGNING_KEY), if one is set."""
    value = os.environ.get(KEY_ENV)
    return Path(value).expanduser() if value else None


def signers_file(home: Path) -> Path | None:
    """The allowed-signers file in force, if there is one."""
    value = os.environ.get(SIGNERS_ENV)
    path = Path(value).expanduser() if value else Home(home).signers
    return path if path.is_file() else None


def signed_bytes(body: dict[str, Any]) -> bytes:
    """What a signature covers: the event's canonical JSON, its own signature left out."""
    details = {k: v for k, v in (body.get("details") or {}).items() if k != "signature"}
    doc = {key: body.get(key) for key in _FIELDS} | {"details": details}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _ssh_keygen() -> str:
    found = shutil.which("ssh-keygen")
    if found is None:
        raise UsageError(
            "signing needs ssh-keygen (Debian/Ubuntu: apt-get install openssh-client)",
        )
    return found


def sign(body: dict[str, Any], key: Path) -> str:
    """The SSH signature (armored text) of the event `body` with `key`."""
    if not key.exists():
        raise UsageError(f"${KEY_ENV}: {key}: no such key file")
    done = subprocess.run(
        [_ssh_keygen(), "-Y", "sign", "-q", "-f", str(key), "-n", NAMESPACE],
        input=signed_bytes(body), capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    if done.returncode != 0 or b"BEGIN SSH SIGNATURE" not in done.stdout:
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        raise UsageError(
            f"signing with {key} failed: {reason[-1] if reason else done.returncode}",
            hint="a passphrase-protected key must be in ssh-agent (ssh-add)",
        )
    return done.stdout.decode()


def verify(body: dict[str, Any], signers: Path) -> str | None:
    """None when `body` carries a signature that `signers` allows for its actor; else why not."""
    signature = (body.get("details") or {}).get("signature")
    if not isinstance(signature, str):
        return "not signed"
    with tempfile.NamedTemporaryFile("w", suffix=".sig") as handle:
        handle.write(signature)
        handle.flush()
        done = subprocess.run(
            [_ssh_keygen(), "-Y", "verify", "-f", str(signers), "-I", str(body.get("actor")),
             "-n", NAMESPACE, "-s", handle.name],
            input=signed_bytes(body), capture_output=True, timeout=60, check=False,
        )  # fmt: skip
    if done.returncode == 0:
        return None
    return (
        f"the signature of {body.get('actor')} does not verify against {signers.name} "
        "(an unknown or removed key, another principal's key, or an edited event)"
    )


def verify_all(events: list[dict[str, Any]], signers: Path) -> dict[int, str | None]:
    """`verify` of many events at once (ssh-keygen runs in parallel): seq → problem or None."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = pool.map(lambda event: verify(event, signers), events)
        return {int(e["seq"]): problem for e, problem in zip(events, results, strict=True)}
