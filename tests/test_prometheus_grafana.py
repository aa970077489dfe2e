"""Prometheus and Grafana: the watcher's gauges as exposition text, the server appending them to
/metrics (and surviving any file at that path), the alerting rules (`promtool check rules`, and
`promtool test rules`: a breaching series fires, a healthy or foreign one does not), and the
dashboard and rules naming only series a real server exports."""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_deploy import NAME, port_of, write_manifest

from conftest import EXAMPLE, FEATURES, run_cpmai
from serving_helpers import Server

REQUIRE_TOOLS = os.environ.get("CPMAI_REQUIRE_TOOLS") == "1"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and not REQUIRE_TOOLS,
    reason="needs promtool (Debian's prometheus package; `make test` installs it)",
)


def promtool(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    if PROMTOOL is None:
        pytest.fail("promtool is missing: `make test` installs Debian's prometheus package")
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True,
                          input=stdin, timeout=120, check=False)  # fmt: skip


def example_manifest() -> Any:
    from cpmai.manifest_file import load_manifest

    return load_manifest(EXAMPLE / "cpmai.yaml", check_files=False)


def strict_manifest(tmp_path: Path) -> Any:
    """A regression model with every SLO, a ceiling on an error metric (mae), a version age
    bound and a schedule."""
    from cpmai.manifest_file import load_manifest

    doc = {
        "name": "house-prices",
        "model": {"path": "model.joblib", "task": "regression"},
        "slo": {"p50_ms": 5, "p95_ms": 20, "p99_ms": 50, "error_rate": 0.01,
                "throughput_min": 100},
        "environments": {"staging": {"target": "local", "port": 18181},
                         "production": {"target": "local", "port": 18182}},
        "monitoring": {
            "quality": {"metric": "mae", "min": 2.0},
            "triggers": {"max_age_days": 1},
            "schedule": {"every": "1m", "window": "10m", "min_requests": 10},
        },
    }  # fmt: skip
    path = tmp_path / "strict.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_manifest(path, check_files=False)


def alert_names(rules: str) -> list[str]:
    return [rule["alert"] for rule in yaml.safe_load(rules)["groups"][0]["rules"]]


# --- the rules, checked and unit-tested by promtool -------------------------------------------


@needs_promtool
def test_rules_from_the_example_pass_promtool(tmp_path: Path) -> None:
    from cpmai.monitor.prometheus import prometheus_rules

    manifest = example_manifest()
    expected = [
        *(f"CpmaiLatency{q.upper()}High" for q in ("p50", "p95", "p99")
          if getattr(manifest.slo, f"{q}_ms") is not None),
        *(["CpmaiErrorRateHigh"] if manifest.slo.error_rate is not None else []),
        "CpmaiDatasetDrift",
        *(["CpmaiModelQualityLow"] if manifest.monitoring.quality else []),
        *(["CpmaiVersionTooOld"] if manifest.monitoring.triggers.max_age_days else []),
        *(["CpmaiWatcherStale"] if manifest.monitoring.schedule else []),
        "CpmaiServerDown", "CpmaiServerAbsent",
    ]  # fmt: skip
    for env in (None, "production"):
        text = prometheus_rules(manifest, env=env)
        path = tmp_path / f"rules-{env}.yml"
        path.write_text(text)
        checked = promtool("check", "rules", path)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert f"SUCCESS: {len(expected)} rules found" in checked.stdout
        assert alert_names(text) == expected
    assert 'env="production"' in text
    if manifest.monitoring.schedule is not None:  # 3 × every, never under 3 minutes of scrapes
        from cpmai.clock import parse_duration

        every = parse_duration(manifest.monitoring.schedule.every)
        rules = {r["alert"]: r for r in yaml.safe_load(text)["groups"][0]["rules"]}
        assert rules["CpmaiWatcherStale"]["expr"].endswith(f"> {max(3 * every, 180):g}")


def _series(metric: str, values: str, /, **labels: str) -> dict[str, str]:
    inner = ",".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{metric}{{{inner}}}", "values": values}


