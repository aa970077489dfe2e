"""`ledger verify`: the hash chain, then every recorded artifact's bytes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpmai import artifacts
from cpmai.errors import IntegrityError
from cpmai.ledger import Ledger, VerifyReport, replay


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


def verify(home: Path) -> IntegrityReport:
    ledger = Ledger(home)
    report = IntegrityReport(chain=ledger.verify())
    try:
        events = ledger.read().events
    except IntegrityError:  # an unreadable line: already named by the chain check
        return report
    state = replay(events)
    for name in state.names():
        for record in state.versions_of(name):
            report.artifacts_checked += 1
            report.artifact_problems.extend(artifacts.verify(home, record))
    return report
