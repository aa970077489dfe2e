"""A Grafana dashboard from a manifest (`cpmai render grafana`): the server's traffic, errors,
latency, batches, CPU and memory, and the watcher's drift, quality and alerts, each with the
manifest's bound drawn as a threshold line.

The server's own series carry no model label: panels keep the targets serving this model by
joining on `cpmai_model_info{name=...}` per `(job, instance)`, and a `job` variable picks the
scrape jobs (one per environment). The watcher's gauges (`cpmai.monitor.gauges`) carry `model`
and `env` and are filtered on them (on `$env` when no environment is given). The Prometheus
data source is a variable (`${datasource}`), chosen on import.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any

from cpmai.monitor.prometheus import PREDICT, check_env, gauge, stale_after
from cpmai.stats import LOWER_IS_BETTER

if TYPE_CHECKING:
    from cpmai.manifest import Manifest

SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
GREEN, AMBER, RED = "green", "orange", "red"


def grafana_dashboard(manifest: Manifest, *, env: str | None) -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (import it, or provision it from a file)."""
    check_env(manifest, env)
    name = manifest.name
    watched = f'model="{name}",' + (f'env="{env}"' if env else 'env=~"$env"')
    job = 'job=~"$job"'
    info = f'cpmai_model_info{{name="{name}"}}'

    def ours(selector: str) -> str:
        return f"{selector} and on (job, instance) {info}"

    def by_job(series: str, matchers: str, by: str = "job") -> str:
        return f"sum by ({by}) ({ours(_rate(series, matchers))})"

    def quantile(q: str, histogram: str, matchers: str) -> tuple[str, str]:
        expr = f"histogram_quantile({q}, {by_job(f'{histogram}_bucket', matchers, 'job, le')})"
        return expr, f"p{q[2:]} {{{{job}}}}"

    predict = f"{job},{PREDICT}"
    failed = f'{predict},status=~"[45].."'
    slo = manifest.slo
    drift = manifest.monitoring.drift
    batch_mean = (
        f"{by_job('cpmai_batch_rows_sum', job)} / {by_job('cpmai_batch_rows_count', job)}",
        "mean {{job}}",
    )
    panels: list[dict[str, Any]] = [
        _panel(
            "Requests/s by endpoint and status",
            [(by_job("cpmai_requests_total", job, "endpoint, status"), "{{endpoint}} {{status}}")],
            unit="reqps",
            description="Every request the servers answered, real and synthetic.",
        ),
        _panel(
            "Error rate",
            [
                (
                    f"{by_job('cpmai_requests_total', failed)}"
                    f" / {by_job('cpmai_requests_total', predict)}",
                    "{{job}}",
                )
            ],
            unit="percentunit",
            thresholds=_above(slo.error_rate),
            description="Share of prediction requests (infer, invocations) of real traffic "
            "answered 4xx or 5xx, against slo.error_rate.",
        ),
        _panel(
            "Latency p50 / p95 / p99",
            [
                quantile(q, "cpmai_request_duration_seconds", predict)
                for q in ("0.50", "0.95", "0.99")
            ],
            unit="s",
            thresholds=_bounds([b / 1000 for b in (slo.p50_ms, slo.p95_ms, slo.p99_ms) if b]),
            description="Prediction requests of real traffic, from the request-duration "
            "histogram (errors included); the lines are the SLO bounds.",
        ),
        _panel(
            "Batch sizes (rows per model call)",
            [*(quantile(q, "cpmai_batch_rows", job) for q in ("0.50", "0.99")), batch_mean],
            unit="short",
        ),
        _panel(
            "CPU (cores)",
            [(ours(_rate("process_cpu_seconds_total", job)), "{{instance}}")],
            unit="short",
        ),
        _panel(
            "Memory (resident)",
            [(ours(f"process_resident_memory_bytes{{{job}}}"), "{{instance}}")],
            unit="bytes",
        ),
        _panel(
            "Feature drift",
            [
                (gauge("cpmai_feature_drift", watched), "{{feature}} ({{method}}) {{env}}"),
                (gauge("cpmai_prediction_drift", watched), "predictions ({{method}}) {{env}}"),
            ],
            unit="short",
            thresholds=_above(drift.threshold),
            description="Each input's drift statistic at the watcher's last check. Distances "
            "(wasserstein, jensen_shannon) drift at the line, monitoring.drift.threshold; ks and "
            "chi2 statistics are judged by their p-value (cpmai_feature_drift_p_value).",
        ),
        _panel(
            "Drift share",
            [
                (gauge("cpmai_drift_share", watched), "drifted share {{env}}"),
                (gauge("cpmai_dataset_drift", watched), "dataset drifted (1) {{env}}"),
            ],
            unit="percentunit",
            thresholds=_above(drift.share),
            description="Share of the judged inputs that drifted; the dataset drifts at the line "
            "(monitoring.drift.share).",
        ),
        _quality_panel(manifest, watched),
        _panel(
            "Data quality",
            [
                (gauge("cpmai_data_quality_missing_share", watched), "missing {{feature}} {{env}}"),
                (
                    gauge("cpmai_data_quality_out_of_range_share", watched),
                    "out of range {{feature}} {{env}}",
                ),
            ],
            unit="percentunit",
        ),
        _panel(
            "Alerts firing (watcher)",
            [(gauge("cpmai_alerts_firing", watched), "{{kind}} {{env}}")],
            unit="short",
            thresholds=_above(0.5),
        ),
        _last_check_panel(manifest, watched),
    ]
    for number, panel in enumerate(panels):
        panel["id"] = number + 1
        panel["gridPos"] = {"h": 8, "w": 12, "x": 12 * (number % 2), "y": 8 * (number // 2)}
    variables: list[dict[str, Any]] = [
        {
            "name": "datasource",
            "label": "Prometheus",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "refresh": 1,
            "regex": "",
            "options": [],
        },
        _query_variable("job", "Scrape job", f"label_values({info}, job)"),
    ]
    if env is None:
        variables.append(
            _query_variable(
                "env", "Environment", f'label_values(cpmai_alerts_firing{{model="{name}"}}, env)'
            )
        )
    return {
        "id": None,
        "uid": dashboard_uid(name, env),
        "title": f"cpmai: {name}" + (f" ({env})" if env else ""),
        "description": manifest.description[:500],
        "tags": ["cpmai", name],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": variables},
        "panels": panels,
    }


def dashboard_uid(name: str, env: str | None) -> str:
    """`cpmai-NAME[-ENV]`, or, when that is not a valid uid (at most 40 of [A-Za-z0-9_-]), a
    shortened one with a hash of both."""
    plain = f"cpmai-{name}" + (f"-{env}" if env else "")
    if len(plain) <= 40 and re.fullmatch(r"[A-Za-z0-9_-]+", plain):
        return plain
    digest = hashlib.sha256(plain.encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9_-]", "-", plain)[:31] + "-" + digest


def _rate(series: str, matchers: str) -> str:
    return f"rate({series}{{{matchers}}}[{RATE}])"


def _quality_panel(manifest: Manifest, watched: str) -> dict[str, Any]:
    quality = manifest.monitoring.quality
    if quality is None:
        return _panel(
            "Model quality",
            [(gauge("cpmai_model_quality", watched), "{{metric}} {{env}}")],
            unit="short",
            description="Every metric computed from the labels (no bound: monitoring.quality "
            "is not set).",
        )
    ceiling = quality.metric in LOWER_IS_BETTER
    return _panel(
        f"Model quality: {quality.metric}",
        [
            (
                gauge("cpmai_model_quality", f'{watched},metric="{quality.metric}"'),
                "{{version}} {{env}}",
            )
        ],
        unit="short",
        thresholds=_above(quality.min) if ceiling else _below(quality.min),
        description=f"{quality.metric} from the labels, against monitoring.quality.min "
        f"({'an error metric: bad above the line' if ceiling else 'bad below the line'}).",
    )


def _last_check_panel(manifest: Manifest, watched: str) -> dict[str, Any]:
    schedule = manifest.monitoring.schedule
    stale = stale_after(schedule) if schedule is not None else None
    panel = _panel(
        "Time since the last check",
        [(f"time() - {gauge('cpmai_watch_last_check_timestamp_seconds', watched)}", "{{env}}")],
        unit="s",
        thresholds=_above(stale),
        description="How long ago the watcher last checked"
        + (
            f" (red after {stale:g} s: 3 × monitoring.schedule.every, at least 3 minutes)."
            if schedule
            else "."
        ),
    )
    panel["type"] = "stat"
    panel["options"] = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "value",
        "graphMode": "none",
        "textMode": "auto",
    }
    panel["fieldConfig"]["defaults"].pop("custom")
    return panel


def _panel(
    title: str,
    targets: list[tuple[str, str]],
    *,
    unit: str,
    thresholds: list[dict[str, Any]] | None = None,
    description: str = "",
) -> dict[str, Any]:
    """A time-series panel; `thresholds` (steps) are drawn as lines."""
    steps = thresholds or [{"color": GREEN, "value": None}]
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "thresholds": {"mode": "absolute", "steps": steps},
                "custom": {
                    "drawStyle": "line",
                    "lineWidth": 1,
                    "fillOpacity": 0,
                    "showPoints": "never",
                    "thresholdsStyle": {"mode": "line" if thresholds else "off"},
                },
            },
            "overrides": [],
        },
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "none"},
        },
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": expr,
                "legendFormat": legend,
                "range": True,
            }
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def _above(bound: float | None) -> list[dict[str, Any]] | None:
    """Green, red from `bound` up."""
    if bound is None:
        return None
    return [{"color": GREEN, "value": None}, {"color": RED, "value": bound}]


def _below(bound: float) -> list[dict[str, Any]]:
    """Red, green from `bound` up."""
    return [{"color": RED, "value": None}, {"color": GREEN, "value": bound}]


def _bounds(bounds: list[float]) -> list[dict[str, Any]] | None:
    """One line per bound, ascending (orange below the highest, red above it)."""
    if not bounds:
        return None
    ordered = sorted(set(bounds))
    colors = [AMBER] * (len(ordered) - 1) + [RED]
    return [{"color": GREEN, "value": None}] + [
        {"color": color, "value": value} for color, value in zip(colors, ordered, strict=True)
    ]


def _query_variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".+",
        "current": {},
        "hide": 0,
        "options": [],
        "sort": 1,
        "regex": "",
    }