def _unit_tests(model: str) -> list[dict[str, Any]]:
    """Fifteen minutes of scrapes, a minute apart, of four jobs: `api` serves the model and
    breaches (slow real traffic, 2% of it failing, drifted and inaccurate in production, a watcher
    that stopped long ago, a version packaged two days ago); `quiet` serves it slowly but to too
    few requests; `elsewhere` serves another model badly; `gone` served it and stopped. Staging's
    drift is not production's business."""
    api = {"job": "api", "instance": "a:80"}
    real = {**api, "endpoint": "infer", "origin": "real"}
    quiet = {"job": "quiet", "instance": "q:80", "endpoint": "infer", "origin": "real"}
    other = {"job": "elsewhere", "instance": "e:80", "endpoint": "infer", "origin": "real"}
    gone = {"job": "api", "instance": "g:80"}
    watch = {"model": model, "version": "1.0.0", **api}
    histogram = "cpmai_request_duration_seconds_bucket"
    series = [
        _series("cpmai_model_info", "1x15", name=model, version="1.0.0", runtime="onnx", **api),
        _series("cpmai_model_info", "1x15", name=model, version="1.0.0", runtime="onnx",
                job="quiet", instance="q:80"),
        _series("cpmai_model_info", "1x15", name="another", version="1.0.0", runtime="onnx",
                job="elsewhere", instance="e:80"),
        _series("cpmai_model_info", "1 1 1 _x12", name=model, version="1.0.0", runtime="onnx",
                **gone),
        _series("up", "1x15", **api), _series("up", "1x15", job="quiet", instance="q:80"),
        _series("up", "1 1 1 0x12", **gone),
        # real traffic: 540 fast and 60 slow a minute; p50 fine, p95 and p99 breached
        _series(histogram, "0+540x15", le="0.001", **real),
        _series(histogram, "0+540x15", le="0.05", **real),
        _series(histogram, "0+600x15", le="0.1", **real),
        _series(histogram, "0+600x15", le="+Inf", **real),
        # a load test, all slow: would breach p50 if it counted
        _series(histogram, "0+0x15", le="0.001", **{**real, "origin": "synthetic"}),
        _series(histogram, "0+0x15", le="0.1", **{**real, "origin": "synthetic"}),
        _series(histogram, "0+5000x15", le="+Inf", **{**real, "origin": "synthetic"}),
        _series("cpmai_requests_total", "0+588x15", status="200", **real),
        _series("cpmai_requests_total", "0+12x15", status="500", **real),
        _series("cpmai_requests_total", "0+5000x15", status="503",
                **{**real, "origin": "synthetic"}),
        # one slow, failing request a minute: below min_requests (10) in 5 minutes
        *(_series(histogram, "0+1x15", le=le, **quiet) for le in ("0.1", "+Inf")),
        _series("cpmai_requests_total", "0+1x15", status="500", **quiet),
        # another model, all slow and failing
        *(_series(histogram, "0+600x15", le=le, **other) for le in ("1.0", "+Inf")),
        _series("cpmai_requests_total", "0+600x15", status="500", **other),
        # the watcher's gauges
        _series("cpmai_dataset_drift", "1x15", env="production", **watch),
        _series("cpmai_dataset_drift", "1x15", env="staging", **watch),
        _series("cpmai_model_quality", "5x15", env="production", metric="mae", **watch),
        _series("cpmai_model_quality", "-3x15", env="production", metric="r2", **watch),
        _series("cpmai_version_packaged_timestamp_seconds", "-172800x15", env="production",
                **watch),
        _series("cpmai_watch_last_check_timestamp_seconds", "0x15", env="production",
                model=model, **api),
    ]  # fmt: skip
    labels = {"model": model}
    watched = {"model": model, "env": "production", "job": "api", "version": "1.0.0"}
    fires = {
        "CpmaiLatencyP50High": [],
        "CpmaiLatencyP95High": [{"severity": "warning", "job": "api", **labels}],
        "CpmaiLatencyP99High": [{"severity": "warning", "job": "api", **labels}],
        "CpmaiErrorRateHigh": [{"severity": "critical", "job": "api", **labels}],
        "CpmaiDatasetDrift": [{"severity": "warning", **watched}],
        "CpmaiModelQualityLow": [{"severity": "critical", "metric": "mae", **watched}],
        "CpmaiVersionTooOld": [{"severity": "info", **watched}],
        "CpmaiWatcherStale": [
            {"severity": "warning", "model": model, "env": "production", "job": "api"}
        ],
        "CpmaiServerDown": [{"severity": "critical", "job": "api", "instance": "g:80", **labels}],
        "CpmaiServerAbsent": [],
    }
    at = "14m"
    cases = [
        {"eval_time": at, "alertname": name,
         "exp_alerts": [{"exp_labels": want} for want in wanted]}
        for name, wanted in fires.items()
    ]  # fmt: skip
    # at the first evaluation, those with a `for:` are pending, not firing
    waiting = set(fires) - {"CpmaiVersionTooOld", "CpmaiWatcherStale"}
    early = [{"eval_time": "0m", "alertname": name, "exp_alerts": []} for name in waiting]
    nothing = {
        "interval": "1m",
        "input_series": [_series("up", "1x10", job="api", instance="a:80")],
        "alert_rule_test": [
            {"eval_time": "4m", "alertname": "CpmaiServerAbsent", "exp_alerts": []},
            {"eval_time": "9m", "alertname": "CpmaiServerAbsent",
             "exp_alerts": [{"exp_labels": {"severity": "critical", "name": model, **labels}}]},
        ],
    }  # fmt: skip
    return [
        {"interval": "1m", "input_series": series, "alert_rule_test": cases + early},
        nothing,
    ]


