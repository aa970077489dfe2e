"""The manifest's `environments:`: where a model runs, with how many replicas (a number or a
range that follows the load), what each is given, and how new versions roll out."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from cpmai.manifest_base import Fraction, PositiveFloat, Strict


class Resources(Strict):
    """What one replica is given (and charged for)."""

    cpu: PositiveFloat = 1.0
    """CPU cores per replica."""
    memory_gb: PositiveFloat = 1.0
    """Memory per replica, GiB."""


class Autoscaling(Strict):
    """Replicas that follow the load: a floor, a ceiling and the load each replica should carry.

    ray: Serve's autoscaler (`min_replicas`, `max_replicas`, `target_ongoing_requests`);
    kubernetes: the HorizontalPodAutoscaler's bounds; kserve: the predictor's bounds and its
    concurrency target."""

    min: Annotated[int, Field(ge=1, le=1000)]
    """Replicas always running (at least 1: cpmai keeps the environment answering)."""
    max: Annotated[int, Field(ge=1, le=1000)]
    """Most replicas the autoscaler may start."""
    target_ongoing_requests: Annotated[float, Field(gt=0, le=10_000)] = 2.0
    """Requests in flight per replica the autoscaler aims for (Serve's default: 2)."""
    upscale_delay_s: Annotated[float, Field(ge=0, le=3600)] = 30.0
    """ray: how long the load must call for more replicas before one is added (Serve's
    default: 30 s)."""
    downscale_delay_s: Annotated[float, Field(ge=0, le=86_400)] = 600.0
    """ray: how long the load must allow fewer replicas before one is removed (Serve's
    default: 600 s)."""

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


AUTOSCALED_TARGETS = ("ray", "kubernetes", "kserve")


def _count_or_text(schema: dict[str, Any]) -> None:
    """`for:` is a number of checks, or the same as text (`3 checks`)."""
    number = {k: schema.pop(k) for k in ("type", "minimum", "maximum") if k in schema}
    schema["anyOf"] = [number, {"type": "string", "pattern": r"^\s*\d{1,4}\s*(checks?)?\s*$"}]


class Rollout(Strict):
    """How a new version replaces the live one."""

    strategy: Literal["direct", "canary", "blue-green"] = "direct"
    """direct: switch at once; canary: shift traffic step by step; blue-green: start beside,
    then switch."""
    steps: list[Annotated[int, Field(ge=1, le=100)]] = [100]
    """Traffic percentages of a canary, ending at 100."""
    auto_rollback: bool = True
    """canary: put all traffic back on the live version when a step breaches (off: the rollout
    goes on). A version that fails to load or become healthy is always routed back."""
    window_s: Annotated[float, Field(gt=0, le=86_400)] = 30.0
    """canary: how long each step is watched before the two versions are compared, seconds."""
    max_error_rate_increase: Fraction = 0.01
    """canary: a breach when the new version's error rate exceeds the live one's by more."""
    max_p99_ratio: Annotated[float, Field(ge=1, le=1000)] = 2.0
    """canary: a breach when the new version's p99 exceeds this multiple of the live one's
    (and is over `slo.p99_ms`, or 1 ms more when no SLO is set)."""
    min_requests: Annotated[int, Field(ge=1, le=10_000_000)] = 20
    """canary: fewer requests than this to either version in a window: no verdict (said so)."""
    auto_rollback_on: list[Literal["slo", "errors", "drift", "quality"]] = []
    """Outside any rollout too: the watcher (`monitoring.schedule`) puts the previous good
    version back live when the live one breaches one of these in `for` checks in a row."""
    for_checks: Annotated[
        int, Field(ge=1, le=1000, alias="for", json_schema_extra=_count_or_text)
    ] = 3
    """auto_rollback_on: how many checks in a row must breach (`for: 3`, or `for: 3 checks`)."""

    @field_validator("for_checks", mode="before")
    @classmethod
    def _checks(cls, value: object) -> object:
        if isinstance(value, str):
            match = re.fullmatch(r"\s*(\d{1,4})\s*(checks?)?\s*", value)
            if match is None:
                raise ValueError("a number of checks, e.g. 3 or '3 checks'")
            return int(match.group(1))
        return value

    @model_validator(mode="after")
    def _steps(self) -> Rollout:
        if self.steps != sorted(self.steps) or len(set(self.steps)) != len(self.steps):
            raise ValueError("steps must increase, e.g. [10, 50, 100]")
        if self.steps[-1] != 100:
            raise ValueError("the last step must be 100")
        return self


class Environment(Strict):
    """One place the model runs (staging, production, ...)."""

    target: Literal["local", "ray", "docker", "kubernetes", "kserve", "edge"] = "local"
    """Where it runs: a local server process, Ray Serve, or rendered Docker/Kubernetes/KServe
    files, or an edge bundle."""
    host: Annotated[str, Field(min_length=1, max_length=255)] = "127.0.0.1"
    """Interface the server binds (local target)."""
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    """Port the server listens on (none: pick a free one)."""
    replicas: Annotated[int, Field(ge=1, le=1000)] | Autoscaling = 1
    """Server processes / replicas: a number, or (ray, kubernetes, kserve) a range that follows
    the load, e.g. {min: 1, max: 4, target_ongoing_requests: 8}."""
    resources: Resources = Resources()
    """CPU and memory per replica."""
    rollout: Rollout = Rollout()
    """How new versions are rolled out here."""
    approvers: list[Annotated[str, Field(min_length=1, max_length=300)]] = []
    """Who may approve for this environment: names or e-mail patterns such as *@example.com."""
    address: Annotated[str, Field(max_length=1000)] | None = None
    """ray: the cluster address (default: start a local one)."""
    namespace: Annotated[str, Field(max_length=253)] | None = None
    """kubernetes/kserve: the namespace to render into."""
    image: Annotated[str, Field(pattern=r"^[a-z0-9][a-zA-Z0-9._/:@-]{0,255}$")] | None = None
    """docker/kubernetes/kserve: the image to build and run (default: NAME:VERSION; a registry
    prefix such as registry.example.com/ml/NAME is kept, with :VERSION added)."""
    max_replicas: Annotated[int, Field(ge=1, le=1000)] | None = None
    """kubernetes/kserve: the autoscaler's ceiling when `replicas` is a number (default:
    3 × replicas)."""

    @model_validator(mode="after")
    def _scaling(self) -> Environment:
        if isinstance(self.replicas, Autoscaling):
            if self.target not in AUTOSCALED_TARGETS:
                raise ValueError(
                    "replicas as a range needs an autoscaler (targets "
                    f"{', '.join(AUTOSCALED_TARGETS)}); the {self.target} target runs a fixed "
                    "number: give replicas a number"
                )
            if self.max_replicas is not None:
                raise ValueError(
                    "max_replicas is for a fixed replicas number: with a range, use replicas.max"
                )
        elif self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) is below replicas ({self.replicas})"
            )
        return self

    @property
    def autoscaling(self) -> Autoscaling | None:
        """The range, when replicas follow the load."""
        return self.replicas if isinstance(self.replicas, Autoscaling) else None

    @property
    def min_replicas(self) -> int:
        """Replicas always running: the number, or the range's floor."""
        return self.replicas.min if isinstance(self.replicas, Autoscaling) else self.replicas

    @property
    def max_replicas_allowed(self) -> int:
        """The most replicas there may be: the number, the range's ceiling, or (kubernetes,
        kserve) `max_replicas`, else 3 × replicas."""
        if isinstance(self.replicas, Autoscaling):
            return self.replicas.max
        if self.target in ("kubernetes", "kserve"):
            return self.max_replicas or 3 * self.replicas
        return self.replicas
