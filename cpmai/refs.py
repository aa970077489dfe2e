"""`NAME`, `NAME@VERSION` or `NAME@ENV`: how commands name what to serve, predict or bench."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cpmai.errors import UsageError

_VERSIONISH = re.compile(r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$")


@dataclass(frozen=True)
class Ref:
    name: str
    version: str
    env: str | None


def resolve(home: Path, text: str) -> Ref:
    """The packaged version `text` names (the latest when no version is given)."""
    from cpmai.artifacts import resolve_version
    from cpmai.ledger import Ledger
    from cpmai.replay import replay

    name, _, qualifier = text.partition("@")
    if not name:
        raise UsageError(f"{text!r}: expected NAME, NAME@VERSION or NAME@ENV")
    state = replay(Ledger(home).events())
    if qualifier and not _VERSIONISH.match(qualifier):
        live = state.env(name, qualifier).live
        if live is None:
            raise UsageError(
                f"{text!r}: no version is recorded as live in environment {qualifier!r}",
                hint=f"name a version (NAME@1.0.0), or deploy one: "
                f"`cpmai deploy MANIFEST --env {qualifier}`",
            )
        return Ref(name=name, version=live.version, env=qualifier)
    record = resolve_version(state, name, qualifier or None)
    return Ref(name=name, version=record.version, env=None)
