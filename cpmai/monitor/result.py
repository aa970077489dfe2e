"""What `cpmai monitor` finds, as typed documents (schema cpmai-monitor/1).

The core builds these; the terminal, Markdown and report renderers read their attributes;
`MonitorResult.to_json()` is what `--json` prints and docs/monitor.schema.json is generated from
these models (`cpmai.schemas`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Final, Literal

from pydantic import BaseModel, Field

from cpmai.documents import Doc
from cpmai.errors import ExitCode, breach_code
from cpmai.manifest import Monitoring

SCHEMA: Final = "cpmai-monitor/1"

Status = Literal["ok", "drift", "not enough data"]
AlertKind = Literal["drift", "quality", "slo", "age"]


class Period(Doc):
    """The period judged and the length of its windows."""

    since: str
    until: str
    seconds: float
    window_s: float


class Unreadable(Doc):
    """A line of the prediction log that could not be read: where it is and why."""

    file: str
    offset: int = Field(ge=0, description="Byte offset of the line in the file.")
    reason: str


class Synthetic(Doc):
    """Requests marked synthetic (header X-Cpmai-Traffic: load tests such as cpmai bench) in
    the period, by source, most first, and whether the other figures count them in
    (--include-synthetic)."""

    requests: int = Field(ge=0)
    by_source: dict[str, int]
    included: bool


class Lost(Doc):
    """Requests answered but not logged in the period (a full disk, a log that fell behind)."""

    requests: int
    since: str
    until: str
    reasons: list[str]


class LogSummary(Doc):
    """What the period's prediction log held."""

    folder: str
    files: int
    bytes: int
    requests_logged: int = Field(
        description="Requests counted: without the synthetic ones unless they are included."
    )
    unreadable_lines: int = Field(
        ge=0,
        description="Lines of the prediction log that could not be read (not a block, or not "
        "one of the signature's columns). Any: exit_code 5 and `error`.",
    )
    unreadable: list[Unreadable] = Field(
        description="The first few unreadable lines: where they are and why."
    )
    versions: dict[str, int]
    synthetic: Synthetic
    lost: Lost | None


class Age(Doc):
    """How old the focus version is, against `monitoring.triggers.max_age_days`."""

    packaged: str
    live_since: str | None
    days: float
    max_days: int | None


class SloCheck(Doc):
    """One SLO bound against what was measured (passed is None: nothing to measure)."""

    metric: str
    bound: float
    measured: float | None
    passed: bool | None


class SloResult(Doc):
    """The SLO bounds in force and how the whole period did against them."""

    bounds: dict[str, float]
    checks: list[SloCheck]


class Latency(Doc):
    """Nearest-rank percentiles of successful requests, in ms."""

    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None


class Resources(Doc):
    """CPU % (100 = one core) and RSS of the serving processes, summed across processes sampled
    at the same moment."""

    samples: int
    processes: int
    cpu_percent_mean: float
    cpu_percent_peak: float
    rss_mb_mean: float
    rss_mb_peak: float


class TrafficSummary(Doc):
    """Requests, errors, latency and resources over a span of time."""

    start: str
    end: str
    requests: int = Field(ge=0, description="Requests, sampled lines counted 1/sample_rate times.")
    rows: int = Field(ge=0)
    requests_per_s: float = Field(ge=0)
    errors: dict[str, int] = Field(description="HTTP status → requests.")
    error_rate: float | None
    latency_ms: Latency
    resources: Resources | None


class DriftSummary(Doc):
    """How many of the judged features drifted, and the verdict against `drift.share`."""

    status: Status
    share: float | None
    drifted: list[str]
    judged: int


class DriftVerdict(Doc):
    """A distribution compared with the reference data's (`cpmai.monitor.drift`)."""

    feature: str
    kind: Literal["numeric", "categorical", "text"]
    method: Literal["ks", "wasserstein", "chi2", "jensen_shannon", "text"] = Field(
        description="text: a free-text input, judged by the three measures under `text` "
        "(statistic, p_value and psi are then null)."
    )
    rows: int
    reference_rows: int
    statistic: float | None
    p_value: float | None
    psi: float | None
    threshold: float
    drifted: bool | None
    status: Status


class TextLength(DriftVerdict):
    """The length of the texts in characters, compared as a numeric feature (ks or
    wasserstein, or chi2/jensen_shannon when the reference has at most 5 distinct lengths)."""

    unit: Literal["characters"]
    mean: float | None
    reference_mean: float | None


class UnknownWords(Doc):
    """Tokens the reference text never has: their share in the window against Good–Turing's
    expected share (reference tokens whose word occurs once); drift when share −
    expected_share ≥ threshold."""

    tokens: int = Field(ge=0)
    share: float | None
    expected_share: float | None
    excess: float | None
    threshold: float
    drifted: bool | None


class TokenDistribution(Doc):
    """Jensen–Shannon distance between the token distributions hashed into `buckets` buckets,
    reference vs window, and the distance a same-sized sample of the reference's own text gives
    (chance); drift when statistic − chance ≥ threshold."""

    method: Literal["jensen_shannon_hashed"]
    buckets: int
    statistic: float | None
    chance: float | None
    excess: float | None
    threshold: float
    drifted: bool | None


