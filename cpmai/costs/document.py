"""The cost document (`cpmai cost --json`, schema cpmai-cost/1) as types: what the core builds,
what renderers read, and what docs/cost.schema.json is generated from.

`to_json()` gives the document as it has always been printed: keys in this order, and a key in
a part's `OMIT_UNSET` left out unless it was given (a note that is sometimes there, not null).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from cpmai.documents import Doc
from cpmai.monitor.result import Synthetic

SCHEMA: Literal["cpmai-cost/1"] = "cpmai-cost/1"

Number = int | float
"""A figure passed through as it was computed or read (an int stays an int in the JSON)."""


class Figure(Doc):
    """A computed figure: its value (null with no data behind it), its formula and the inputs
    put into it (`cpmai cost --explain` prints them, so a reader can redo the sum)."""

    value: float | None
    formula: str
    inputs: dict[str, Any]


class Period(Doc):
    since: str
    until: str
    hours: float


class Prices(Doc):
    OMIT_UNSET: ClassVar[frozenset[str]] = frozenset({"note"})

    cpu_hour: float
    memory_gb_hour: float
    configured: bool
    note: str | None = Field(default=None, description="why serving costs 0: no price sheet")


class Allocation(Doc):
    """What an environment reserves, priced."""

    OMIT_UNSET: ClassVar[frozenset[str]] = frozenset({"resources_from"})

    cpu_cores: float
    memory_gib: float
    per_hour: Figure
    per_month: Figure
    resources_from: str | None = Field(
        default=None, description="where replicas and resources come from"
    )


class IdleShare(Doc):
    cpu: Figure
    memory: Figure
    cost: Figure


class Usage(Doc):
    """The usage view: what was used, what is charged (max of reserved and used, per resource),
    and the idle share of what is reserved."""

    OMIT_UNSET: ClassVar[frozenset[str]] = frozenset({"bench_excluded_s", "samples", "processes"})

    cpu_cores_used: float | None
    memory_gib_used: float | None
    usage_per_hour: Figure
    charged_per_hour: Figure
    charged_per_month: Figure
    idle_share: IdleShare
    samples: int | None = None
    processes: int | None = None
    bench_excluded_s: float | None = Field(
        default=None,
        description="seconds of `cpmai bench` runs against this environment whose resource "
        "samples are left out (0 with --include-synthetic)",
    )


class Traffic(Doc):
    OMIT_UNSET: ClassVar[frozenset[str]] = frozenset({"note"})

    requests: int
    predictions: int
    errors: int
    per_version: dict[str, int]
    synthetic: Synthetic
    measured_s: float
    predictions_per_s: float | None
    predictions_per_month: int | None
    basis: str
    note: str | None = Field(
        default=None, description="why the traffic is not projected to a month"
    )


class Capacity(Doc):
    """The sustained predictions/s at the SLO, from the newest benchmark of a version."""

    file: str
    time: str | None
    source: str
    level: str | None
    predictions_per_s: float | None
    requests_per_s: float | None
    p99_ms: Number | None
    note: str


class PerThousand(Doc):
    at_capacity: Figure
    at_traffic: Figure


class VersionSide(Doc):
    """One version's side of a comparison with the previous one."""

    version: str
    serving_per_month: float
    measured: bool
    cost_per_1000_at_capacity: float | None
    capacity_source: str | None


class Increase(Doc):
    serving_per_month: float | None
    cost_per_1000_at_capacity: float | None


class Previous(Doc):
    """The current and the previous version side by side."""

    OMIT_UNSET: ClassVar[frozenset[str]] = frozenset({"note"})

    previous: VersionSide
    current: VersionSide
    increase: Increase
    note: str | None = None


class ReplicaResources(Doc):
    """What one replica reserves."""

    cpu: float
    memory_gb: float


