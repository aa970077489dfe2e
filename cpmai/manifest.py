"""The manifest's schema (pydantic); reading a manifest file is `cpmai.manifest_file`.

Unknown keys are errors, types are strict (a quoted "8080" is not a port) and every problem is
reported as `FILE:LINE field.path: message`. The shared types are in `cpmai.manifest_base`, the
`environments:` section in `cpmai.manifest_environment`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from cpmai.manifest_base import (
    _NAME,
    _SEMVER,
    CLASSIFICATION_METRICS,
    LABEL_METRICS,
    MODEL_FORMATS,
    REGRESSION_METRICS,
    TASK_METRICS,
    UNIT_METRICS,
    Comparison,
    Fraction,
    Name,
    NonNegFloat,
    PositiveFloat,
    RelPath,
    Strict,
)
from cpmai.manifest_environment import (
    AUTOSCALED_TARGETS,
    Autoscaling,
    Environment,
    Resources,
    Rollout,
)
from cpmai.manifest_watch import Alerts, Schedule
from cpmai.stats import parse_comparison
from cpmai.yamlsource import Path_

__all__ = [
    "AUTOSCALED_TARGETS",
    "CLASSIFICATION_METRICS",
    "LABEL_METRICS",
    "MODEL_FORMATS",
    "REGRESSION_METRICS",
    "TASK_METRICS",
    "UNIT_METRICS",
    "Autoscaling",
    "Comparison",
    "Environment",
    "Fraction",
    "Manifest",
    "Name",
    "NonNegFloat",
    "PositiveFloat",
    "RelPath",
    "Resources",
    "Rollout",
    "Strict",
]


class Usage(Strict):
    """How predictions are consumed."""

    mode: Literal["online", "batch", "edge"] = "online"
    """How predictions are consumed: online HTTP requests, batch scoring, or on a device."""


class ModelSpec(Strict):
    """The model file and what it does."""

    path: RelPath
    """The model file or MLflow model folder, relative to the manifest."""
    task: Literal["classification", "regression"]
    """What the model predicts: a class (classification) or a number (regression)."""
    format: Literal[
        "auto", "joblib", "pickle", "skops", "onnx", "mlflow", "xgboost", "lightgbm"
    ] = "auto"
    """auto: from the file extension (a folder with an MLmodel file is an MLflow model; `.json`
    and `.ubj` are XGBoost, `.txt` LightGBM, each loaded with its own library)."""
    runtime: Literal["auto", "sklearn", "onnx"] = "auto"
    """auto: ONNX Runtime when the converted model agrees with the original."""
    trusted_types: list[Annotated[str, Field(max_length=300)]] = []
    """skops only: the extra types you trust the file to contain (e.g. sklearn.tree._tree.Tree)."""


class InputSpec(Strict):
    """One model input."""

    name: Annotated[str, Field(min_length=1, max_length=300)]
    """The column / feature name."""
    type: Literal["integer", "number", "boolean", "string", "category"]
    """Its type; `category` takes one of `categories`, `string` is free text."""
    min: float | None = None
    """Smallest value seen in the reference data (outside the range: a warning, not a refusal)."""
    max: float | None = None
    """Largest value seen in the reference data."""
    categories: list[str | int | bool] | None = None
    """The allowed values of a category input."""
    nullable: bool = False
    """Whether the value may be missing."""
    open: bool = False
    """category only: values outside `categories` are served too (the model encodes unseen
    values, e.g. OneHotEncoder(handle_unknown="ignore")) and counted as unseen."""

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        if self.categories is not None and self.type != "category":
            raise ValueError("categories are only allowed for type: category")
        if self.open and self.type != "category":
            raise ValueError("open is only allowed for type: category")
        if self.type == "category" and not self.categories:
            raise ValueError("type: category needs a non-empty categories list")
        if (self.min is not None or self.max is not None) and self.type not in (
            "integer",
            "number",
        ):
            raise ValueError("min/max are only allowed for integer and number inputs")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class InputOverride(Strict):
    """What to change in one inferred input; the rest stays as inferred."""

    type: Literal["integer", "number", "boolean", "string", "category"] | None = None
    """Another type than the one inferred."""
    categories: list[str | int | bool] | Literal["open"] | None = None
    """The allowed values, or `open`: keep the inferred ones and serve unseen values too."""
    nullable: bool | None = None
    """Whether the value may be missing."""
    min: float | None = None
    """Smallest expected value (numbers)."""
    max: float | None = None
    """Largest expected value (numbers)."""


class InferredSignature(Strict):
    """Inputs inferred from the reference data (and the model), with some changed by hand."""

    infer: Literal[True]
    """Infer the inputs."""
    overrides: dict[Annotated[str, Field(min_length=1, max_length=300)], InputOverride] = {}
    """Input name → what to change in it, e.g. `{region: {categories: open}}`."""


class DataSpec(Strict):
    """Data files, relative to the manifest."""

    reference: RelPath | None = None
    """A training-like sample (CSV or Parquet): the signature is inferred from it, drift measured
    against it."""
    holdout: RelPath | None = None
    """Evaluation data for the metric gates."""
    target: Annotated[str, Field(min_length=1, max_length=300)] | None = None
    """The label column in reference/holdout (not a model input)."""


class LatencyGate(Strict):
    """A short in-process benchmark a version must pass before it may go live."""

    p50_ms: PositiveFloat | None = None
    """Median latency bound, milliseconds."""
    p95_ms: PositiveFloat | None = None
    """95th percentile bound, milliseconds."""
    p99_ms: PositiveFloat | None = None
    """99th percentile bound, milliseconds."""
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 1
    """Requests in flight during the measurement."""
    duration_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    """How long to measure, seconds (after a warm-up)."""


class Gates(Strict):
    """What must hold before a version may go live."""

    metrics: dict[str, Comparison] = {}
    """Metric thresholds on the holdout data, e.g. accuracy: ">= 0.9"."""
    latency: LatencyGate | None = None
    """The latency gate (none: no latency gate)."""
    max_size_mb: PositiveFloat | None = None
    """Largest artifact allowed, megabytes."""
    approvals: dict[str, Annotated[int, Field(ge=0, le=100)]] = {}
    """Approvals a version needs per environment before it may go live there."""


class Slo(Strict):
    """The service level the running model must keep (checked by bench and monitor)."""

    p50_ms: PositiveFloat | None = None
    """Median latency bound, milliseconds."""
    p95_ms: PositiveFloat | None = None
    """95th percentile bound, milliseconds."""
    p99_ms: PositiveFloat | None = None
    """99th percentile bound, milliseconds."""
    error_rate: Fraction | None = None
    """Largest share of failed requests, 0 to 1."""
    throughput_min: PositiveFloat | None = None
    """Requests per second the service must sustain."""


class Drift(Strict):
    """When input or prediction distributions count as drifted from the reference data."""

    threshold: PositiveFloat = 0.1
    """Distance (Wasserstein, Jensen–Shannon) at or above which a feature has drifted."""
    p_value: Annotated[float, Field(gt=0, lt=1)] = 0.05
    """KS / chi-square p-value below which a feature has drifted (small samples)."""
    share: Fraction = 0.5
    """Share of drifted features at or above which the dataset has drifted."""
    min_samples: Annotated[int, Field(ge=1, le=10_000_000)] = 100
    """Fewer rows than this in a window: "not enough data", no verdict."""


class Quality(Strict):
    """The model-quality bound once ground truth arrives."""

    metric: str
    """A metric computed from labels: accuracy, precision, recall, f1 (classification); mae,
    rmse, r2, mape (regression)."""
    min: float
    """Alert below this value (for error metrics — mae, rmse, mape — above it)."""


_URL_PASSWORD = re.compile(
    r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@?#]*:[^/@?#]*@|[?&](ssl)?password=", re.I
)


class LabelsQuery(Strict):
    """Where ground truth is kept: a database query whose rows name a prediction (by the key a
    batch run was given, or the request id the server returned) and its true label."""

    url: Annotated[str, Field(min_length=1)]
    """A database URL (`sqlite:///FILE`, `postgresql://USER@HOST/DB`), or `env:VAR` to read it
    from $VAR: a password belongs in the environment or `~/.pgpass`, not in the manifest (a URL
    with one is refused: the manifest is copied into every artifact)."""

    @field_validator("url")
    @classmethod
    def _no_password(cls, url: str) -> str:
        if _URL_PASSWORD.search(url):
            raise ValueError(
                "the URL holds a password, and the manifest is copied into every artifact: "
                "use env:VAR (the URL in $VAR), PGPASSWORD or ~/.pgpass"
            )
        return url

    query: Annotated[str, Field(min_length=1)]
    """The query that returns the labels (for example `SELECT customer_id, churned FROM
    outcomes`)."""
    key: Annotated[list[str], Field(min_length=1)] | str = "id"
    """The column(s) that match a prediction: the batch run's `--key` columns, in the same
    order, or the request id (`id`, with `row` for a multi-row request)."""
    label: str | None = None
    """The label column (default: `label`, or `data.target`, or the one column left)."""


class Triggers(Strict):
    """When to call for an improvement (retraining)."""

    max_age_days: Annotated[int, Field(ge=1, le=36500)] | None = None
    """Retrain a live version older than this."""
    on: list[Literal["drift", "quality", "slo", "age"]] = []
    """Which findings fire a trigger."""
    command: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    """The command to run when a trigger fires (with --run-triggers)."""
    cooldown_hours: Annotated[float, Field(ge=0, le=8760)] = 24.0
    """A trigger that fired for the same version and environment within this many hours is
    reported but not fired again (no new ledger event, no second run of `command`)."""


class Serving(Strict):
    """How the HTTP server batches, logs and limits requests."""

    max_batch_size: Annotated[int, Field(ge=1, le=100_000)] = 64
    """Most rows in one model call; concurrent requests are grouped up to this."""
    max_latency_ms: Annotated[float, Field(ge=0, le=10_000)] = 0.0
    """How long an idle server may wait for more requests to fill a batch (0: dispatch at
    once; requests that arrive while the model is busy are batched anyway)."""
    log_sample_rate: Fraction = 1.0
    """Share of successful requests written to the prediction log (errors always are)."""
    max_body_mb: Annotated[float, Field(gt=0, le=1024)] = 10.0
    """Larger request bodies are refused with 413."""
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    """Server processes (uvicorn workers) of `cpmai serve`, and so of the docker, kubernetes and
    kserve images, which run it; the local and ray targets scale with `replicas` instead."""
    header_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    """A client must send a request's headers within this many seconds of connecting (or of its
    first byte); a stalled one gets 408 and is disconnected."""
    body_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    """... and the whole body within this many seconds of its headers."""
    threads: Annotated[int, Field(ge=1, le=1024)] | None = None
    """OpenMP/BLAS threads per server process (none: the replica's CPU share, its environment's
    `resources.cpu` rounded up; `cpmai serve` outside any environment: the cores divided among
    its workers)."""


class Monitoring(Strict):
    """How the live model is watched."""

    drift: Drift = Drift()
    """Drift thresholds."""
    quality: Quality | None = None
    """Quality floor (none: no quality alert)."""
    triggers: Triggers = Triggers()
    """Improvement triggers."""
    labels: LabelsQuery | None = None
    """Ground truth from a database, read by every `cpmai monitor` (labels that arrive late are
    matched when they arrive)."""
    sample_interval_s: Annotated[float, Field(ge=0.1, le=3600)] = 5.0
    """How often the local server samples its CPU and memory."""
    schedule: Schedule | None = None
    """Watch every deployed environment: a watcher process (started by `cpmai deploy`, stopped
    by `cpmai stop`) runs these checks on schedule (none: only when `cpmai monitor` runs)."""
    alerts: Alerts = Alerts()
    """What the watcher does with what it finds: alert lifecycle and channels."""


class Retraining(Strict):
    """What retraining costs."""

    cost_per_run: NonNegFloat = 0.0
    """Cost of one retraining run, in `currency`."""
    runs_per_month: NonNegFloat = 0.0
    """Planned runs per month."""


class Costs(Strict):
    """The price sheet and budget."""

    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "USD"
    """ISO 4217 code."""
    cpu_hour: NonNegFloat = 0.0
    """Price of one CPU core for one hour."""
    memory_gb_hour: NonNegFloat = 0.0
    """Price of one GiB of memory for one hour."""
    retraining: Retraining = Retraining()
    """Retraining costs."""
    budget_per_month: NonNegFloat | None = None
    """Alert when the monthly total exceeds this."""


class Business(Strict):
    """What the model is worth: the basis of ROI."""

    value_per_prediction: NonNegFloat = 0.0
    """What one prediction is worth to the business, in `currency`."""
    baseline_cost_per_month: NonNegFloat = 0.0
    """What the process cost per month before the model (counted as saved while it runs)."""
    investment: NonNegFloat = 0.0
    """What building the model cost (development, first training): what the net gain must pay
    back."""
    value_kpi: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,100}$")] | None = None
    """A KPI recorded with `cpmai kpi record` whose values are value delivered, in `currency`:
    used instead of predictions × value_per_prediction."""
    value_from: list[Annotated[str, Field(pattern=_NAME)]] | None = None
    """Environments whose predictions count as value (default: all; e.g. [production])."""


class Governance(Strict):
    """Who may change what runs: signed acts (docs/security.md)."""

    require_signatures: list[Annotated[str, Field(pattern=_NAME)]] = []
    """Environments where approve, deploy, promote and rollback must be signed with the actor's
    SSH key ($CPMAI_SIGNING_KEY, checked against the allowed-signers file), and where only
    approvals so signed count."""


class Manifest(Strict):
    """A cpmai manifest: how a model is used, what it needs, what it must keep achieving,
    where it runs, what it costs and who may change it."""

    model_config = ConfigDict(title="cpmai manifest")

    extends: RelPath | None = None
    """A YAML file of shared defaults (e.g. configs/team-defaults.yaml) this manifest is laid
    over: mappings merge key by key, anything set here wins."""
    name: Name
    version: Annotated[str, Field(pattern=_SEMVER)] | None = None
    """A semantic version; omit it and `cpmai package` picks the next one."""
    description: Annotated[str, Field(max_length=10_000)] = ""
    """What the model decides, for whom (shown in the model card)."""
    owners: list[Annotated[str, Field(min_length=1, max_length=300)]] = []
    """Who answers for the model (e-mail addresses or team names)."""
    usage: Usage = Usage()
    """How the model is used."""
    model: ModelSpec
    """The model file and what it does."""
    signature: Literal["infer"] | InferredSignature | list[InputSpec] = "infer"
    """`infer` (from data.reference and what the model tolerates), `{infer: true, overrides:
    {NAME: {...}}}` to change some inferred inputs, or the explicit list of inputs."""
    data: DataSpec = DataSpec()
    """The data the model needs: reference sample, holdout set, label column."""
    gates: Gates = Gates()
    """What must hold before a version may go live."""
    slo: Slo = Slo()
    """The service level to keep in production."""
    environments: dict[Annotated[str, Field(pattern=_NAME)], Environment] = {}
    """Where the model runs, by environment name."""
    serving: Serving = Serving()
    """Batching, prediction logging and request limits of the HTTP server."""
    monitoring: Monitoring = Monitoring()
    """How the live model is watched and when improvement is triggered."""
    costs: Costs = Costs()
    """Prices and budget."""
    business: Business = Business()
    """Business value, for ROI."""
    governance: Governance = Governance()
    """Signed acts."""

    _file: Path | None = PrivateAttr(default=None)

    @property
    def base_dir(self) -> Path:
        """The folder relative paths resolve against (the manifest's folder)."""
        return self._file.parent if self._file else Path.cwd()

    @property
    def file(self) -> Path | None:
        return self._file

    def resolve(self, relative: str) -> Path:
        return (self.base_dir / relative).resolve()

    @property
    def infers_signature(self) -> bool:
        return not isinstance(self.signature, list)

    def input_names(self) -> list[str] | None:
        if not isinstance(self.signature, list):
            return None
        return [spec.name for spec in self.signature]

    @model_validator(mode="after")
    def _cross_checks(self) -> Manifest:
        problems: list[tuple[Path_, str]] = []
        allowed = TASK_METRICS[self.model.task]
        for metric, bound in self.gates.metrics.items():
            if metric not in allowed:
                problems.append(
                    (
                        ("gates", "metrics", metric),
                        f"unknown {self.model.task} metric (known: {', '.join(allowed)})",
                    )
                )
            elif metric in UNIT_METRICS and not 0 <= parse_comparison(bound)[1] <= 1:
                problems.append(
                    (
                        ("gates", "metrics", metric),
                        f"{metric} lies between 0 and 1: {bound!r} would never compare as meant",
                    )
                )
        if self.gates.metrics and not self.data.holdout:
            problems.append((("gates", "metrics"), "metric gates need data.holdout"))
        if self.gates.metrics and not self.data.target:
            problems.append((("data", "target"), "metric gates need data.target"))
        if isinstance(self.signature, list):
            names = [spec.name for spec in self.signature]
            for i, name in enumerate(names):
                if names.index(name) != i:
                    problems.append((("signature", i, "name"), f"duplicate input {name!r}"))
        for env_key in self.gates.approvals:
            if env_key not in self.environments:
                problems.append((("gates", "approvals", env_key), _no_such_env(env_key, self)))
        for i, env_key in enumerate(self.governance.require_signatures):
            if env_key not in self.environments:
                where: Path_ = ("governance", "require_signatures", i)
                problems.append((where, _no_such_env(env_key, self)))
        judged = LABEL_METRICS[self.model.task]
        if self.monitoring.quality and self.monitoring.quality.metric not in judged:
            metric = self.monitoring.quality.metric
            why = (
                f"{metric} is not computed from labels (it needs every request's probabilities)"
                if metric in allowed
                else f"unknown {self.model.task} metric"
            )
            problems.append(
                (("monitoring", "quality", "metric"), f"{why}; known: {', '.join(judged)}")
            )
        ports: dict[tuple[str, int], str] = {}
        for env_name, env in self.environments.items():
            if env.rollout.auto_rollback_on and env.target not in ("local", "ray"):
                problems.append(
                    (
                        ("environments", env_name, "rollout", "auto_rollback_on"),
                        f"the {env.target} target is rendered, not run, by cpmai: its platform "
                        "rolls back (only local and ray environments are watched)",
                    )
                )
            elif env.rollout.auto_rollback_on and self.monitoring.schedule is None:
                problems.append(
                    (
                        ("environments", env_name, "rollout", "auto_rollback_on"),
                        "an automatic rollback needs the watcher: set monitoring.schedule "
                        "(e.g. {every: 1m, window: 10m})",
                    )
                )
            if env.target == "local" and env.port is not None:
                other = ports.setdefault((env.host, env.port), env_name)
                if other != env_name:
                    problems.append(
                        (
                            ("environments", env_name, "port"),
                            f"port {env.port} is already used by environment {other!r}",
                        )
                    )
        if problems:
            raise _CrossCheckError(problems)
        return self


def _no_such_env(env: str, manifest: Manifest) -> str:
    known = ", ".join(manifest.environments) or "none defined"
    return f"no environment {env!r} under environments: (defined: {known})"


class _CrossCheckError(ValueError):
    def __init__(self, problems: list[tuple[Path_, str]]) -> None:
        super().__init__("; ".join(m for _, m in problems))
        self.problems = problems
