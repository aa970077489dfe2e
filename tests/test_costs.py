"""`cpmai cost` and `cpmai kpi`: the formulas by hand, then a state folder with four hours of
history (tests/cost_fixture.py) whose every figure is computed here from its numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from cost_fixture import NAME, NOW, build, edit, iso, real_clock

from cpmai.costs import model

MONTH = 730.0
PRICE_CPU, PRICE_MEM = 0.0416, 0.0052


SCHEMA = json.loads((Path(__file__).parent.parent / "docs" / "cost.schema.json").read_text())


def validate(doc: dict[str, Any]) -> None:
    import jsonschema

    jsonschema.validate(doc, SCHEMA)


def approx(value: float) -> Any:
    return pytest.approx(value, rel=1e-9, abs=1e-12)


def test_formulas_by_hand() -> None:
    alloc = model.allocation(2, 0.5, 2, 0.04, 0.005)
    assert (alloc.cpu_cores, alloc.memory_gib) == (1.0, 4.0)
    assert alloc.per_hour.value == approx(1 * 0.04 + 4 * 0.005)  # 0.06
    assert alloc.per_month.value == approx(0.06 * 730)  # 43.8
    assert alloc.per_hour.inputs["replicas"] == 2

    used = model.charged(1.0, 4.0, 0.25, 1.0, 0.04, 0.005)
    assert used.usage_per_hour.value == approx(0.25 * 0.04 + 1 * 0.005)  # 0.015
    assert used.charged_per_hour.value == approx(0.06)  # the reservation is charged
    assert used.idle_share.cpu.value == approx(0.75)
    assert used.idle_share.memory.value == approx(0.75)
    assert used.idle_share.cost.value == approx((0.75 * 0.04 + 3 * 0.005) / 0.06)

    over = model.charged(1.0, 4.0, 1.5, 1.0, 0.04, 0.005)  # more CPU used than reserved
    assert over.charged_per_hour.value == approx(1.5 * 0.04 + 4 * 0.005)  # 0.08
    assert over.idle_share.cpu.value == 0.0

    assert model.per_thousand(0.06, 10.0, "x").value == approx(0.06 * 1000 / 36000)
    assert model.per_thousand(0.06, None, "x").value is None
    assert model.per_thousand(0.06, 0.0, "x").value is None

    retrain = model.retraining(12.0, 1.0, 3)
    assert retrain.per_month.value == approx(12 * (1 + 3))

    roi = model.roi(100.0, 50.0, 200.0, 500.0, basis="b")
    assert roi.savings_per_month.value == approx(150.0)
    assert roi.net_per_month.value == approx(250.0)
    assert roi.roi_percent.value == approx(500.0)
    assert roi.payback_months.value == approx(2.0)
    losing = model.roi(0.0, 50.0, 10.0, 500.0, basis="b")
    assert losing.payback_months.value is None  # never paid back at this rate
    assert "= 0.06" in model.render(alloc.per_hour)


@pytest.fixture
def history(churn: Path, home: Path, monkeypatch: pytest.MonkeyPatch, cli: Any) -> Path:
    build(churn, home, monkeypatch, cli)
    return churn


def test_costs_of_a_known_history(history: Path, home: Path) -> None:
    from cpmai.costs.estimate import estimate

    doc = estimate(home, NAME, now=NOW).document.to_json()
    validate(doc)
    assert doc["manifest"] == f"artifact {NAME} 1.1.0"
    assert [e["env"] for e in doc["environments"]] == ["staging"]  # production never ran
    staging = doc["environments"][0]
    assert staging["version"] == "1.1.0" and staging["live_hours"] == approx(4.0)

    alloc_hour = 1 * (1 * PRICE_CPU + 1 * PRICE_MEM)
    assert staging["allocation"]["per_month"]["value"] == approx(alloc_hour * MONTH)
    # 720 moments at 50 % / 512 MiB, 720 at 2 × 12.5 % / 2 × 128 MiB
    usage = staging["usage"]
    assert usage["cpu_cores_used"] == approx(0.375)
    assert usage["memory_gib_used"] == approx(0.375)
    assert usage["usage_per_hour"]["value"] == approx(0.375 * PRICE_CPU + 0.375 * PRICE_MEM)
    assert usage["charged_per_hour"]["value"] == approx(alloc_hour)
    assert usage["idle_share"]["cost"]["value"] == approx(0.625)
    # 3 samples fell in the two `cpmai bench` runs (1 of 1.0.0's, 2 of 1.1.0's): left out
    assert usage["samples"] == 720 + 1440 - 3 and usage["processes"] == 3

    # 3,600 + 7,200 real requests over the 4 live hours; the bench's 500 counted apart
    traffic = staging["traffic"]
    assert traffic["predictions"] == 10_800 and traffic["requests"] == 10_800
    assert traffic["synthetic"] == {"requests": 500, "by_source": {"cpmai-bench": 500},
                                    "included": False}  # fmt: skip
    assert usage["bench_excluded_s"] == approx(22.0)  # samples under the two runs left out
    rate = 10_800 / (4 * 3600)
    assert traffic["predictions_per_s"] == approx(round(rate, 6))
    assert traffic["per_version"] == {"1.0.0": 3600, "1.1.0": 7200}

    cap = staging["capacity"]
    assert cap["level"] == "c=8" and cap["predictions_per_s"] == 1000.0  # c=64 missed the SLO
    assert cap["source"] == "this environment's server"
    per_1000 = staging["cost_per_1000"]
    assert per_1000["at_capacity"]["value"] == approx(alloc_hour * 1000 / (3600 * 1000))
    assert per_1000["at_traffic"]["value"] == approx(alloc_hour * 1000 / (3600 * rate))

    previous = staging["previous"]
    assert previous["previous"]["version"] == "1.0.0"
    assert previous["increase"]["serving_per_month"] == 0.0  # both under their reservation
    assert previous["increase"]["cost_per_1000_at_capacity"] == approx(1.0)  # half as fast

    assert doc["retraining"]["triggered_runs"] == 2
    retrain = 12.0 * (1 + 2)
    assert doc["retraining"]["per_month"]["value"] == approx(retrain)
    total = alloc_hour * MONTH + retrain
    assert doc["total_per_month"]["value"] == approx(total)
    assert doc["budget"] == {"per_month": 300.0, "used_share": round(total / 300, 6),
                             "over": False}  # fmt: skip
    assert doc["exit_code"] == 0

    roi = doc["roi"]
    value = round(rate * 3600 * MONTH) * 0.004
    assert roi["value_per_month"]["value"] == approx(value)
    assert roi["net_per_month"]["value"] == approx(value + 2500 - total)
    months = 4 / MONTH
    to_date = roi["to_date"]
    assert to_date["months"] == approx(round(months, 6))
    assert to_date["serving_cost"] == approx(round(4 * alloc_hour, 6))
    assert to_date["retraining_cost"] == approx(round(12 * (1 * months + 2), 6))
    assert to_date["value"] == approx(10_800 * 0.004)
    assert to_date["paid_back"] is True


def test_half_an_hour_of_traffic_is_not_projected_to_a_month(history: Path, home: Path) -> None:
    from cost_fixture import T0

    from cpmai.costs.estimate import estimate

    doc = estimate(home, NAME, now=T0 + 1800).document.to_json()
    validate(doc)
    traffic = doc["environments"][0]["traffic"]
    assert traffic["predictions"] == 1800  # real requests during the bench run count too
    assert traffic["predictions_per_s"] is not None and traffic["predictions_per_month"] is None
    assert "too little to project a month" in traffic["note"]
    roi = doc["roi"]
    assert roi["value_per_month"]["value"] is None and roi["roi_percent"]["value"] is None
    assert roi["projection_note"].startswith("no value per month yet")
    assert roi["to_date"]["value"] == approx(1800 * 0.004)  # what happened is known


def test_cli_budget_increase_what_if_and_explain(history: Path, home: Path, cli: Any) -> None:
    from cpmai.costs.estimate import estimate
    from cpmai.manifest_file import load_manifest

    over = estimate(home, NAME, now=NOW, max_increase=0.15).document.to_json()
    assert over["exit_code"] == 4
    assert [a["kind"] for a in over["alerts"]] == ["increase"]
    assert "cost per 1000 at capacity rose 100.0%" in over["alerts"][0]["message"]

    edit(history, lambda doc: doc["costs"].update(budget_per_month=50))
    tight = estimate(home, NAME, now=NOW, manifest=load_manifest(history)).document.to_json()
    assert tight["budget"]["over"] and tight["exit_code"] == 4
    assert tight["manifest"].startswith("file ")

    planned_doc = estimate(home, NAME, now=NOW, replicas=3, traffic=2500.0).document.to_json()
    validate(planned_doc)
    plan = planned_doc["what_if"]
    alloc_hour = PRICE_CPU + PRICE_MEM
    assert plan["capacity"]["value"] == approx(3000.0)
    assert plan["replicas_needed"] == 3 and plan["fits"] is True
    assert plan["cost_per_1000"]["value"] == approx(3 * alloc_hour * 1000 / (3600 * 2500))
    assert plan["predictions_per_month"] == round(2500 * 3600 * MONTH)
    retrain = 36.0
    assert plan["total_per_month"]["value"] == approx(3 * alloc_hour * MONTH + retrain)

    # the CLI runs on the real clock: the history is 11 months old, so the period (730 h)
    # holds no traffic: every figure that needs it says so instead of printing a zero
    result = cli("--json", "cost", NAME, "--env", "staging")
    assert result.code == 0, result.err
    now_doc = json.loads(result.out)
    validate(now_doc)
    staging = now_doc["environments"][0]
    assert staging["usage"] is None and "no resource samples" in staging["usage_note"]
    assert staging["traffic"]["predictions"] == 0
    assert staging["cost_per_1000"]["at_capacity"]["value"] is not None

    text = cli("cost", NAME, "--explain", "--max-increase", "15%")
    assert text.code == 4, text.err
    assert "replicas × (cpu × cpu_hour + memory_gb × memory_gb_hour)" in text.out
    assert "ALERT increase" in text.out
    assert cli("cost", NAME, "--max-increase", "lots").code == 2
    assert cli("cost", NAME, "--traffic", "-3", "--env", "staging").code == 2
    assert cli("cost", "nope").code == 2
    assert cli("cost", NAME, "--env", "mars").code == 2
    planned = cli("cost", NAME, "--replicas", "2")
    assert planned.code == 0 and "what if staging ran 2 replica(s)" in planned.out


def test_kpis_are_ledger_events_and_can_be_the_value(history: Path, home: Path, cli: Any) -> None:
    from cpmai.costs.estimate import estimate
    from cpmai.ledger import Ledger
    from cpmai.manifest_file import load_manifest

    at = "2026-01-01T03:00:00Z"
    assert cli("kpi", "record", NAME, "retained_revenue", "1200", "--at", at,
               "--note", "finance").code == 0  # fmt: skip
    assert cli("kpi", "record", NAME, "retained_revenue", "300", "--at", at).code == 0
    assert cli("kpi", "record", NAME, "bad name!", "1").code == 2
    assert cli("kpi", "record", "unknown-model", "x", "1").code == 2
    assert cli("kpi", "record", NAME, "x", "nan").code == 2
    listed = json.loads(cli("--json", "kpi", "list", NAME).out)
    assert [r["value"] for r in listed] == [1200.0, 300.0] and listed[0]["note"] == "finance"
    assert Ledger(home).verify().ok

    edit(history, lambda doc: doc["business"].update(value_kpi="retained_revenue"))
    roi = estimate(home, NAME, now=NOW, manifest=load_manifest(history)).document.to_json()["roi"]
    assert roi["value_per_month"]["value"] == approx(1500.0)  # the period is one month
    assert roi["to_date"]["value"] == approx(1500.0)
    assert math.isfinite(roi["roi_percent"]["value"])


def test_states_that_must_not_crash(
    history: Path, home: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review findings: each of these once ended in a traceback or a misleading figure."""
    real_clock(monkeypatch)
    from cpmai import ledger
    from cpmai.costs import measure
    from cpmai.costs.estimate import estimate
    from cpmai.manifest import Triggers
    from cpmai.manifest_file import load_manifest
    from cpmai.monitor.triggers import Alert, fire

    # one monitor check firing two triggers is one retraining run (real clock, one transaction)
    before = len(ledger.Ledger(home).events())
    alerts = [Alert("drift", "d"), Alert("quality", "q")]
    fired = fire(home, alerts, Triggers(on=["drift", "quality"]), name=NAME, version="1.0.0",
                 env="staging", actor="t", period={"since": "a", "until": "b"})  # fmt: skip
    events = ledger.Ledger(home).events()
    assert len(fired) == 2 and len(events) == before + 2
    assert measure.triggered_runs(events[before:], NAME, 0, float("inf")) == 1

    # a benchmark result cut short is skipped like one that does not parse
    broken = home / "bench" / NAME / "1.1.0" / "zz-broken.json"
    broken.write_text(json.dumps({"schema": "cpmai-bench/1", "levels": [{"label": "c=1"}]}))
    assert [p.name for p, _ in measure.bench_runs(home, NAME, "1.1.0")] == [
        "20260101T030010Z-1.json"
    ]

    # --env shows one environment; the budget still counts every live one
    planned = estimate(home, NAME, now=NOW, env="production").document.to_json()
    assert [e["env"] for e in planned["environments"]] == ["production"]
    assert planned["environments"][0]["planned"] and planned["counted"] == ["staging"]
    staging_month = (PRICE_CPU + PRICE_MEM) * MONTH
    assert planned["total_per_month"]["value"] == approx(staging_month + 12 * (1 + 2))

    # stopped everywhere at NOW: a day later the history still counts, live time does not grow
    monkeypatch.setattr(ledger, "now_iso", lambda: iso(NOW))
    with ledger.Ledger(home).transaction() as tx:
        tx.append("stop", actor="t", name=NAME, version="1.1.0", env="staging")
    real_clock(monkeypatch)
    later = estimate(home, NAME, now=NOW + 86400).document.to_json()
    assert all(e["planned"] for e in later["environments"])
    to_date = later["roi"]["to_date"]
    assert to_date["predictions"] == 10_800 and to_date["environments"] == ["staging"]
    assert to_date["live_months"] == approx(round(4 / MONTH, 6))  # not 28 h: nothing was live
    assert to_date["serving_cost"] == approx(round(4 * (PRICE_CPU + PRICE_MEM), 6))

    # no price sheet and a zero budget: figures say so, renderers do not fail
    edit(history, lambda doc: doc.update(costs={"budget_per_month": 0}))
    free = estimate(home, NAME, manifest=load_manifest(history), now=NOW).document.to_json()
    assert not free["prices"]["configured"] and "no price sheet" in free["prices"]["note"]
    assert free["budget"] == {"per_month": 0.0, "used_share": None, "over": False}
    for args in (("cost", history), ("report", history, "--markdown", history.parent / "r.md")):
        result = cli(*args)
        assert result.code in (0, 4), result.err  # report: the 10-month-old version is past age
        assert "Traceback" not in result.err and "internal error" not in result.err

    # a value KPI with no record: no value, not a zero
    edit(history, lambda doc: doc["business"].update(value_kpi="retained_revenue"))
    roi = estimate(home, NAME, manifest=load_manifest(history), now=NOW).document.to_json()["roi"]
    assert (
        roi["value_per_month"]["value"] is None and "no retained_revenue" in roi["projection_note"]
    )
    assert cli("cost", NAME, "--traffic", "1e308", "--env", "staging").code == 2


