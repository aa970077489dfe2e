"""`make bench-zoo`: every kind of model in the zoo (tests/_zoo.py), served two ways side by side.

Per kind: the runtime cpmai chose, the in-process one-row predict time under scikit-learn and
under the ONNX twin (median of 300 calls), and the served requests/s and p99 at concurrency 8
(wrk, one-row MLflow JSON, marked synthetic) of the same model deployed with `runtime: auto`
and with `runtime: sklearn`, in the same run.

Targets (issue 21): a twin for at least 10 kinds; for every kind with a twin, served
requests/s ≥ 5× the same model under scikit-learn; HistGradientBoosting served with p99 ≤ 20 ms.

    python benchmarks/zoo.py [--duration 5] [--kinds a,b] [--write docs/performance.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _report import ensure_wrk, fingerprint, run_wrk, verdicts

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests._zoo import KINDS, Kind  # noqa: E402

CPMAI = [sys.executable, "-m", "cpmai"]
START, END = "<!-- bench-zoo:start -->", "<!-- bench-zoo:end -->"


def cpmai(home: Path, *args: Any) -> str:
    env = {**os.environ, "CPMAI_HOME": str(home), "CPMAI_ACTOR": "bench@example.com"}
    done = subprocess.run([*CPMAI, *map(str, args)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"cpmai {' '.join(map(str, args))}: {done.stderr}")
    return done.stdout


def script(folder: Path, row: dict[str, Any]) -> Path:
    path = folder / "post.lua"
    body = json.dumps({"dataframe_records": [row]})
    path.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        'wrk.headers["X-Cpmai-Traffic"] = "synthetic; source=bench-zoo"\n'
        f"wrk.body = {json.dumps(body)}\n"
    )
    return path


def in_process_ms(home: Path, name: str, version: str, row: dict[str, Any], runtime: str) -> float:
    """Median one-row predict time, ms, in a fresh process (as a server has it)."""
    code = f"""
import json, statistics, time
from pathlib import Path
from cpmai.artifacts import open_artifact
from cpmai.runtime.predictor import Predictor
artifact = open_artifact(Path({str(home)!r}), {name!r}, {version!r})
predictor = Predictor.from_artifact(artifact, runtime={runtime!r})
row = {{k: [v] for k, v in json.loads({json.dumps(row)!r}).items()}}
for _ in range(30):
    predictor.run(row)
times = []
for _ in range(300):
    start = time.perf_counter()
    predictor.run(row)
    times.append(time.perf_counter() - start)