class TextDrift(Doc):
    """A free-text input (signature type string): drifted when any of the three measures
    has."""

    drifted_by: list[Literal["length", "unknown_words", "token_distribution"]]
    length: TextLength
    unknown_words: UnknownWords
    token_distribution: TokenDistribution


class FeatureDrift(DriftVerdict):
    """One input's (or the predictions') drift; `text` for a free-text input."""

    OMIT_UNSET: ClassVar[frozenset[str]] = frozenset({"text"})
    text: TextDrift | None = None


class WindowQuality(Doc):
    """Model quality from the labelled rows; `metric` … `passed` when a bound is set."""

    OMIT_UNSET: ClassVar[frozenset[str]] = frozenset({"metric", "bound", "value", "passed"})
    labelled_rows: int
    metrics: dict[str, float]
    metric: str | None = None
    bound: float | None = None
    value: float | None = None
    passed: bool | None = None


class ModelQuality(WindowQuality):
    """Model quality over the period, and how the labels were matched to the rows."""

    join: Literal["id", "key", "row order"]
    labels_given: int


class Window(TrafficSummary):
    """One window of the period."""

    OMIT_UNSET: ClassVar[frozenset[str]] = frozenset({"quality"})
    drift: DriftSummary
    quality: WindowQuality | None = None
    slo: list[SloCheck]


class PeriodDrift(DriftSummary):
    """Drift over the whole period: every feature's and the predictions'."""

    features: list[FeatureDrift]
    prediction: FeatureDrift | None
    reference_rows: int
    version: str


class DataQuality(Doc):
    """Missing, out-of-range and unseen values of one input over the period."""

    OMIT_UNSET: ClassVar[frozenset[str]] = frozenset(
        {"missing_share", "out_of_range_share", "unseen_values"}
    )
    feature: str
    kind: str
    rows: int
    missing: int | None
    missing_share: float | None = None
    out_of_range: int | None
    out_of_range_share: float | None = None
    unseen: int
    unseen_values: dict[str, int] | None = None


class Alert(Doc):
    """A breached bound: dataset drift, model quality past its bound, an SLO missed over the
    period, a version older than `max_age_days`."""

    kind: AlertKind
    message: str
    trigger: str = Field(
        "not configured",
        description="fired, cooling down (fired at …), or not configured (kind not in "
        "monitoring.triggers.on)",
    )
    evidence: dict[str, Any] = Field(default_factory=dict)

    def __init__(
        self,
        kind: AlertKind,
        message: str,
        evidence: dict[str, Any] | None = None,
        trigger: str = "not configured",
    ) -> None:
        # positional, as alerts were made before they were typed (`Alert("drift", message)`)
        BaseModel.__init__(
            self, kind=kind, message=message, trigger=trigger, evidence=evidence or {}
        )

    def to_dict(self) -> dict[str, Any]:
        return self.to_json()


class TriggerRun(Doc):
    """How the trigger command (`monitoring.triggers.command`) ended."""

    command: str
    exit_code: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return self.to_json()


class ErrorInfo(Doc):
    """Why the period could not be judged (the prediction log holds unreadable lines)."""

    type: str
    message: str
    exit_code: int


class MonitorResult(Doc):
    """The result of `cpmai monitor NAME --env ENV --json` (schema cpmai-monitor/1)."""

    OMIT_UNSET: ClassVar[frozenset[str]] = frozenset({"labels_error"})
    schema_: Literal["cpmai-monitor/1"] = Field(SCHEMA, alias="schema")
    name: str
    env: str
    version: str = Field(description="The version whose rows drift and quality judge.")
    live_version: str | None
    period: Period
    log: LogSummary
    age: Age
    slo: SloResult
    traffic: TrafficSummary
    windows: list[Window]
    drift: PeriodDrift
    data_quality: list[DataQuality]
    model_quality: ModelQuality | None
    labels_error: str | None = Field(
        None,
        description="Why the manifest's monitoring.labels could not be read (model quality is "
        "then not judged; the rest is).",
    )
    settings: Monitoring
    alerts: list[Alert]
    trigger_run: TriggerRun | None
    error: ErrorInfo | None = Field(
        description="Why the period could not be judged (the prediction log holds unreadable "
        "lines): exit_code 5.",
    )
    exit_code: Literal[0, 4, 5] = Field(
        description="0 within bounds, 4 an alert, 5 the prediction log could not be read in full.",
    )

    @property
    def breached(self) -> bool:
        """Whether a bound was breached (any alert)."""
        return bool(self.alerts)

    def judge(self) -> ExitCode:
        """Set `exit_code` from `error` and `breached`: an unreadable log (5) outranks a breach
        (4). Returns it."""
        verdict = ExitCode.INTEGRITY if self.error is not None else breach_code(self.breached)
        self.exit_code = 5 if verdict == ExitCode.INTEGRITY else 4 if verdict else 0
        return verdict