def test_markup_in_an_actor_is_text(churn: Path, home: Path, cli: Any) -> None:
    assert cli("--actor", "github-actions[bot]", "package", churn).code == 0
    result = cli("report", NAME)
    assert result.code == 0, result.err
    assert "github-actions[bot]" in result.out
    with_brackets = cli("--actor", "ci[/x]", "kpi", "record", NAME, "x", "1")
    assert with_brackets.code == 0
    assert cli("report", NAME).code == 0


def test_the_schema_file_is_generated_from_the_document_model() -> None:
    from cpmai.schemas import render

    committed = (Path(__file__).parent.parent / "docs" / "cost.schema.json").read_text()
    assert committed == render("cost.schema.json"), "run `python -m cpmai.schemas`"


def test_autoscaled_replicas_are_charged_as_sampled(history: Path, home: Path) -> None:
    """Replicas that follow the load are charged for what ran: the history's samples (every
    10 s) show one process for two hours, then two for two hours — 1.5 on average, not the
    range's ceiling of 4 nor its floor of 1."""
    from cpmai.costs.estimate import estimate
    from cpmai.manifest_file import load_manifest

    def autoscale(doc: dict[str, Any]) -> None:
        doc["environments"]["staging"] = {
            "target": "ray",
            "replicas": {"min": 1, "max": 4, "target_ongoing_requests": 8},
        }
        doc["monitoring"]["sample_interval_s"] = 10

    edit(history, autoscale)
    doc = estimate(home, NAME, now=NOW, manifest=load_manifest(history)).document.to_json()
    validate(doc)
    staging = doc["environments"][0]
    # the 5 samples taken while `cpmai bench` loaded the server are left out, as from usage,
    # and so are the seconds they stood for: the mean moves by less than 0.005
    scaled = staging["autoscaled"]
    assert scaled["mean_running"] == pytest.approx(1.5, abs=0.005)
    assert {**scaled, "mean_running": 1.5} == {"min": 1, "max": 4, "mean_running": 1.5,
                                               "peak_running": 2, "samples": 2160 - 5}  # fmt: skip
    mean = scaled["mean_running"]
    assert staging["replicas"] == mean
    alloc = staging["allocation"]
    assert alloc["cpu_cores"] == approx(mean) and alloc["memory_gib"] == approx(mean)
    assert alloc["per_hour"]["value"] == approx(mean * (PRICE_CPU + PRICE_MEM))
    assert alloc["per_hour"]["inputs"]["replicas"] == mean

    edit(history, lambda doc: doc["environments"].update(staging={"target": "ray", "replicas": 2}))
    fixed = estimate(home, NAME, now=NOW, manifest=load_manifest(history)).document.to_json()
    assert "autoscaled" not in fixed["environments"][0]
    assert fixed["environments"][0]["replicas"] == 2  # a number stays what the manifest says


def test_running_replicas_from_samples_by_hand() -> None:
    """Each process's own sampling interval, lives split where a pid falls silent, the peak."""
    from cpmai.costs.environment import running_replicas

    def every(pid: int, start: float, stop: float, step: float) -> list[dict[str, Any]]:
        return [{"pid": pid, "t": start + step * k} for k in range(int((stop - start) / step))]

    one = every(1, 0, 600, 10)
    assert running_replicas(one, interval=2) == (1.0, 1)  # sampled every 10 s, whatever now says
    reused = every(1, 0, 600, 10) + every(1, 1200, 1800, 10)  # the same pid 10 min later
    assert running_replicas(reused, interval=10) == (1.0, 1)
    half = every(1, 0, 600, 5) + every(2, 300, 600, 5)  # a second replica for the second half
    assert running_replicas(half, interval=5) == (1.5, 2)
    assert running_replicas([], interval=5) == (None, None)
    assert running_replicas([{"pid": 9, "t": 50.0}], interval=5) == (1.0, 1)
