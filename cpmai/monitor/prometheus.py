"""Prometheus alerting rules from a manifest (`cpmai render prometheus-rules`).

Two kinds of series feed them:

- The server's own (`cpmai.serving.metrics`): `cpmai_requests_total` and the
  `cpmai_request_duration_seconds` histogram. They carry no model or environment label (a
  server serves one model; its `cpmai_model_info{name,version,runtime}` says which), so a rule
  keeps the samples of the targets serving this model by joining on that series per
  `(job, instance)`, and judges each scrape job apart (`sum by (job)`): give every environment
  its own scrape job. Only prediction requests (endpoints infer and invocations) of real
  traffic (`origin="real"`: load tests are marked synthetic) count, as in `cpmai monitor`.
- The watcher's gauges (`cpmai.monitor.gauges`), which the server appends to its /metrics;
  they carry `model` and `env` labels and are filtered on them.

The rules:

    CpmaiLatencyP50High / P95 / P99   the quantile of the request-duration histogram over 5 m
                                      above slo.pN_ms (errors included: the histogram has no
                                      status; `cpmai monitor` counts successful requests only)
    CpmaiErrorRateHigh                share of prediction requests answered 4xx or 5xx over
                                      5 m above slo.error_rate (`cpmai monitor`'s error rate)
    (both only with at least monitoring.schedule.min_requests requests in those 5 m)
    CpmaiDatasetDrift                 cpmai_dataset_drift == 1
    CpmaiModelQualityLow              cpmai_model_quality past monitoring.quality's bound (above
                                      it for mae, rmse, mape, log_loss; below it otherwise)
    CpmaiVersionTooOld                the focus version older than triggers.max_age_days
    CpmaiWatcherStale                 no check for 3 × monitoring.schedule.every (at least
                                      3 minutes: the gauge is as fresh as the last scrape)
    CpmaiServerDown                   `up == 0` for a target that served the model in the last
                                      day (per job and instance)
    CpmaiServerAbsent                 no scraped target serves the model at all

The gauge rules wait one check interval (`for:` schedule.every, 5m without a schedule): a
verdict holds across two checks before it pages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cpmai.clock import parse_duration
from cpmai.errors import UsageError
from cpmai.manifest_watch import Schedule
from cpmai.stats import LOWER_IS_BETTER

if TYPE_CHECKING:
    from cpmai.manifest import Manifest

RATE_WINDOW = "5m"
PREDICT = 'endpoint=~"infer|invocations",origin="real"'
"""The prediction requests of real traffic: what `cpmai monitor` judges."""
STALE_FLOOR_S = 180.0
"""The shortest silence that counts as a stale watcher (see `stale_after`)."""
DOWN_LOOKBACK = "1d"
"""How long a target that stops answering is still known to have served the model."""


def prometheus_rules(manifest: Manifest, *, env: str | None) -> str:
    """A Prometheus rules file (YAML, one group) alerting on the manifest's bounds: SLO latency
    and error rate from the server's series, drift, model quality, version age and the
    watcher's heartbeat from the watcher's gauges (of `env` only, when given), and servers that
    stopped answering. See the module for each rule."""
    import yaml

    check_env(manifest, env)
    name = manifest.name
    rules: list[dict[str, Any]] = []
    slo = manifest.slo
    schedule = manifest.monitoring.schedule
    every = schedule.every if schedule is not None else "5m"
    for quantile, bound in (("50", slo.p50_ms), ("95", slo.p95_ms), ("99", slo.p99_ms)):
        if bound is None:
            continue
        buckets = f"rate(cpmai_request_duration_seconds_bucket{{{PREDICT}}}[{RATE_WINDOW}])"
        expr = (
            f"histogram_quantile(0.{quantile}, sum by (job, le) ({_ours(buckets, name)}))"
            f" > {bound / 1000:g}"
        )
        rules.append(
            _alert(
                f"CpmaiLatencyP{quantile}High",
                f"{expr}\n{_busy(manifest)}",
                "5m",
                "warning",
                name,
                f"{name}: p{quantile} latency above the SLO ({bound:g} ms)",
                f"p{quantile} of prediction requests over the last {RATE_WINDOW} on job "
                f"{{{{ $labels.job }}}} is {{{{ $value | humanizeDuration }}}}, above slo.p"
                f"{quantile}_ms ({bound:g} ms).",
            )
        )
    if slo.error_rate is not None:
        requests = f"rate(cpmai_requests_total{{{PREDICT}}}[{RATE_WINDOW}])"
        errors = f'rate(cpmai_requests_total{{{PREDICT},status=~"[45].."}}[{RATE_WINDOW}])'
        expr = (
            f"sum by (job) ({_ours(errors, name)})\n  / sum by (job) ({_ours(requests, name)})\n"
            f"  > {slo.error_rate:g}\n{_busy(manifest)}"
        )
        rules.append(
            _alert(
                "CpmaiErrorRateHigh",
                expr,
                "5m",
                "critical",
                name,
                f"{name}: error rate above the SLO ({slo.error_rate:g})",
                f"{{{{ $value | humanizePercentage }}}} of prediction requests over the last "
                f"{RATE_WINDOW} on job {{{{ $labels.job }}}} were answered 4xx or 5xx, above "
                f"slo.error_rate ({slo.error_rate:g}).",
            )
        )
    watched = _gauge_labels(name, env)
    rules.append(
        _alert(
            "CpmaiDatasetDrift",
            f"{gauge('cpmai_dataset_drift', watched)} == 1",
            every,
            "warning",
            name,
            f"{name}: the inputs drifted in {{{{ $labels.env }}}}",
            f"At least monitoring.drift.share ({manifest.monitoring.drift.share:g}) of the "
            "inputs of version {{ $labels.version }} drifted from the reference data in the "
            "watcher's last checks (see cpmai_feature_drifted, or `cpmai monitor`).",
        )
    )
    quality = manifest.monitoring.quality
    if quality is not None:
        ceiling = quality.metric in LOWER_IS_BETTER
        metric = f'{watched},metric="{quality.metric}"'
        rules.append(
            _alert(
                "CpmaiModelQualityLow",
                f"{gauge('cpmai_model_quality', metric)} {'>' if ceiling else '<'} {quality.min:g}",
                every,
                "critical",
                name,
                f"{name}: {quality.metric} past its bound in {{{{ $labels.env }}}}",
                f"{quality.metric} of version {{{{ $labels.version }}}} from the labels is "
                f'{{{{ $value | printf "%.4g" }}}}, {"above" if ceiling else "below"} '
                f"monitoring.quality.min ({quality.min:g}).",
            )
        )
    max_days = manifest.monitoring.triggers.max_age_days
    if max_days is not None:
        rules.append(
            _alert(
                "CpmaiVersionTooOld",
                f"time() - {gauge('cpmai_version_packaged_timestamp_seconds', watched)} > "
                f"{max_days * 86400}",
                None,
                "info",
                name,
                f"{name}: version {{{{ $labels.version }}}} is older than {max_days} days",
                f"Version {{{{ $labels.version }}}} in {{{{ $labels.env }}}} was packaged "
                f"{{{{ $value | humanizeDuration }}}} ago, past "
                f"monitoring.triggers.max_age_days ({max_days}): time to retrain.",
            )
        )
    if schedule is not None:
        stale = stale_after(schedule)
        rules.append(
            _alert(
                "CpmaiWatcherStale",
                f"time() - {gauge('cpmai_watch_last_check_timestamp_seconds', watched)}"
                f" > {stale:g}",
                None,
                "warning",
                name,
                f"{name}: the watcher of {{{{ $labels.env }}}} has not checked for a while",
                f"The last check was {{{{ $value | humanizeDuration }}}} ago (as of the last "
                f"scrape); the watcher runs every {schedule.every} (monitoring.schedule.every). "
                "Is it running? "
                "(`cpmai status`; `cpmai deploy` starts it.)",
            )
        )
    info = f'cpmai_model_info{{name="{name}"}}'
    rules.append(
        _alert(
            "CpmaiServerDown",
            f"up == 0 and on (job, instance) max_over_time({info}[{DOWN_LOOKBACK}])",
            "1m",
            "critical",
            name,
            f"{name}: a server stopped answering scrapes",
            f"{{{{ $labels.instance }}}} (job {{{{ $labels.job }}}}) served {name} within the "
            f"last {DOWN_LOOKBACK} and does not answer /metrics now.",
        )
    )
    rules.append(
        _alert(
            "CpmaiServerAbsent",
            f"absent({info})",
            "5m",
            "critical",
            name,
            f"{name}: no server of the model is scraped",
            f"No target Prometheus scrapes exports {info}: every server of {name} is down "
            "or gone from the scrape configuration.",
        )
    )
    group = f"cpmai-{name}" + (f"-{env}" if env else "")
    doc = {"groups": [{"name": group, "rules": rules}]}
    text: str = yaml.dump(doc, Dumper=_dumper(), sort_keys=False, allow_unicode=True, width=1000)
    return text


def check_env(manifest: Manifest, env: str | None) -> None:
    """Refuse an environment the manifest does not define (its rules would never match)."""
    if env is not None and env not in manifest.environments:
        known = ", ".join(manifest.environments) or "none defined"
        raise UsageError(
            f"--env {env}: {manifest.name}'s manifest has no environment {env!r} (defined: {known})"
        )


def stale_after(schedule: Schedule) -> float:
    """Seconds without a check after which the watcher is stale: 3 × `every`, and at least
    STALE_FLOOR_S (the gauge is only as fresh as the last scrape, a minute by default)."""
    return max(3 * parse_duration(schedule.every), STALE_FLOOR_S)


def _ours(selector: str, name: str) -> str:
    """`selector`'s samples from the targets serving model `name` (the server's own series
    carry no model label: `cpmai_model_info` names it, per job and instance)."""
    return f'{selector} and on (job, instance) cpmai_model_info{{name="{name}"}}'


def _busy(manifest: Manifest) -> str:
    """The traffic a latency or error-rate verdict needs (`monitoring.schedule.min_requests`
    prediction requests in the rate window), as an `and` clause by job."""
    schedule = manifest.monitoring.schedule or Schedule()
    count = _ours(f"increase(cpmai_requests_total{{{PREDICT}}}[{RATE_WINDOW}])", manifest.name)
    return f"  and on (job) sum by (job) ({count}) >= {schedule.min_requests}"


def _gauge_labels(name: str, env: str | None) -> str:
    return f'model="{name}"' + (f',env="{env}"' if env else "")


def gauge(series: str, matchers: str) -> str:
    """A watcher's gauge: every server of the environment appends the same file, so one value
    per series whatever the replicas (`max without (instance)`)."""
    return f"max without (instance) ({series}{{{matchers}}})"


def _alert(
    alert: str,
    expr: str,
    for_: str | None,
    severity: str,
    model: str,
    summary: str,
    description: str,
) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": alert, "expr": expr}
    if for_ is not None:
        rule["for"] = for_.strip()
    rule["labels"] = {"severity": severity, "model": model}
    rule["annotations"] = {"summary": summary, "description": description}
    return rule


def _dumper() -> Any:
    import yaml

    class Dumper(yaml.SafeDumper):
        """Multi-line strings (the longer expressions) as literal blocks."""

    def text(dumper: yaml.SafeDumper, value: str) -> Any:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return Dumper