class Autoscaled(Doc):
    """An environment whose replicas follow the load: what ran, from the replicas' own resource
    samples (each replica writes one every `monitoring.sample_interval_s`)."""

    min: int
    max: int
    mean_running: float | None = Field(
        description="replicas running on average while any ran: samples × interval ÷ the "
        "seconds some replica covered (None: no samples, the allocation is the floor)"
    )
    peak_running: int | None
    samples: int = Field(ge=0)


class EnvironmentCost(Doc):
    """What one environment costs: allocation, usage, traffic, capacity, cost per 1,000."""

    OMIT_UNSET: ClassVar[frozenset[str]] = frozenset({"usage_note", "capacity_note", "autoscaled"})

    env: str
    target: str | None
    in_manifest: bool
    planned: bool = Field(description="not live now: a plan from the manifest")
    version: str | None
    live: bool
    url: str | None
    replicas: int | float = Field(
        description="replicas charged: the manifest's number, or (autoscaled) the mean running"
    )
    autoscaled: Autoscaled | None = None
    resources: ReplicaResources
    live_hours: float = Field(description="hours live in the period")
    allocation: Allocation
    usage: Usage | None
    usage_note: str | None = None
    serving_per_month: Figure
    traffic: Traffic
    capacity: Capacity | None
    cost_per_1000: PerThousand
    capacity_note: str | None = None
    previous: Previous | None


class Retraining(Doc):
    planned_runs_per_month: float
    triggered_runs: int = Field(description="monitor checks that fired a trigger in the last 730 h")
    per_month: Figure


class Budget(Doc):
    per_month: float | None
    used_share: float | None
    over: bool


class ToDate(Doc):
    """Since the first deployment, every environment the model ran in."""

    since: str
    months: float
    live_months: float
    environments: list[str]
    predictions: int
    value: Number
    serving_cost: Number
    retraining_cost: Number
    baseline_saved: Number
    investment: float
    net: Figure
    paid_back: bool
    basis: str


class Roi(Doc):
    """Per month: value delivered, the old process's cost avoided, what the model costs."""

    OMIT_UNSET: ClassVar[frozenset[str]] = frozenset({"note", "projection_note"})

    value_per_month: Figure
    cost_per_month: Figure
    savings_per_month: Figure
    net_per_month: Figure
    roi_percent: Figure
    payback_months: Figure
    configured: bool = False
    note: str | None = None
    projection_note: str | None = None
    to_date: ToDate | None = None


class WhatIf(Doc):
    """One environment planned with N replicas and/or R predictions/s."""

    env: str
    replicas: int = Field(ge=1)
    predictions_per_s: float | None
    allocation: Allocation
    capacity: Figure
    replicas_needed: int | None
    fits: bool | None
    cost_per_1000: Figure
    predictions_per_month: int | None
    value_per_month: float | None
    total_per_month: Figure
    over_budget: bool
    note: str


class CostAlert(Doc):
    kind: Literal["budget", "increase"]
    message: str


class CostDocument(Doc):
    """What `cpmai cost --json` prints. Every computed figure is a `Figure`: its value, its
    formula and the inputs put into it. A figure with no data behind it has value null."""

    schema_: Literal["cpmai-cost/1"] = Field(default=SCHEMA, alias="schema")
    name: str
    currency: str
    manifest: str = Field(description="`artifact NAME VERSION` or `file PATH`")
    period: Period
    prices: Prices
    environments: list[EnvironmentCost]
    counted: list[str]
    retraining: Retraining
    total_per_month: Figure
    budget: Budget
    max_increase: float | None
    roi: Roi
    what_if: WhatIf | None
    alerts: list[CostAlert]
    exit_code: int

    @property
    def breached(self) -> bool:
        """A threshold was breached (budget, or a rise past --max-increase): exit 4."""
        return bool(self.alerts)


class ValuePoint(Doc):
    """One window of `cpmai report`'s cost-and-value trend, model-wide: what the environments
    cost and what was delivered in it, and both added up since the period began."""

    start: str
    cost: Number
    value: Number
    cumulative_cost: Number
    cumulative_value: Number
