"""Synthetic traffic (load tests) is marked, logged as such, and kept apart from customers by
`cpmai monitor`, `cpmai report` and `cpmai cost`; and `make demo` cleans up after a failed step."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from test_deploy import NAME, load, port_of, write_manifest
from test_monitor import _iso_now, _send

from conftest import EXAMPLE, FEATURES, run_cpmai
from cpmai.runtime.signature import Signature
from serving_helpers import free_port

SIGNATURE = Signature.model_validate({
    "inputs": [
        {"name": "a", "type": "number"},
        {"name": "c", "type": "category", "categories": ["x", "y", "z"]},
    ],
    "outputs": [{"name": "prediction", "type": "category", "categories": [0, 1]}],
})  # fmt: skip


def test_the_header_is_read_strictly() -> None:
    from cpmai.serving import origin

    assert origin.parse(None) is None
    assert origin.parse(b"synthetic") == ""
    assert origin.parse(b"Synthetic ; source=locust") == "locust"
    assert origin.parse(b'synthetic; source="k6 run 3"') == "k6 run 3"
    assert origin.parse(origin.header_value(origin.BENCH_SOURCE).encode()) == "cpmai-bench"
    for bad in (b"", b"synthtic", b"real", b"synthetic; sauce=x", b"synthetic; source=a\x00b",
                b"synthetic; source=" + b"x" * 41):  # fmt: skip
        with pytest.raises(ValueError, match="X-Cpmai-Traffic"):
            origin.parse(bad)
    import time

    started = time.perf_counter()  # read before the token: a long value must cost nothing
    for filler in (b" " * 100_000, b"; source=" * 10_000):
        with pytest.raises(ValueError, match="not understood"):
            origin.parse(b"synthetic; source=" + filler + b"x;")
    assert time.perf_counter() - started < 0.05


def _write(folder: Path, signature: dict[str, Any] | None) -> dict[str, Any]:
    """Three versions of mixed traffic through the server's writer: what was sent, counted."""
    from cpmai.predlog.writer import PredictionLog

    folder.mkdir()
    log = PredictionLog(folder, model=NAME, version="1.0.0", signature=signature)
    now = [1_700_000_000.0]
    log._clock = lambda: now[0]  # type: ignore[method-assign]
    sent: dict[str, Any] = {"real": 0, "real_rows": 0, "by_source": {}, "real_times": [],
                            "real_refused": 0}  # fmt: skip
    for i in range(2400):
        now[0] = 1_700_000_000 + i / 10
        rows = 1 + i % 3
        source = "cpmai-bench" if i % 5 == 0 else ("" if i % 11 == 0 else None)
        inputs = {"a": [float(i)] * rows, "c": ["xyz"[i % 3]] * rows}
        if source is not None:
            inputs["a"] = [1e6] * rows  # load tests send odd rows: drift, were they counted
        log.record("invocations", 200, 0.001, rows, inputs, [i % 2] * rows,
                   request_id=f"r{i}", origin=source)  # fmt: skip
        if i % 97 == 0:  # refused, and marked or not
            log.record("invocations", 422, 0.001, 0, {"c": ["w"]}, None, error="unknown",
                       origin=source)  # fmt: skip
        if source is None:
            sent["real_refused"] += i % 97 == 0
            sent["real"] += 1 + (i % 97 == 0)
            sent["real_rows"] += rows
            sent["real_times"] += [now[0]] * (1 + (i % 97 == 0))
        else:
            by = sent["by_source"]
            by[source] = by.get(source, 0) + 1 + (i % 97 == 0)
        if i % 300 == 299:
            log.flush()
    log.close()
    return sent