print(statistics.median(times) * 1000)
"""
    env = {**os.environ, "CPMAI_HOME": str(home)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return float(out.stdout.strip())


def served(home: Path, kind: Kind, name: str, wrk: str, row: dict[str, Any], seconds: float) -> Any:
    cpmai(home, "deploy", kind.manifest, "--env", "staging")
    try:
        status = json.loads(cpmai(home, "status", name, "--json"))
        url = status["environments"][0]["server"]["url"]
        port = int(url.rsplit(":", 1)[1])
        lua = script(kind.folder, row)
        run_wrk(wrk, port, lua, 1, 8)  # warm-up
        return run_wrk(wrk, port, lua, seconds, 8)
    finally:
        cpmai(home, "stop", name, "--env", "staging")


def measure(kind_name: str, work: Path, wrk: str, seconds: float) -> dict[str, Any]:
    home = work / "state"
    kind = KINDS[kind_name](work / kind_name)
    name = f"zoo-{kind_name}"
    cpmai(home, "package", kind.manifest)
    version = json.loads(cpmai(home, "versions", name, "--json"))["versions"][-1]["version"]
    runtime = json.loads((home / "artifacts" / name / version / "runtime.json").read_text())
    row = {
        k: (v.item() if hasattr(v, "item") else v)
        for k, v in kind.rows(1, seed=3).astype(object).iloc[0].items()
    }
    result: dict[str, Any] = {"kind": kind_name, "runtime": runtime["runtime"]}
    result["sklearn_ms"] = (
        None
        if runtime["runtime"] == "onnx" and runtime.get("reason") == "the model is an ONNX graph"
        else in_process_ms(home, name, version, row, "sklearn")
    )
    has_twin = runtime["runtime"] == "onnx"
    result["twin_ms"] = in_process_ms(home, name, version, row, "onnx") if has_twin else None
    result["auto"] = served(home, kind, name, wrk, row, seconds)
    if result["sklearn_ms"] is not None and has_twin:
        text = kind.manifest.read_text()
        kind.manifest.write_text(
            text.replace(f"name: {name}", f"name: {name}-sklearn").replace(
                "  task:", "  runtime: sklearn\n  task:", 1
            )
        )
        cpmai(home, "package", kind.manifest)
        result["sklearn"] = served(home, kind, f"{name}-sklearn", wrk, row, seconds)
    return result


def threads_ab(work: Path, wrk: str, seconds: float) -> list[tuple[str, dict[str, Any]]]:
    """HistGradientBoostingClassifier under scikit-learn, 2 replicas: the default thread limit
    (the replica's CPU share) against as many threads as cores (OpenMP's own default)."""
    home = work / "threads-state"
    kind = KINDS["hgb-classifier"](work / "threads")
    base = kind.manifest.read_text().replace("  task:", "  runtime: sklearn\n  task:", 1)
    base = base.replace("{target: local}", "{target: local, replicas: 2}")
    row = {
        k: (v.item() if hasattr(v, "item") else v)
        for k, v in kind.rows(1, seed=3).astype(object).iloc[0].items()
    }
    cores = os.cpu_count() or 1
    out = []
    for label, extra in (
        ("2 replicas, default limit (1 thread each)", ""),
        (f"2 replicas, serving.threads: {cores} (no limit)", f"serving: {{threads: {cores}}}\n"),
    ):
        kind.manifest.write_text(base + extra)
        out.append((label, served(home, kind, "zoo-hgb-classifier", wrk, row, seconds)))
    return out


def table(results: list[dict[str, Any]], machine: str, seconds: float) -> str:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {machine}: `make bench-zoo` (wrk -t2 -c8 "
        f"-d{seconds:g}s, one-row MLflow JSON, after a 1 s warm-up; in-process: median of 300 "
        "one-row calls in a fresh process).",
        "",
        "| kind | runtime | in-process sklearn ms | in-process twin ms | served req/s | p99 ms "
        "| runtime: sklearn req/s | p99 ms | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def ms(value: float | None) -> str:
        return "—" if value is None else f"{value:.3f}"

    for r in results:
        auto, sk = r["auto"], r.get("sklearn")
        ratio = f"{auto['rps'] / sk['rps']:.1f}×" if sk else "—"
        lines.append(
            f"| {r['kind']} | {r['runtime']} | {ms(r['sklearn_ms'])} | {ms(r['twin_ms'])} "
            f"| {auto['rps']:,.0f} | {auto['p99_ms']:.1f} "
            f"| {'—' if not sk else format(sk['rps'], ',.0f')} "
            f"| {'—' if not sk else format(sk['p99_ms'], '.1f')} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--kinds", default=",".join(sorted(KINDS)))
    parser.add_argument("--write", type=Path, help="replace the bench-zoo section of this file")
    args = parser.parse_args()
    wrk = ensure_wrk()
    results = []
    with tempfile.TemporaryDirectory(prefix="cpmai-bench-zoo-") as tmp:
        for kind in args.kinds.split(","):
            print(f"{kind} ...", file=sys.stderr, flush=True)
            results.append(measure(kind, Path(tmp), wrk, args.duration))
        ab = threads_ab(Path(tmp), wrk, args.duration)
    text = table(results, fingerprint(), args.duration)
    text += (
        "\nThreads: HistGradientBoostingClassifier with `runtime: sklearn`, same wrk settings:\n\n"
        "| setting | req/s | p50 ms | p99 ms |\n| --- | --- | --- | --- |\n"
    )
    for label, r in ab:
        text += f"| {label} | {r['rps']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |\n"
    print(text)
    if args.write:
        doc = args.write.read_text()
        if START in doc and END in doc:
            head, rest = doc.split(START, 1)
            doc = head + START + "\n" + text + END + rest.split(END, 1)[1]
        else:
            doc += f"\n## Every kind of model (`make bench-zoo`)\n\n{START}\n{text}{END}\n"
        args.write.write_text(doc)
    twins = [r for r in results if r["twin_ms"] is not None and r["sklearn_ms"] is not None]
    hgb = [r for r in results if r["kind"].startswith("hgb") and r["runtime"] == "onnx"]
    rows = [
        ("kinds with a twin", f"{len(twins)} of {len(results)}", "≥ 10", len(twins) >= 10),
    ]
    for r in twins:
        ratio = r["auto"]["rps"] / r["sklearn"]["rps"]
        rows.append((f"{r['kind']}: twin ÷ sklearn req/s", f"{ratio:.1f}×", "≥ 5×", ratio >= 5))
    for r in hgb:
        p99 = r["auto"]["p99_ms"]
        rows.append((f"{r['kind']}: p99 at c=8", f"{p99:.1f} ms", "≤ 20 ms", p99 <= 20))
    for r in results:
        errors = r["auto"]["errors"] + (r.get("sklearn") or {}).get("errors", 0)
        if errors:
            rows.append((f"{r['kind']}: errors", str(errors), "0", False))
    print(f"medians of the table above; machine: {fingerprint()}")
    return verdicts(rows, ("what", "measured", "target"))


if __name__ == "__main__":
    sys.exit(main())