@needs_promtool
def test_rules_with_every_bound_pass_promtool_and_fire_on_breaches(tmp_path: Path) -> None:
    from cpmai.monitor.prometheus import prometheus_rules

    manifest = strict_manifest(tmp_path)
    text = prometheus_rules(manifest, env="production")
    rules = tmp_path / "rules.yml"
    rules.write_text(text)
    checked = promtool("check", "rules", rules)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert alert_names(text) == [
        "CpmaiLatencyP50High", "CpmaiLatencyP95High", "CpmaiLatencyP99High",
        "CpmaiErrorRateHigh", "CpmaiDatasetDrift", "CpmaiModelQualityLow", "CpmaiVersionTooOld",
        "CpmaiWatcherStale", "CpmaiServerDown", "CpmaiServerAbsent",
    ]  # fmt: skip
    doc = yaml.safe_load(text)
    by_name = {rule["alert"]: rule for rule in doc["groups"][0]["rules"]}
    assert "> 2" in by_name["CpmaiModelQualityLow"]["expr"]  # mae: a ceiling
    assert "> 180" in by_name["CpmaiWatcherStale"]["expr"]  # 3 × 1m
    assert by_name["CpmaiDatasetDrift"]["for"] == "1m"  # one check interval
    assert ">= 10" in by_name["CpmaiErrorRateHigh"]["expr"]  # schedule.min_requests
    # promtool compares annotations too; theirs ({{ $value }}) are checked by `check rules`
    for rule in doc["groups"][0]["rules"]:
        rule.pop("annotations")
    bare = tmp_path / "bare.yml"
    bare.write_text(yaml.safe_dump(doc, sort_keys=False))
    tests = tmp_path / "tests.yml"
    tests.write_text(yaml.safe_dump({
        "rule_files": [bare.name],
        "evaluation_interval": "1m",
        "tests": _unit_tests(manifest.name),
    }, sort_keys=False))  # fmt: skip
    tested = promtool("test", "rules", tests)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_an_environment_the_manifest_lacks_is_a_usage_error(cli: Any) -> None:
    manifest = EXAMPLE / "cpmai.yaml"
    for command in ("prometheus-rules", "grafana"):
        result = cli("render", command, manifest, "--env", "prod")
        assert result.code == 2 and "no environment 'prod'" in result.err, result.err
        assert "Traceback" not in result.err
    result = cli("render", "grafana", manifest, "-o", "/nonexistent-folder/d.json")
    assert result.code == 2 and "no folder" in result.err


