"""What `cpmai bench` finds, as typed documents (schema cpmai-bench/1), and reading saved ones.

`benchmark()` builds a `BenchResult`; the terminal, Markdown, JUnit and CSV renderers read its
attributes; `BenchResult.to_json()` is what `--json` prints and what is saved under the state
folder (`Home.bench`), and docs/bench.schema.json is generated from these models
(`cpmai.schemas`). Saved results are read back only through `load_result`: as baselines, and by
cost and report.

The schema describes what cpmai prints, so every key is required there but those that appear
only when set (`OMIT_UNSET`). Loading is more lenient: where a result written by an older cpmai
(or by hand, as the tests' fixtures are) leaves a key out, the field's default stands in.

This module imports only leaves and `cpmai.documents`: it is the saved results' format, which
packages that may not import the rest of `cpmai.bench` read too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Final, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator
from pydantic.config import JsonDict

from cpmai.clock import parse_time
from cpmai.documents import Doc
from cpmai.errors import ExitCode, UsageError, breach_code

SCHEMA: Final = "cpmai-bench/1"

Mode = Literal["closed", "open", "inprocess"]


def _every_key_printed(schema: JsonDict, model: type[Any]) -> None:
    """Mark every key of `model` required in its JSON Schema but those in `OMIT_UNSET`:
    cpmai always prints them, whatever the defaults that reading older files relies on."""
    omitted: frozenset[str] = getattr(model, "OMIT_UNSET", frozenset())
    fields = model.model_fields
    schema["required"] = [
        field.alias or name for name, field in fields.items() if name not in omitted
    ]


class Part(Doc):
    """A part of the bench result: every key printed (see `_every_key_printed`)."""

    model_config = ConfigDict(json_schema_extra=_every_key_printed)


class BenchTarget(Part):
    """What was measured: a model in process (name, version, path of its artifact) or an HTTP
    endpoint (url, protocol, the server's pid when known)."""

    kind: Literal["inprocess", "http"]
    name: str | None = None
    version: str | None = None
    url: str | None = None
    path: str | None = None
    protocol: Literal["mlflow", "oip"] | None = None
    pid: int | None = None


class Machine(Part):
    """What the figures depend on: CPU model, cores, memory, governor, Python, packages."""

    cpu: str = ""
    cores: int | None = None
    memory_gib: float = 0.0
    frequency_governor: str | None = None
    frequency_mhz: int | None = None
    python: str = ""
    platform: str = ""
    packages: dict[str, str] = Field(default_factory=dict)
    fingerprint: str | None = Field(
        None,
        description="Hash of CPU, cores, memory and Python: runs compare only when equal "
        "(null: unknown, in a result written by hand).",
    )


class Settings(Part):
    """How each level was run: warm-up, duration, requests at least, the cap, load-generator
    processes, open-loop arrivals and their seed."""

    warmup_s: float = 1.0
    duration_s: float = 5.0
    min_requests: int = 100
    max_duration_s: float = 60.0
    workers: int = 1
    arrival: str = Field("constant", json_schema_extra={"enum": ["constant", "poisson"]})
    seed: int = 0


class Percentiles(Part):
    """Latency percentiles, max and mean in milliseconds (null: nothing measured)."""

    p50_ms: float | None = None
    p90_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    max_ms: float | None = None
    mean_ms: float | None = None


class Window(Part):
    """One full one-second window of a level."""

    index: int
    requests: int
    errors: int
    throughput_rps: float
    p50_ms: float | None
    p99_ms: float | None


class HistogramData(Part):
    """Non-empty buckets of the log-linear latency histogram (ns; sub_bits 11 = 3 significant
    digits), as `Histogram.to_dict` writes them."""

    sub_bits: int
    buckets: list[int]
    counts: list[int]
    count: int
    sum_ns: int
    min_ns: int | None
    max_ns: int


class LevelResult(Part):
    """One load level's figures: requests, errors, throughput, latency, stability."""

    OMIT_UNSET: ClassVar[frozenset[str]] = frozenset({"meets_slo"})
    key: str
    label: str
    mode: Mode
    concurrency: int = Field(1, ge=1)
    rate: float | None = None
    batch_size: int = Field(1, ge=1)
    requests: int
    ok: int
    not_sent: int = Field(
        0,
        description="Open loop: arrivals still waiting for a connection when the level ended "
        "(neither timed nor counted in requests).",
    )
    errors: dict[str, int] = Field(
        default_factory=dict, description="By HTTP status or exception name."
    )
    error_rate: float = Field(ge=0, le=1)
    measured_s: float = 0.0
    throughput_rps: float
    rows_per_s: float
    latency_ms: Percentiles = Field(description="Open loop: from the intended send time.")
    uncorrected_ms: Percentiles | None = Field(None, description="Open loop: from the actual send.")
    lag_ms: Percentiles | None = Field(
        None,
        description="Open loop: how late the generator sent requests that found a free connection.",
    )
    min_requests_met: bool = True
    stable: bool = False
    stability: str = ""
    windows: list[Window] = Field(default_factory=list)
    histogram: HistogramData | None = Field(
        None, description="Null only in a result written by hand."
    )
    meets_slo: bool | None = Field(None, description="Capacity search only.")


class MeanPeak(Part):
    """The mean and the peak of a sampled figure."""

    mean: float
    peak: float


class Resources(Part):
    """psutil samples of the measured process and its children (CPU % of one core: 200 = two
    cores). With no samples taken, `samples` alone."""

    OMIT_UNSET: ClassVar[frozenset[str]] = frozenset(
        {"pid", "interval_s", "cpu_percent", "rss_bytes", "uss_bytes", "threads", "open_files",
         "machine_cpu_percent_per_core"}
    )  # fmt: skip
    pid: int | None = None
    samples: int
    interval_s: float | None = None
    cpu_percent: MeanPeak | None = None
    rss_bytes: MeanPeak | None = None
    uss_bytes: MeanPeak | None = None
    threads: MeanPeak | None = None
    open_files: MeanPeak | None = None
    machine_cpu_percent_per_core: list[float] | None = None


class SloCheck(Part):
    """One SLO metric of one level against its threshold."""

    level: str
    metric: str
    threshold: float
    op: Literal["<=", ">="]
    measured: float | None
    passed: bool


class SloResult(Part):
    """The SLO in force (from --slo or the manifest), its checks, and whether all passed."""

    source: str = Field("", description="--slo or manifest.")
    thresholds: dict[str, float] = Field(default_factory=dict)
    checks: list[SloCheck] = Field(default_factory=list)
    passed: bool


class Capacity(Part):
    """What `--find-capacity` found: the highest level that met the SLO."""

    mode: Mode
    slo: dict[str, float] = Field(default_factory=dict)
    found: bool
    level: str | None
    concurrency: int | None = None
    rate: float | None = None
    throughput_rps: float | None
    first_breach: str | None = None
    note: str = ""


class MetricComparison(Part):
    """p99 or throughput of one level, now against the baseline."""

    metric: Literal["p99_ms", "throughput_rps"]
    baseline: float
    current: float
    ratio: float
    p_value: float | None
    regressed: bool
    untested: bool = Field(
        False,
        description="The ratio is past the threshold but the run had too few windows to test it.",
    )
    note: str = ""


class LevelComparison(Part):
    """A level measured in both runs, compared."""

    level: str
    checks: list[MetricComparison]
    regressed: bool


class Comparison(Part):
    """The comparison with a baseline run: a regression needs a ratio past `threshold` and a
    one-sided Mann–Whitney p below `alpha`."""

    file: str
    threshold: float
    alpha: float
    fingerprints_match: bool
    comparisons: list[LevelComparison]
    regressed: bool


class BenchResult(Part):
    """The result of `cpmai bench --json` (schema cpmai-bench/1), also what is saved under the
    state folder's bench/ and compared with as a baseline."""

    OMIT_UNSET: ClassVar[frozenset[str]] = frozenset({"saved_to"})
    schema_: Literal["cpmai-bench/1"] = Field(SCHEMA, alias="schema")
    time: str = Field(description="UTC, ISO 8601.")
    seconds: float = Field(0.0, ge=0)
    target: BenchTarget
    machine: Machine = Field(default_factory=Machine)
    settings: Settings = Field(default_factory=Settings)
    levels: list[LevelResult]
    resources: Resources | None = None
    slo: SloResult | None = None
    capacity: Capacity | None = None
    baseline: Comparison | None = None
    warnings: list[str] = Field(default_factory=list)
    exit_code: Literal[0, 4] = Field(0, description="0 passed, 4 an SLO breach or a regression.")
    saved_to: str | None = Field(None, description="The file the run was saved to.")

    @field_validator("time")
    @classmethod
    def _a_time(cls, value: str) -> str:
        parse_time(value)  # a ValueError when it is not one
        return value

    @property
    def breached(self) -> bool:
        """Whether a threshold was breached: an SLO check failed or a regression was found."""
        return (self.slo is not None and not self.slo.passed) or (
            self.baseline is not None and self.baseline.regressed
        )

    def judge(self) -> ExitCode:
        """Set `exit_code` from `breached` (through `breach_code`); returns it."""
        verdict = breach_code(self.breached)
        self.exit_code = 0 if verdict == ExitCode.OK else 4
        return verdict


def load_result(path: Path) -> BenchResult:
    """A saved `cpmai bench` result; UsageError when the file is not one (unreadable, another
    schema, or incomplete)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable benchmark result: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise UsageError(f"{path}: not a cpmai benchmark result ({SCHEMA})")
    try:
        return BenchResult.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise UsageError(
            f"{path}: not a complete benchmark result: {where}: {first['msg']}"
        ) from None


def saved_runs(folder: Path) -> list[tuple[Path, BenchResult]]:
    """The results saved in `folder`, oldest first (files that are not one are skipped)."""
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            out.append((path, load_result(path)))
        except UsageError:
            continue
    return out
