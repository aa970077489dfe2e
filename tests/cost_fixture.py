"""A state folder with four hours of history on a fixed clock, for cost and report tests.

Two packaged versions of the churn example (1.0.0 at T0, 1.1.0 at T0 + 1 h), both live in
staging one after the other (T0 → T0 + 2 h → now = T0 + 4 h), production never deployed.
Written through cpmai's own writers (the ledger, the prediction log) with the clock moved:
- requests: 3,600 one-row requests in the first hour (1.0.0), then one a second from
  T0 + 2 h to T0 + 4 h (1.1.0), 7,200; a `cpmai bench` run of 1.1.0 covers 11 s of them and
  sent 500 requests of its own, marked synthetic (`X-Cpmai-Traffic`);
- resource samples every 10 s: 1.0.0 one process at 50 % CPU and 512 MiB; 1.1.0 two processes
  at 12.5 % and 128 MiB each;
- benchmarks: 1.0.0 sustains 2,000 predictions/s at the SLO, 1.1.0 1,000 (its 2,500/s level
  misses the p99 SLO);
- two monitor checks that fired triggers (drift + quality at T0 + 3 h, drift at T0 + 3.5 h).
Every figure the tests expect is computed by hand from these numbers.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from cpmai.ledger import now_iso as REAL_NOW_ISO

NAME = "churn-classifier"
T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
NOW = T0 + 4 * 3600
URL = "http://127.0.0.1:18081"
BENCH_FROM = T0 + 3 * 3600
SYNTHETIC_PER_S = 50
"""During 1.1.0's `cpmai bench` run, 50 synthetic requests a second for 10 s, beside the real
ones (500 in all)."""
DAY = "2026-01-01"


def iso(moment: float) -> str:
    return (
        datetime.fromtimestamp(moment, UTC)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )


def real_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give the ledger its own clock back (`build` moved it)."""
    from cpmai import ledger

    monkeypatch.setattr(ledger, "now_iso", REAL_NOW_ISO)


def edit(manifest: Path, change: Any) -> None:
    """Change the manifest's YAML document in place (`change(doc)`)."""
    from test_deploy import load

    doc = load(manifest)
    change(doc)
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))


def build(churn: Path, home: Path, monkeypatch: pytest.MonkeyPatch, cli: Any) -> None:
    import pandas as pd

    from cpmai import ledger
    from cpmai.artifacts import open_artifact
    from cpmai.predlog.writer import PredictionLog

    clock = {"t": T0}
    monkeypatch.setattr(ledger, "now_iso", lambda: iso(clock["t"]))

    assert cli("package", churn).code == 0
    edit(churn, lambda doc: doc.update(description=doc["description"] + " Retrained."))
    clock["t"] = T0 + 3600
    second = cli("package", churn)
    assert second.code == 0, second.err

    def append(action: str, moment: float, **fields: Any) -> None:
        clock["t"] = moment
        with ledger.Ledger(home).transaction() as tx:
            tx.append(action, actor="tester@example.com", name=NAME, **fields)

    append("deploy", T0, version="1.0.0", env="staging", details={"result": "live", "url": URL})
    append("deploy", T0 + 7200, version="1.1.0", env="staging",
           details={"result": "live", "url": URL, "previous": "1.0.0"})  # fmt: skip
    # as `triggers.fire` records them: one event per alert, a microsecond apart, the same period
    for kind, moment, check in (("drift", T0 + 3 * 3600, T0 + 3 * 3600),
                                ("quality", T0 + 3 * 3600 + 1e-6, T0 + 3 * 3600),
                                ("drift", T0 + 3.5 * 3600, T0 + 3.5 * 3600)):  # fmt: skip
        period = {"since": iso(check - 3600), "until": iso(check)}
        append("trigger", moment, version="1.1.0", env="staging",
               details={"kind": kind, "message": f"{kind} breached", "period": period})  # fmt: skip

    folder = home / "logs" / NAME / "staging"
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.read_csv(churn.parent / "data" / "reference.csv")
    inputs = [c for c in frame.columns if c != "churned"]
    reference = json.loads(frame.to_json(orient="records"))
    for version, times in (
        ("1.0.0", [T0 + i for i in range(3600)]),
        ("1.1.0", [T0 + 7200 + i for i in range(7200)]),
    ):
        signature = open_artifact(home, NAME, version).signature
        log = PredictionLog(folder, model=NAME, version=version, signature=signature)
        moment = {"t": times[0]}
        log._clock = lambda moment=moment: moment["t"]  # type: ignore[method-assign,misc]
        for i, t in enumerate(times):
            moment["t"] = t
            row = reference[i % len(reference)]
            log.record("invocations", 200, 0.002, 1, {c: [row[c]] for c in inputs},
                       [row["churned"]], request_id=f"{version}-{i}")  # fmt: skip
            if BENCH_FROM <= t < BENCH_FROM + 10:  # the bench's own requests, marked
                for k in range(SYNTHETIC_PER_S):
                    log.record("invocations", 200, 0.001, 1, {c: [row[c]] for c in inputs},
                               [row["churned"]], request_id=f"bench-{i}-{k}",
                               origin="cpmai-bench")  # fmt: skip
            if i % 600 == 599:
                log.flush()
        log.close()
    for path in folder.glob("predictions-*"):  # named by the wall clock's day: move to T0's
        day = path.name.split("-", 1)[1][:10]
        path.rename(path.with_name(path.name.replace(day, DAY, 1)))

    lines = []
    for k in range(720):
        lines.append({"time": iso(T0 + 5 + 10 * k), "pid": 111, "version": "1.0.0",
                      "cpu_percent": 50.0, "rss_bytes": 512 * 2**20})  # fmt: skip
    for k in range(720):
        for pid in (221, 222):
            lines.append({"time": iso(T0 + 7205 + 10 * k), "pid": pid, "version": "1.1.0",
                          "cpu_percent": 12.5, "rss_bytes": 128 * 2**20})  # fmt: skip
    (folder / f"resources-{DAY}-111.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in lines)
    )

    _bench(home, "1.0.0", T0 + 1800, [("c=8", 2000.0, 3.0)])
    _bench(home, "1.1.0", T0 + 3 * 3600 + 10, [("c=8", 1000.0, 4.0), ("c=64", 2500.0, 80.0)])


def _bench(home: Path, version: str, end: float, levels: list[tuple[str, float, float]]) -> None:
    """A saved `cpmai bench --url` result (only the fields cost and report read, plus what makes
    it a bench result)."""
    folder = home / "bench" / NAME / version
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromtimestamp(end, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc = {
        "schema": "cpmai-bench/1",
        "time": stamp,
        "seconds": 10.0,
        "target": {
            "kind": "http",
            "name": NAME,
            "version": version,
            "url": URL,
            "path": None,
            "protocol": "mlflow",
            "pid": None,
        },
        "levels": [
            {
                "key": label,
                "label": label,
                "mode": "closed",
                "ok": 1000,
                "requests": 1000,
                "error_rate": 0.0,
                "throughput_rps": rate,
                "rows_per_s": rate,
                "latency_ms": {"p50_ms": p99 / 3, "p95_ms": p99 / 1.5, "p99_ms": p99},
            }
            for label, rate, p99 in levels
        ],
        "capacity": None,
        "slo": {"passed": all(p99 <= 50 for _, _, p99 in levels)},
    }
    (folder / f"{stamp.replace(':', '').replace('-', '')}-1.json").write_text(json.dumps(doc))