def test_the_commands_write_stdout_or_a_file(cli: Any, tmp_path: Path) -> None:
    manifest = EXAMPLE / "cpmai.yaml"
    result = cli("render", "prometheus-rules", manifest)
    assert result.code == 0 and yaml.safe_load(result.out)["groups"][0]["name"] == (
        "cpmai-churn-classifier"
    )
    out = tmp_path / "dashboard.json"
    result = cli("render", "grafana", manifest, "--env", "staging", "-o", out)
    assert result.code == 0 and result.out == "" and f"wrote {out}" in result.err
    dashboard = json.loads(out.read_text())
    assert dashboard["uid"] == "cpmai-churn-classifier-staging"
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["templating"]["list"][0]["type"] == "datasource"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"] and all(t["expr"] for t in panel["targets"])


def test_the_dashboard_draws_the_bounds() -> None:
    from cpmai.monitor.grafana import dashboard_uid, grafana_dashboard

    dashboard = grafana_dashboard(example_manifest(), env=None)
    panels = {panel["title"]: panel for panel in dashboard["panels"]}

    def lines(title: str) -> list[float]:
        steps = panels[title]["fieldConfig"]["defaults"]["thresholds"]["steps"]
        return [step["value"] for step in steps[1:]]

    manifest = example_manifest()
    slo, drift, quality = manifest.slo, manifest.monitoring.drift, manifest.monitoring.quality
    bounds = [b / 1000 for b in (slo.p50_ms, slo.p95_ms, slo.p99_ms) if b is not None]
    assert lines("Latency p50 / p95 / p99") == sorted(bounds)
    assert lines("Error rate") == [slo.error_rate]
    assert lines("Feature drift") == [drift.threshold] and lines("Drift share") == [drift.share]
    drawn = panels[f"Model quality: {quality.metric}"]["fieldConfig"]["defaults"]["thresholds"]
    assert drawn["steps"] == [
        {"color": "red", "value": None}, {"color": "green", "value": quality.min}
    ]  # fmt: skip
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource", "job", "env"]
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    long = dashboard_uid("a" * 60, "production")
    assert len(long) <= 40 and re.fullmatch(r"[A-Za-z0-9_-]+", long)
    assert dashboard_uid("m.v2", None) != dashboard_uid("m-v2", None)


# --- the gauges file ---------------------------------------------------------------------------