@pytest.mark.parametrize("indexed", [True, False], ids=["index", "json"])
def test_every_reading_path_sets_synthetic_requests_apart(tmp_path: Path, indexed: bool) -> None:
    from cpmai.predlog import reader as logs

    folder = tmp_path / "logs"
    sent = _write(folder, SIGNATURE if indexed else None)
    assert bool(list(folder.glob("*.idx"))) is indexed
    specs = [logs.FeatureSpec("a", "numeric"), logs.FeatureSpec("c", "categorical",
                                                                  frozenset("xyz"))]  # fmt: skip

    def read(**options: Any) -> Any:
        return logs.read_traffic(folder, focus="1.0.0", specs=specs, output_kind="categorical",
                                 output_categories=[0, 1], **options)  # fmt: skip

    for cache in (None, tmp_path / "cache", tmp_path / "cache"):  # parsed, cached, from cache
        real = read(cache=cache)
        assert real.requests == sent["real"] and not real.synthetic_included
        assert real.synthetic == sent["by_source"]
        assert len(real.row_time) == sent["real_rows"] == len(real.features["a"])
        assert float(np.nanmax(real.features["a"])) < 1e6  # no load-test row among them
        assert real.unseen["c"] == {"w": sent["real_refused"]}  # not the load test's
        every = read(cache=cache, include_synthetic=True)
        assert every.requests == sent["real"] + sum(sent["by_source"].values())
        assert every.synthetic == sent["by_source"] and every.synthetic_included
        assert int((every.features["a"] == 1e6).sum()) == int(every.row_synthetic.sum()) > 0
    # a window that cuts through blocks: the mark follows each request
    cut = 1_700_000_000 + 1234 / 10 - 1e-3
    half = read(since=cut)
    assert half.requests == sum(t >= cut for t in sent["real_times"]) > 0
    assert (
        not half.row_synthetic.any()
        and half.synthetic == read(since=cut, include_synthetic=True).synthetic
    )
    joined = read(with_ids=True)  # the label join's path (no index, no cache)
    assert joined.ids is not None and len(joined.ids) == sent["real_rows"]


@pytest.mark.parametrize("indexed", [True, False], ids=["index", "json"])
def test_sources_beyond_any_small_integer_are_all_counted(tmp_path: Path, indexed: bool) -> None:
    """Clients name their sources freely: 40,000 of them must neither crash nor wrap a code."""
    from cpmai.predlog import reader as logs
    from cpmai.predlog.writer import PredictionLog

    log = PredictionLog(tmp_path, model=NAME, version="1.0.0",
                        signature=SIGNATURE if indexed else None)  # fmt: skip
    log.start()
    for i in range(40_000):
        log.record("invocations", 200, 0.001, 1, {"a": [1.0], "c": ["x"]}, [0],
                   origin=f"run-{i}" if i % 4 else None)  # fmt: skip
    log.close()
    traffic = logs.read_traffic(tmp_path, focus="1.0.0", specs=[logs.FeatureSpec("a", "numeric")],
                                output_kind="categorical", output_categories=[0, 1])  # fmt: skip
    assert traffic.requests == 10_000 and sum(traffic.synthetic.values()) == 30_000
    assert len(traffic.synthetic) == 30_000 and not traffic.row_synthetic.any()


def test_a_block_of_real_traffic_only_carries_no_origin_column(tmp_path: Path) -> None:
    """The usual case costs the log nothing: no `origin` in the line or the index."""
    from cpmai.predlog import index as logindex
    from cpmai.predlog.writer import PredictionLog

    log = PredictionLog(tmp_path, model=NAME, version="1.0.0", signature=SIGNATURE)
    log.record("invocations", 200, 0.001, 1, {"a": [1.0], "c": ["x"]}, [0])
    log.flush()
    log.record("invocations", 200, 0.001, 1, {"a": [1.0], "c": ["x"]}, [0], origin="wrk")
    log.close()
    lines = [json.loads(line) for line in next(tmp_path.glob("*.jsonl")).read_text().splitlines()]
    assert "origin" not in lines[0]["requests"] and lines[1]["requests"]["origin"] == ["wrk"]
    (record,) = logindex.read_records(next(tmp_path.glob("*.idx")))
    assert record["data"]["origin"].tolist() == [-1, 0] and record["vocab"]["origin"] == ["wrk"]


