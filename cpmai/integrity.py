"""`ledger verify`: the hash chain, then every recorded artifact's bytes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpmai import artifacts
from cpmai.errors import IntegrityError
from cpmai.home import Home
from cpmai.ledger import Ledger, VerifyReport
from cpmai.replay import replay


@dataclass
class IntegrityReport:
    chain: VerifyReport
    artifacts_checked: int = 0
    artifact_problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.chain.ok and not self.artifact_problems

    @property
    def problems(self) -> list[str]:
        return self.chain.problems + self.artifact_problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.chain.events,
            "artifacts": self.artifacts_checked,
            "problems": self.problems,
        }


def verify(home: Path, *, expect_head: str | None = None) -> IntegrityReport:
    """The chain, the head, every recorded artifact's bytes, and artifacts on disk that the
    ledger does not record. `expect_head`: a hash pinned earlier (`cpmai ledger head`) that
    must still be an event of the chain."""
    ledger = Ledger(home)
    report = IntegrityReport(chain=ledger.verify())
    try:
        events = ledger.read().events
    except IntegrityError:  # an unreadable line: already named by the chain check
        return report
    if expect_head is not None:
        pinned = expect_head.rsplit(":", 1)[-1].strip().lower()
        if not any(e.hash == pinned for e in events):
            report.chain.problems.append(
                f"the pinned head {pinned[:16]}… is not an event of {ledger.path.name} "
                "(rewritten or cut back since it was pinned)"
            )
    report.artifact_problems += _signature_problems(home, ledger, events)
    state = replay(events)
    for name in state.names():
        for record in state.versions_of(name):
            report.artifacts_checked += 1
            report.artifact_problems.extend(artifacts.verify(home, record))
    for folder in sorted(Home(home).artifacts.glob("*/*")):
        if (folder / artifacts.ARTIFACT_FILE).is_file() and folder.name not in state.versions.get(
            folder.parent.name, {}
        ):
            report.artifact_problems.append(
                f"artifacts/{folder.parent.name}/{folder.name}: on disk but not recorded in the "
                "ledger (events removed, or a package interrupted before its event)"
            )
    return report


def _signature_problems(home: Path, ledger: Ledger, events: list[Any]) -> list[str]:
    """Every signed event's signature, against the allowed-signers file in force now (a key
    removed from it no longer vouches for what it signed)."""
    from cpmai import signatures

    signed = [e.to_dict() for e in events if "signature" in e.details]
    if not signed:
        return []
    signers = signatures.signers_file(home)
    if signers is None:
        return [
            f"{len(signed)} signed event(s) cannot be checked: no allowed-signers file "
            f"({Home(home).signers} or ${signatures.SIGNERS_ENV})"
        ]
    checked = signatures.verify_all(signed, signers)
    return [f"{ledger.path.name}:{seq}: {problem}" for seq, problem in checked.items() if problem]
