"""Business KPIs a team records against a model: `kpi` events in the ledger.

A KPI record is a number the business measured (retained revenue, tickets avoided, conversion)
at a moment. Recording it in the hash-chained ledger makes it as accountable as a deploy: who
said so, when, and that nobody edited it afterwards. `business.value_kpi` names the KPI whose
values are value delivered, in the price sheet's currency; ROI then sums those instead of
predictions × value_per_prediction.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cpmai.clock import parse_time
from cpmai.errors import UsageError
from cpmai.ledger import Event, Ledger

ACTION = "kpi"
METRIC = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")


@dataclass(frozen=True)
class Kpi:
    name: str
    metric: str
    value: float
    at: str
    """When the value holds (ISO, UTC): the end of the period it measures."""
    actor: str
    note: str
    seq: int

    @property
    def moment(self) -> float:
        return parse_time(self.at).timestamp()

    def to_dict(self) -> dict[str, Any]:
        """Every field but the model's name (the document around it names the model)."""
        return {key: value for key, value in asdict(self).items() if key != "name"}


def record(
    home: Path,
    name: str,
    metric: str,
    value: float,
    *,
    actor: str,
    at: float | None = None,
    note: str = "",
) -> Kpi:
    """Append a `kpi` event for `name` (which must have been packaged)."""
    if not METRIC.match(metric):
        raise UsageError(
            f"KPI name {metric!r}: use letters, digits and _ . : - (at most 100 characters)"
        )
    if not math.isfinite(value):
        raise UsageError(f"KPI value {value}: expected a finite number")
    ledger = Ledger(home)
    moment = datetime.now(UTC) if at is None else datetime.fromtimestamp(at, UTC)
    at_iso = moment.isoformat(timespec="seconds").replace("+00:00", "Z")
    with ledger.transaction() as tx:
        if not any(e.action == "package" and e.name == name for e in tx.events()):
            raise UsageError(
                f"no model named {name!r} has been packaged: a KPI must belong to a model"
            )
        event = tx.append(
            ACTION,
            actor=actor,
            name=name,
            details={"metric": metric, "value": value, "at": at_iso, "note": note},
        )
    return _from_event(event)


def read(events: list[Event], name: str, metric: str | None = None) -> list[Kpi]:
    """The KPI records of `name` (of one metric), in the order of the time they hold for."""
    out = [
        _from_event(e)
        for e in events
        if e.action == ACTION
        and e.name == name
        and (metric is None or e.details["metric"] == metric)
    ]
    return sorted(out, key=lambda k: (k.at, k.seq))


def _from_event(event: Event) -> Kpi:
    details = event.details
    return Kpi(
        name=str(event.name),
        metric=str(details["metric"]),
        value=float(details["value"]),
        at=str(details.get("at") or event.time),
        actor=event.actor,
        note=str(details.get("note", "")),
        seq=event.seq,
    )