def _metrics_by_origin(port: int) -> dict[str, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    counts: dict[str, int] = {}
    pattern = r'^cpmai_requests_total\{endpoint="(infer|invocations)".*origin="(\w+)".*\} (\S+)$'
    for match in re.finditer(pattern, text, re.MULTILINE):
        counts[match.group(2)] = counts.get(match.group(2), 0) + int(float(match.group(3)))
    return counts


def _marked(port: int, rows: list[dict[str, Any]], mark: str) -> tuple[int, dict[str, Any]]:
    """A request as wrk, k6 or locust would send it, the header set by hand."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/invocations", json.dumps({"dataframe_records": rows}),
                     {"Content-Type": "application/json", "X-Cpmai-Traffic": mark})  # fmt: skip
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        conn.close()


def _json(*args: Any) -> tuple[int, dict[str, Any]]:
    result = run_cpmai("--json", *map(str, args))
    assert result.code in (0, 4), result.err
    return result.code, json.loads(result.out)


@pytest.mark.slow
def test_a_benchmark_of_a_deployed_server_is_not_taken_for_customers(
    churn: Path, home: Path
) -> None:
    manifest = write_manifest(churn)
    port = port_of(manifest, "staging")
    deployed = run_cpmai("deploy", manifest, "--env", "staging")
    assert deployed.code == 0, deployed.err
    try:
        reference = pd.read_csv(churn.parent / "data" / "reference.csv")
        rng = np.random.default_rng(5)
        customers = reference.iloc[rng.integers(0, len(reference), size=1000)]
        since = _iso_now()
        _send(port, customers.reset_index(drop=True), "customer")  # 20 requests of 50 rows
        bench = run_cpmai("bench", f"{NAME}@staging", "--url", f"http://127.0.0.1:{port}",
                          "--concurrency", "4", "--duration", "1.5", "--warmup", "0.2",
                          "--json")  # fmt: skip
        assert bench.code == 0, bench.err
        one = json.loads(reference[FEATURES].iloc[:1].to_json(orient="records"))
        for _ in range(30):  # the same row, again and again, as a hand-rolled load test
            assert _marked(port, one, "synthetic; source=wrk")[0] == 200
        assert _marked(port, one, "synthetic")[0] == 200
        status, refused = _marked(port, one, "synthtic")  # a typo is refused, never counted in
        assert status == 400 and "X-Cpmai-Traffic" in refused["message"]
        _iso_now()
        metrics = _metrics_by_origin(port)
        assert metrics["real"] == 20 and metrics["synthetic"] > 30 + 2

        code, doc = _json("monitor", NAME, "--env", "staging", "--since", since)
        assert code == 0, doc["alerts"]
        assert doc["traffic"]["requests"] == 20 and doc["traffic"]["rows"] == 1000
        assert doc["drift"]["status"] == "ok" and doc["drift"]["drifted"] == []
        synthetic = doc["log"]["synthetic"]
        assert synthetic["requests"] == metrics["synthetic"] and not synthetic["included"]
        assert synthetic["by_source"]["wrk"] == 30 and synthetic["by_source"][""] == 2
        assert synthetic["by_source"]["cpmai-bench"] == metrics["synthetic"] - 32
        code, every = _json("monitor", NAME, "--env", "staging", "--since", since,
                            "--include-synthetic")  # fmt: skip
        # the server's resource samples taken under the load test are left out by default
        samples = doc["traffic"]["resources"]["samples"]
        assert every["traffic"]["resources"]["samples"] > samples > 0
        assert every["traffic"]["requests"] == 20 + metrics["synthetic"]
        assert every["log"]["synthetic"]["included"] and every["traffic"]["errors"] == {"400": 1}
        text = run_cpmai("monitor", NAME, "--env", "staging", "--since", since)
        assert f"also served: {metrics['synthetic']:,} synthetic requests" in text.out

        code, report = _json("report", NAME, "--since", since)
        assert code == 0
        staging = report["monitoring"]["staging"]
        assert staging["traffic"]["requests"] == 20
        assert staging["synthetic"]["requests"] == metrics["synthetic"]
        cost = report["cost"]["environments"][0]["traffic"]
        assert cost["requests"] == 20 and cost["predictions"] == 1000
        assert cost["synthetic"]["requests"] == metrics["synthetic"]
        _, report_all = _json("report", NAME, "--since", since, "--include-synthetic")
        assert (
            report_all["monitoring"]["staging"]["traffic"]["requests"] == 20 + metrics["synthetic"]
        )

        _, cost_doc = _json("cost", NAME, "--env", "staging", "--since", since)
        assert cost_doc["environments"][0]["traffic"]["predictions"] == 1000
        _, cost_all = _json("cost", NAME, "--env", "staging", "--since", since,
                            "--include-synthetic")  # fmt: skip
        counted = cost_all["environments"][0]["traffic"]
        assert counted["requests"] == 20 + metrics["synthetic"] and counted["synthetic"]["included"]
    finally:
        run_cpmai("stop", NAME, "--env", "staging")


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _demo_copy(tmp_path: Path) -> tuple[Path, int]:
    folder = tmp_path / "churn"
    folder.mkdir()
    for name in ("cpmai.yaml", "train.py", "ask.py", "demo.py", "traffic.py"):
        shutil.copy(EXAMPLE / name, folder / name)
    manifest = folder / "cpmai.yaml"
    doc = load(manifest)
    port = free_port()
    doc["environments"]["staging"]["port"] = port
    doc["gates"]["latency"]["duration_s"] = 0.3
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder, port


@pytest.mark.slow
def test_a_demo_stopped_by_sigterm_stops_its_server(tmp_path: Path) -> None:
    """As a CI timeout would: SIGTERM to the demo while it benchmarks its server."""
    import signal
    import time

    folder, port = _demo_copy(tmp_path)
    env = {**os.environ, "CPMAI_ACTOR": "tester@example.com"}
    env.pop("CPMAI_HOME", None)
    demo = subprocess.Popen(
        [sys.executable, str(folder / "demo.py"), "--folder", str(folder), "--bench-seconds", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert demo.stdout is not None
        deadline = time.monotonic() + 240
        for line in demo.stdout:  # the bench prints nothing more to stdout until it ends
            if line.startswith("$ cpmai bench") or time.monotonic() > deadline:
                break
        time.sleep(2)
        assert _listening(port)
        demo.send_signal(signal.SIGTERM)
        _, err = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 130, err
    assert "interrupted" in err and "stopping the server it started" in err
    assert not _listening(port)


@pytest.mark.slow
def test_a_failed_demo_step_is_named_and_leaves_nothing_listening(tmp_path: Path) -> None:
    folder, port = _demo_copy(tmp_path)
    (folder / "traffic.py").write_text("import sys\nsys.exit(7)\n")  # the step that fails
    env = {**os.environ, "CPMAI_ACTOR": "tester@example.com"}
    env.pop("CPMAI_HOME", None)
    demo = subprocess.run(
        [sys.executable, str(folder / "demo.py"), "--folder", str(folder), "--bench-seconds",
         "0.5"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert demo.returncode == 7, demo.stderr
    assert "the 'traffic' step failed (exit 7)" in demo.stderr
    assert "$ cpmai bench" in demo.stdout  # the steps before it ran
    assert not _listening(port)
    ledger = (folder / ".cpmai" / "ledger.jsonl").read_text().splitlines()
    assert [json.loads(line)["action"] for line in ledger][-2:] == ["deploy", "stop"]
