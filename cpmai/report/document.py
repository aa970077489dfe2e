"""What `cpmai report` shows, as one typed document (schema cpmai-report/1).

`cpmai.report.data.build` fills it; the terminal, Markdown and HTML renderers read its
attributes; `Report.to_json()` is what `--json` prints and docs/report.schema.json is generated
from these models (`cpmai.schemas`). The cost part is `cpmai cost`'s typed document
(`cpmai.costs.document.CostDocument`, docs/cost.schema.json), printed as `cpmai cost --json`
prints it.
"""

from __future__ import annotations

from typing import ClassVar, Final, Literal

from pydantic import Field

from cpmai.costs.document import CostDocument, ValuePoint
from cpmai.documents import Doc
from cpmai.errors import ExitCode, breach_code
from cpmai.monitor.result import (
    Age,
    Alert,
    DataQuality,
    Latency,
    Lost,
    Resources,
    SloResult,
    Status,
    Synthetic,
    TrafficSummary,
)

SCHEMA: Final = "cpmai-report/1"

Number = int | float
"""A figure read back from a file cpmai wrote (a benchmark): kept as it was written."""


class ReportPeriod(Doc):
    """The period shown, and the window its charts are drawn in."""

    since: str
    until: str
    window_s: float


class EnvStatus(Doc):
    """An environment: what is live there, since when, by whom."""

    env: str
    live_version: str | None
    since: str | None
    url: str | None
    by: str | None
    versions_live_here: list[str]
    last_event: str | None


class Event(Doc):
    """A ledger event, summarised in a few words."""

    seq: int
    time: str
    actor: str
    action: str
    version: str | None
    env: str | None
    summary: str


class VersionEntry(Doc):
    """A version and its journey (packaged → gated → approved → deployed → …)."""

    version: str
    digest: str
    packaged: str
    by: str
    live_in: list[str]
    journey: list[Event]


class BenchLevel(Doc):
    """One concurrency level of a benchmark."""

    label: str
    throughput_rps: Number
    error_rate: Number | None
    p50_ms: Number | None
    p95_ms: Number | None
    p99_ms: Number | None


class Bench(Doc):
    """A version's newest benchmark (a server's when there is one)."""

    file: str
    time: str | None
    kind: str | None
    url: str | None
    levels: list[BenchLevel]
    slo_passed: bool | None


class VersionLatency(Doc):
    """Latency per version from saved benchmarks (bench None: never benchmarked)."""

    version: str
    bench: Bench | None


class WindowPoint(Doc):
    """One window of an environment's traffic, as the charts draw it."""

    start: str
    requests: int
    requests_per_s: float
    error_rate: float | None
    latency_ms: Latency
    resources: Resources | None
    drift: Status
    slo_passed: bool | None


class DriftBrief(Doc):
    """One feature's drift, as the report shows it."""

    feature: str
    method: str
    statistic: float | None
    p_value: float | None
    psi: float | None
    rows: int
    status: Status


class DriftOverview(Doc):
    """Drift over the period against the reference data."""

    status: Status
    reference_rows: int
    threshold: float
    features: list[DriftBrief]


class Monitored(Doc):
    """An environment `cpmai monitor` could judge over the period."""

    available: Literal[True]
    version: str
    traffic: TrafficSummary
    synthetic: Synthetic = Field(
        description="requests marked synthetic (load tests), as in cpmai monitor's log.synthetic"
    )
    lost: Lost | None
    slo: SloResult
    windows: list[WindowPoint]
    drift: DriftOverview
    data_quality: list[DataQuality]
    alerts: list[Alert]
    age: Age


class Unmonitored(Doc):
    """An environment with nothing to judge yet, and why."""

    available: Literal[False]
    note: str


class Kpi(Doc):
    """A business KPI value recorded in the ledger."""

    metric: str
    value: Number
    at: str
    actor: str
    note: str | None
    seq: int


class Report(Doc):
    """What `cpmai report --json` prints; the terminal, Markdown and HTML reports are drawn
    from it (docs/report.md)."""

    OMIT_UNSET: ClassVar[frozenset[str]] = frozenset({"exit_code"})
    schema_: Literal["cpmai-report/1"] = Field(SCHEMA, alias="schema")
    name: str
    description: str
    owners: list[str]
    currency: str
    manifest: str
    generated: str
    period: ReportPeriod
    environments: list[EnvStatus]
    versions: list[VersionEntry]
    latency: list[VersionLatency]
    monitoring: dict[str, Monitored | Unmonitored]
    value_trend: list[ValuePoint] = Field(
        description="per window, model-wide: what every environment cost and what was delivered"
    )
    triggers: list[Event]
    kpis: dict[str, list[Kpi]]
    cost: CostDocument = Field(
        description="the document of `cpmai cost --json` (docs/cost.schema.json)"
    )
    slo: dict[str, float]
    exit_code: Literal[0, 4] | None = Field(None, description="present in `cpmai report --json`")

    @property
    def breached(self) -> bool:
        """Whether something is breached: a budget, or an alert in an environment."""
        return self.cost.breached or any(
            isinstance(mon, Monitored) and mon.alerts for mon in self.monitoring.values()
        )

    def judge(self) -> ExitCode:
        """Set `exit_code` (what `cpmai report --json` shows) from `breached`; returns it."""
        verdict = breach_code(self.breached)
        self.exit_code = 4 if verdict == ExitCode.THRESHOLD else 0
        return verdict

    def monitored(self) -> dict[str, Monitored]:
        """The environments that could be judged, by name."""
        return {env: mon for env, mon in self.monitoring.items() if isinstance(mon, Monitored)}