def _result(**changes: Any) -> Any:
    """A small MonitorResult: two inputs judged, one without a verdict, quality from labels."""
    from cpmai.manifest import Monitoring
    from cpmai.monitor.result import MonitorResult

    latency = {"p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0, "max_ms": 4.0}
    traffic = {"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T01:00:00Z", "requests": 10,
               "rows": 10, "requests_per_s": 0.003, "errors": {}, "error_rate": 0.0,
               "latency_ms": latency, "resources": None}  # fmt: skip

    def feature(name: str, statistic: float | None, drifted: bool | None, **more: Any) -> Any:
        return {"feature": name, "kind": "numeric", "method": "wasserstein", "rows": 500,
                "reference_rows": 2000, "statistic": statistic, "p_value": None, "psi": 0.01,
                "threshold": 0.1, "drifted": drifted,
                "status": {None: "not enough data", True: "drift", False: "ok"}[drifted],
                **more}  # fmt: skip

    doc = {
        "schema": "cpmai-monitor/1", "name": NAME, "env": "staging", "version": "1.0.0",
        "live_version": "1.0.0",
        "period": {"since": traffic["start"], "until": traffic["end"], "seconds": 3600,
                   "window_s": 3600},
        "log": {"folder": "x", "files": 1, "bytes": 1, "requests_logged": 10,
                "unreadable_lines": 0, "unreadable": [], "versions": {"1.0.0": 10},
                "synthetic": {"requests": 0, "by_source": {}, "included": False}, "lost": None},
        "age": {"packaged": "2026-01-01T00:00:00Z", "live_since": None, "days": 1.0,
                "max_days": None},
        "slo": {"bounds": {"p99_ms": 50.0, "error_rate": 0.01},
                "checks": [{"metric": "p99_ms", "bound": 50.0, "measured": 3.0, "passed": True},
                           {"metric": "error_rate", "bound": 0.01, "measured": None,
                            "passed": None}]},
        "traffic": traffic, "windows": [],
        "drift": {"status": "drift", "share": 0.5, "drifted": ["a"], "judged": 2,
                  "features": [feature("a", 0.25, True), feature('b "x"\\y', 0.01, False),
                               feature("c", None, None)],
                  "prediction": None, "reference_rows": 2000, "version": "1.0.0"},
        "data_quality": [
            {"feature": "a", "kind": "numeric", "rows": 10, "missing": 1, "missing_share": 0.1,
             "out_of_range": 0, "out_of_range_share": 0.0, "unseen": 0},
            {"feature": "plan", "kind": "categorical", "rows": 10, "missing": 0,
             "missing_share": 0.0, "out_of_range": None, "unseen": 0},
        ],
        "model_quality": {"labelled_rows": 10, "metrics": {"accuracy": 0.9, "f1": math.nan},
                          "join": "id", "labels_given": 10},
        "settings": Monitoring().model_dump(), "alerts": [], "trigger_run": None,
        "error": None, "exit_code": 0,
    }  # fmt: skip
    doc.update(changes)
    return MonitorResult.model_validate(doc)


def _samples(text: str) -> dict[str, list[Any]]:
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge", family.name
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def test_gauges_say_what_was_judged_and_leave_out_the_rest(tmp_path: Path) -> None:
    from cpmai.monitor.gauges import render_gauges, write_gauges

    text = render_gauges(_result(), checked_at=1_700_000_000.5, check_seconds=0.25,
                         firing={"drift": 1, "custom": 2})  # fmt: skip
    assert not re.search(r" [-+]?(NaN|Inf)$", text, re.MULTILINE)
    found = _samples(text)
    drift = {s.labels["feature"]: s for s in found["cpmai_feature_drift"]}
    assert sorted(drift) == ["a", 'b "x"\\y']  # c had too few rows: no verdict, no series
    assert drift["a"].value == 0.25
    assert drift["a"].labels == {"model": NAME, "env": "staging", "version": "1.0.0",
                                 "feature": "a", "method": "wasserstein"}  # fmt: skip
    assert 'feature="b \\"x\\"\\\\y"' in text  # escaped as the format says
    assert [s.value for s in found["cpmai_feature_drifted"]] == [1.0, 0.0]
    assert "cpmai_feature_drift_p_value" not in found  # distances have no p-value
    assert found["cpmai_dataset_drift"][0].value == 1 and found["cpmai_drift_share"][0].value == 0.5
    assert "cpmai_prediction_drift" not in found
    quality = {s.labels["metric"]: s.value for s in found["cpmai_model_quality"]}
    assert quality == {"accuracy": 0.9}  # f1 NaN: left out
    assert {s.labels["feature"]: s.value for s in found["cpmai_data_quality_missing_share"]} == {
        "a": 0.1, "plan": 0.0,
    }  # fmt: skip
    assert [s.labels["feature"] for s in found["cpmai_data_quality_out_of_range_share"]] == ["a"]
    assert [s.labels["metric"] for s in found["cpmai_slo_measured"]] == ["p99_ms"]
    assert {s.labels["metric"]: s.value for s in found["cpmai_slo_bound"]} == {
        "p99_ms": 50.0, "error_rate": 0.01,
    }  # fmt: skip
    assert all("version" not in s.labels for s in found["cpmai_slo_bound"])
    firing = {s.labels["kind"]: s.value for s in found["cpmai_alerts_firing"]}
    assert firing["drift"] == 1 and firing["custom"] == 2 and firing["quality"] == 0
    assert found["cpmai_watch_last_check_timestamp_seconds"][0].value == 1_700_000_000.5
    assert found["cpmai_watch_check_duration_seconds"][0].value == 0.25
    assert found["cpmai_version_packaged_timestamp_seconds"][0].value == 1767225600.0
    for line in text.splitlines():
        if line.startswith("# HELP "):
            assert len(line.split(" ", 3)) == 4
    path = tmp_path / "watch" / NAME / "staging" / "gauges.prom"
    write_gauges(path, text)
    assert path.read_text() == text and not list(path.parent.glob(".*tmp"))

    # nothing judged: no drift series at all (not zeros, which a rule would read as "fine")
    quiet = _result(drift={"status": "not enough data", "share": None, "drifted": [],
                           "judged": 0, "features": [], "prediction": None,
                           "reference_rows": 2000, "version": "1.0.0"},
                    model_quality=None)  # fmt: skip
    found = _samples(render_gauges(quiet, checked_at=1.0, check_seconds=1.0, firing={}))
    assert not {"cpmai_dataset_drift", "cpmai_drift_share", "cpmai_model_quality"} & set(found)


@needs_promtool
def test_gauges_pass_promtool_check_metrics() -> None:
    from cpmai.monitor.gauges import render_gauges

    text = render_gauges(_result(), checked_at=1_700_000_000.5, check_seconds=0.25,
                         firing={"drift": 1})  # fmt: skip
    linted = promtool("check", "metrics", stdin=text)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_a_scrape_rereads_the_file_only_when_it_changed(tmp_path: Path) -> None:
    from cpmai.monitor.gauges import render_gauges, write_gauges
    from cpmai.serving.metrics import ServerMetrics, WatchGauges

    path = tmp_path / "gauges.prom"
    metrics = ServerMetrics(NAME, "1.0.0", "onnx")
    metrics.add_gauges(path)
    assert b"cpmai_alerts_firing" not in metrics.render()  # no file yet
    write_gauges(path, render_gauges(_result(), checked_at=1.0, check_seconds=1.0, firing={}))
    reads = []
    original = WatchGauges._read

    def counted(self: WatchGauges) -> Any:
        reads.append(1)
        return original(self)

    WatchGauges._read = counted  # type: ignore[method-assign]
    try:
        for _ in range(3):
            assert b'cpmai_drift_share{env="staging"' in metrics.render()
        assert len(reads) == 1
        write_gauges(path, render_gauges(_result(), checked_at=2.0, check_seconds=1.0, firing={}))
        assert b"cpmai_watch_last_check_timestamp_seconds" in metrics.render()
        assert len(reads) == 2
    finally:
        WatchGauges._read = original  # type: ignore[method-assign]


JUNK: dict[str, bytes] = {
    "binary garbage": bytes(range(256)) * 4,
    "not UTF-8": b'cpmai_x{a="\xff"} 1\n',
    "a sample line with no value": b'cpmai_x{a="1"}\n',
    "an unquoted label": b"cpmai_x{a=1} 1\n",
    "a malformed TYPE": b"# TYPE cpmai_x sometimes\ncpmai_x 1\n",
    "the server's own counter": b"cpmai_requests_total 5\n",
    "the server's own process series": b"process_cpu_seconds_total 1\n",
    "a series twice": b"cpmai_x 1\ncpmai_x 2\n",
    "a family in two places": b"# TYPE cpmai_x gauge\ncpmai_x 1\ncpmai_y 1\n"
    b'# TYPE cpmai_x gauge\ncpmai_x{a="b"} 1\n',
}


def _own_series(body: bytes) -> None:
    text = body.decode()
    for name in ("cpmai_requests_total", "cpmai_model_info", "process_cpu_seconds_total"):
        assert f"\n{name}" in text or f"# TYPE {name.removesuffix('_total')}" in text, name


def test_junk_at_the_gauges_path_adds_nothing_and_breaks_nothing(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from cpmai.serving.metrics import GAUGES_MAX_BYTES, ServerMetrics, merged_registry

    path = tmp_path / "gauges.prom"
    metrics = ServerMetrics(NAME, "1.0.0", "onnx")
    metrics.add_gauges(path)
    metrics.observe("infer", 200, 0.001)
    good = b'# HELP cpmai_x A gauge.\n# TYPE cpmai_x gauge\ncpmai_x{a="1"} 1.5 1700000000000\n'
    cases = {**JUNK, "too large": b"cpmai_x 1\n" + b"#" * GAUGES_MAX_BYTES}
    for what, data in cases.items():
        path.write_bytes(data)
        body = metrics.render()
        list(text_string_to_metric_families(body.decode()))  # still exposition text
        assert b"cpmai_x" not in body and b"cpmai_y" not in body, what
        _own_series(body)
        assert body.count(b"\ncpmai_requests_total{") == 1, what
        path.write_bytes(good)
        assert b'cpmai_x{a="1"} 1.5' in metrics.render(), what  # and back once it is mended
    path.unlink()
    path.mkdir()
    assert b"cpmai_x" not in metrics.render()
    path.rmdir()
    os.mkfifo(path)  # opening it for reading would block a server that did not look first
    assert b"cpmai_x" not in metrics.render()
    path.unlink()
    path.write_bytes(good)
    path.chmod(0)
    if os.geteuid() != 0:  # root reads anything
        assert b"cpmai_x" not in metrics.render()
    path.chmod(0o644)
    # the environment's server: every version's series, the file once
    registry = merged_registry(lambda: [("1.0.0", metrics), ("1.1.0", metrics)])
    from prometheus_client import generate_latest

    merged = generate_latest(registry).decode()
    assert merged.count('cpmai_x{a="1"}') == 1 and 'version="1.1.0"' in merged
    bare = ServerMetrics(NAME, "1.0.0", "onnx")  # a server with no home: nothing to append
    assert b"cpmai_x" not in bare.render() and bare.gauges is None


# --- a real server ---------------------------------------------------------------------------


@dataclass
class Served:
    home: Path
    manifest: Path
    port: int
    result: Any
    gauges: str
    scrape: str


def _scrape(port: int) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        reply = conn.getresponse()
        return reply.status, reply.read().decode()
    finally:
        conn.close()


def _post(port: int, rows: list[dict[str, Any]], request_id: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/invocations", json.dumps({"dataframe_records": rows}),
                     {"Content-Type": "application/json", "X-Request-Id": request_id})  # fmt: skip
        reply = conn.getresponse()
        assert reply.status == 200, reply.read()
        reply.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def served(trained_example: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The example deployed to staging (the environment's server), 200 labelled rows sent to
    it, `cpmai monitor`'s check of them written as the gauges file; /metrics scraped."""
    import pandas as pd

    from cpmai.home import Home
    from cpmai.monitor.gauges import render_gauges, write_gauges
    from cpmai.monitor.run import monitor
    from cpmai.targets.local import LocalTarget

    folder = tmp_path_factory.mktemp("served")
    shutil.copytree(trained_example, folder / "churn")
    manifest = write_manifest(folder / "churn" / "cpmai.yaml")
    home = folder / "state"
    env = {"CPMAI_HOME": str(home), "CPMAI_ACTOR": "tester@example.com"}
    deployed = run_cpmai("deploy", manifest, "--env", "staging", env=env)
    assert deployed.code == 0, deployed.err
    try:
        port = port_of(manifest, "staging")
        reference = pd.read_csv(folder / "churn" / "data" / "reference.csv").head(200)
        records = json.loads(reference[FEATURES].to_json(orient="records"))
        for start in range(0, len(records), 50):
            _post(port, records[start : start + 50], f"calm-{start}")
        labels = folder / "labels.csv"
        pd.DataFrame({"id": [f"calm-{(i // 50) * 50}" for i in range(len(records))],
                      "row": [i % 50 for i in range(len(records))],
                      "label": reference["churned"]}).to_csv(labels, index=False)  # fmt: skip
        deadline = time.monotonic() + 20
        while True:  # the prediction log is flushed about every second
            began = time.time()
            result = monitor(home, NAME, "staging", labels=labels, use_cache=False)
            if result.traffic.rows >= len(records) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert result.traffic.rows == len(records)
        text = render_gauges(result, checked_at=time.time(), check_seconds=time.time() - began,
                             firing={"drift": 0, "quality": 1})  # fmt: skip
        write_gauges(Home(home).env(NAME, "staging").gauges, text)
        status, scrape = _scrape(port)
        assert status == 200
        yield Served(home, manifest, port, result, text, scrape)
    finally:
        LocalTarget(home, NAME, "staging").stop()  # SIGTERM, then SIGKILL, by its PID


def _names(expr: str) -> set[str]:
    """The series a PromQL expression names (label values set aside)."""
    return set(
        re.findall(r"\b(?:cpmai_[a-z_]+|process_[a-z_]+|up)\b", re.sub(r'"[^"]*"', "", expr))
    )


def _exported(scrape: str) -> set[str]:
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in scrape.splitlines()
        if line and not line.startswith("#")
    }


@pytest.mark.slow
def test_the_server_appends_the_gauges_with_their_labels(served: Served) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(served.scrape)}
    result = served.result
    assert result.model_quality is not None and result.drift.judged == len(FEATURES)
    drift = families["cpmai_feature_drift"].samples
    assert {s.labels["feature"] for s in drift} == set(FEATURES)
    for sample in drift:
        assert sample.labels["model"] == NAME and sample.labels["env"] == "staging"
        assert sample.labels["version"] == result.version
        assert "job" not in sample.labels  # Prometheus adds job and instance when it scrapes
    quality = {s.labels["metric"]: s.value for s in families["cpmai_model_quality"].samples}
    assert quality["accuracy"] == pytest.approx(result.model_quality.metrics["accuracy"])
    assert families["cpmai_alerts_firing"].samples
    assert families["cpmai_requests"].samples  # the server's own, beside them
    assert served.scrape.count("# TYPE cpmai_feature_drift gauge") == 1


@pytest.mark.slow
def test_the_dashboard_and_rules_name_only_exported_series(served: Served) -> None:
    from cpmai.manifest_file import load_manifest
    from cpmai.manifest_watch import Schedule
    from cpmai.monitor.grafana import grafana_dashboard
    from cpmai.monitor.prometheus import prometheus_rules

    exported = _exported(served.scrape)
    deployed = load_manifest(served.manifest, check_files=False)
    # the stale-watcher and age rules too (not deployed so: a watcher would write the file)
    triggers = deployed.monitoring.triggers.model_copy(update={"max_age_days": 30})
    monitoring = deployed.monitoring.model_copy(
        update={"schedule": Schedule(every="1m"), "triggers": triggers}
    )
    manifest = deployed.model_copy(update={"monitoring": monitoring})
    named: set[str] = set()
    for env in (None, "staging"):
        dashboard = grafana_dashboard(manifest, env=env)
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                names = _names(target["expr"])
                assert names, target["expr"]
                assert names <= exported, (panel["title"], names - exported)
                named |= names
        rules = yaml.safe_load(prometheus_rules(manifest, env=env))["groups"][0]["rules"]
        for rule in rules:
            names = _names(rule["expr"]) - {"up"}  # Prometheus's own, per target
            assert names <= exported, (rule["alert"], names - exported)
            named |= names
    assert {"cpmai_feature_drift", "cpmai_model_quality", "process_cpu_seconds_total",
            "cpmai_request_duration_seconds_bucket",
            "cpmai_watch_last_check_timestamp_seconds"} <= named  # fmt: skip


@pytest.mark.slow
def test_junk_gauges_leave_both_servers_answering(served: Served) -> None:
    """The environment's server (deployed) and `cpmai serve` of the same version, each with junk
    at its own gauges path: /metrics answers 200 with the server's series, and nothing else."""
    from cpmai.home import Home

    deployed = Home(served.home).env(NAME, "staging").gauges
    solo = Home(served.home).env(NAME, "solo").gauges
    solo.parent.mkdir(parents=True)
    server = Server(served.home, NAME, "--env", "solo", "--no-log")

    def serve_scrape() -> tuple[int, str]:
        reply = server.get("/metrics")
        return reply.status, reply.body.decode()

    try:
        assert "cpmai_alerts_firing" not in serve_scrape()[1]  # no file
        for path, scrape in ((deployed, lambda: _scrape(served.port)), (solo, serve_scrape)):
            for what, data in [*JUNK.items(), ("a directory", None)]:
                if data is None:
                    path.unlink(missing_ok=True)
                    path.mkdir()
                else:
                    path.write_bytes(data)
                status, body = scrape()
                assert status == 200 and "cpmai_alerts_firing" not in body, (path, what)
                _own_series(body.encode())
                if data is None:
                    path.rmdir()
            path.write_text(served.gauges)
            assert "cpmai_alerts_firing{" in scrape()[1], path
    finally:
        server.close()  # SIGTERM, then SIGKILL, by its PID
        if deployed.is_dir():
            deployed.rmdir()
        deployed.write_text(served.gauges)
