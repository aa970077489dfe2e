"""`cpmai report`: stable Markdown and JSON for a known history (golden files), and the HTML
dashboard of a real deployment opened in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from cost_fixture import NAME, NOW, build

from conftest import ROOT, run_cpmai

GOLDEN = Path(__file__).parent / "golden"
ARTEFACTS = ROOT / "build" / "test-artefacts"
UPDATE = os.environ.get("CPMAI_UPDATE_GOLDEN") == "1"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _mask(text: str, home: Path) -> str:
    """What differs from one machine or run to the next: the state folder, artifact digests
    (they hash environment.json, which names package versions)."""
    text = text.replace(str(home), "<home>")
    text = re.sub(r"sha256:[0-9a-f]{6,64}", "sha256:<digest>", text)
    return re.sub(r"\b[0-9a-f]{16,64}\b", "<digest>", text)  # bare digests and their prefixes


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE or not path.exists():
        if not UPDATE:
            pytest.fail(f"{path} is missing: run with CPMAI_UPDATE_GOLDEN=1 to write it")
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from its golden file"


def test_markdown_and_json_of_a_known_history_are_stable(
    churn: Path, home: Path, monkeypatch: pytest.MonkeyPatch, cli: Any
) -> None:
    from cpmai.report.data import build as report
    from cpmai.report.markdown import render as markdown

    build(churn, home, monkeypatch, cli)
    typed = report(home, NAME, now=NOW)
    doc = typed.to_json()
    import jsonschema

    root = Path(__file__).parent.parent / "docs"
    jsonschema.validate(doc, json.loads((root / "report.schema.json").read_text()))
    jsonschema.validate(doc["cost"], json.loads((root / "cost.schema.json").read_text()))
    assert doc["period"] == {"since": "2026-01-01T00:00:00Z", "until": "2026-01-01T04:00:00Z",
                             "window_s": 300.0}  # fmt: skip
    versions = {v["version"]: v for v in doc["versions"]}
    assert versions["1.1.0"]["live_in"] == ["staging"] and versions["1.0.0"]["live_in"] == []
    assert [e["action"] for e in versions["1.1.0"]["journey"]] == [
        "package", "deploy", "trigger", "trigger", "trigger"
    ]  # fmt: skip
    staging = doc["monitoring"]["staging"]
    assert staging["available"] and staging["traffic"]["requests"] == 10_800
    assert len(staging["windows"]) == 48
    quiet = staging["windows"][12:24]  # the hour between the two versions: nothing served
    assert all(w["requests"] == 0 and w["slo_passed"] is None for w in quiet)
    trend = doc["value_trend"]
    assert trend[-1]["cumulative_cost"] == pytest.approx(4 * 0.0468, rel=1e-6)
    assert trend[-1]["cumulative_value"] == pytest.approx(10_800 * 0.004, rel=1e-6)
    _golden("report.json", _mask(json.dumps(doc, indent=1, sort_keys=True) + "\n", home))
    _golden("report.md", _mask(markdown(typed), home))
    assert "| staging | 1.1.0 | 10,800 |" in markdown(typed)


def _browser_ready() -> bool:
    if Path(CHROMIUM).exists():
        return True
    if os.environ.get("CPMAI_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    pytest.skip("Debian's chromium is not installed (make test installs it)")


@pytest.mark.slow
def test_html_report_of_a_real_deployment_in_chromium(churn: Path, home: Path) -> None:
    from playwright.sync_api import sync_playwright
    from test_deploy import port_of, write_manifest
    from test_monitor import _send

    _browser_ready()
    write_manifest(churn)
    deployed = run_cpmai("deploy", churn, "--env", "staging", timeout=180)
    assert deployed.code == 0, deployed.err
    port = port_of(churn, "staging")
    try:
        reference = pd.read_csv(churn.parent / "data" / "reference.csv")
        _send(port, reference.head(400), "report", per_request=20)
        bench = run_cpmai("bench", f"{NAME}@staging", "--url", f"http://127.0.0.1:{port}",
                          "--concurrency", "1", "--duration", "1", "--warmup", "0.2")  # fmt: skip
        assert bench.code in (0, 4), bench.err
        time.sleep(0.5)  # a resource sample after the load
        html = churn.parent / "report.html"
        result = run_cpmai("report", NAME, "--html", html, "--markdown", churn.parent / "r.md")
        assert result.code in (0, 4), result.err
        assert "environments" in result.out and "latency per version" in result.out
    finally:
        assert run_cpmai("stop", NAME, "--env", "staging").code == 0
    text = html.read_text()
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "<script" not in text

    errors: list[str] = []
    requests: list[str] = []
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(html.as_uri())
            page.wait_for_load_state("load")
            charts = page.eval_on_selector_all(
                "svg.chart",
                "els => els.map(e => { const box = e.viewBox.baseVal; "
                "const marks = [...e.querySelectorAll('.mark')]; "
                "const outside = marks.filter(m => { const b = m.getBBox(); "
                "return b.x < -0.5 || b.y < -0.5 || b.x + b.width > box.width + 0.5 "
                "|| b.y + b.height > box.height + 0.5; }).length; "
                "return [e.dataset.chart, marks.length, e.getBoundingClientRect().width, "
                "e.getBoundingClientRect().height, outside]; })",
            )
            cards = page.locator(".card").all_inner_texts()
            page.screenshot(path=str(ARTEFACTS / "report.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    kinds = {kind: marks for kind, marks, _, _, _ in charts}
    for kind in ("latency", "traffic", "slo", "value", "cost", "drift"):
        assert kinds.get(kind, 0) > 0, f"chart {kind} is missing or empty: {charts}"
    assert all(w > 100 and h > 50 for _, _, w, h, _ in charts)
    assert [c for c in charts if c[4]] == [], "marks drawn outside their chart"
    assert any(c.startswith("STAGING LIVE") and "1.0.0" in c for c in cards), cards
    assert (ARTEFACTS / "report.png").stat().st_size > 10_000


def test_the_schema_is_generated_from_the_model() -> None:
    from cpmai.schemas import render

    committed = (ROOT / "docs" / "report.schema.json").read_text()
    assert committed == render("report.schema.json"), "run `python -m cpmai.schemas`"
