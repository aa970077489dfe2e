"""cpmai beside MLflow and BentoML serving the same models, measured in one run on one machine.

    python benchmarks/compare/run.py [--duration 10] [--rounds 3] [--write docs/performance.md]

What it does:
1. creates one virtual environment per peer (MLflow, BentoML) under --venvs (default
   ~/.cache/cpmai-compare), installed from the package index on first use, with the same
   scikit-learn as cpmai's (a pickled pipeline loads only under the version that wrote it).
   Neither peer is a dependency of cpmai, and CI never runs this;
2. trains the churn example twice (the logistic-regression pipeline and the 100-tree random
   forest) and saves each model in each tool's own format: a cpmai artifact (`cpmai package`),
   an MLflow model (`mlflow.sklearn.save_model`, with the signature inferred from the data, so
   MLflow checks requests as cpmai does) and a BentoML model (`bentoml.sklearn.save_model`,
   served by bento_service.py);
3. starts the six servers, one worker each (each tool's default): `cpmai serve`,
   `mlflow models serve --env-manager local`, `bentoml serve`;
4. drives every server with the same wrk load: single-row JSON (`{"dataframe_records": [row]}`)
   POSTed to /invocations, concurrency 1, 8 and 64, --duration seconds each after one second of
   warm-up, in --rounds rounds interleaved cell by cell (each level, each model, each tool in
   turn) so machine drift hits all alike; reports medians. For each cell it also reads the
   server's CPU seconds and memory (RSS and PSS, summed over the server's processes) with psutil;
5. runs `cpmai bench --url` against the MLflow server of the logistic regression: cpmai can
   benchmark a server it did not build;
6. prints the result as Markdown and, with --write, puts it into that file between the
   `<!-- compare:begin -->` and `<!-- compare:end -->` markers.

Targets (issue 9): at concurrency 8, cpmai ≥ 10× MLflow's and BentoML's requests/s for the
logistic regression and ≥ 50× for the forest; cpmai's p99 lower than both in every cell. Exits
4 when one is missed. Needs wrk (Debian package `wrk`; installed with apt-get as root).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))

from _report import (  # noqa: E402
    ROW,
    ensure_wrk,
    fingerprint,
    free_port,
    post_script,
    run_wrk,
    verdicts,
    wait_ready,
)

PY = sys.executable
PEERS = {"mlflow": "mlflow==3.17.2", "bentoml": "bentoml==1.4.40"}
MODELS = {"logreg": "logistic regression", "forest": "100-tree forest"}
TOOLS = ("cpmai", "cpmai-sklearn", "mlflow", "bentoml")
SHOWN = {
    "cpmai": "cpmai",
    "cpmai-sklearn": "cpmai, runtime: sklearn",
    "mlflow": "MLflow",
    "bentoml": "BentoML",
}
LEVELS = (1, 8, 64)
TARGETS = {"logreg": 10.0, "forest": 50.0}
QUIET = {
    "BENTOML_DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "PYTHONWARNINGS": "ignore",
}


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a set-up step; on failure, say what it printed."""
    proc = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if proc.returncode:
        raise SystemExit(
            f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )
    return proc


def sklearn_version() -> str:
    from importlib import metadata

    return metadata.version("scikit-learn")


def ensure_venv(root: Path, tool: str) -> Path:
    """The peer's virtual environment, (re)built when its pinned packages changed."""
    specs = [PEERS[tool], f"scikit-learn=={sklearn_version()}", "pandas"]
    venv = root / tool
    stamp = venv / "cpmai-compare.json"
    if stamp.exists() and json.loads(stamp.read_text()) == specs:
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    print(f"installing {' '.join(specs)} into {venv} (first run only)", file=sys.stderr)
    subprocess.run([PY, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, *specs], check=True)
    stamp.write_text(json.dumps(specs))
    return venv


def versions(python: Path | str, dists: tuple[str, ...]) -> str:
    """`dist version, ...` as installed for `python`."""
    code = (
        "import sys\nfrom importlib import metadata\n"
        "print(', '.join(f'{d} {metadata.version(d)}' for d in sys.argv[1:]))"
    )
    out = subprocess.run(
        [str(python), "-c", code, *dists], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


class Server:
    """A server process (and its children) on a free port, with the command that started it."""

    def __init__(
        self, argv: list[str], shown: str, ready: str, env: dict[str, str], cwd: Path, log: Path
    ) -> None:
        self.port = free_port()
        argv = [part.replace("{port}", str(self.port)) for part in argv]
        self.shown = shown
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_ready(self.port, ready, self.proc)

    def processes(self) -> list[Any]:
        import psutil

        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def cpu_seconds(self) -> float:
        import psutil

        total = 0.0
        for proc in self.processes():
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                continue
        return total

    def memory_mib(self) -> tuple[float, float]:
        """RSS and PSS summed over the server's processes (PSS shares shared pages out)."""
        import psutil

        rss = pss = 0
        for proc in self.processes():
            try:
                info = proc.memory_full_info()
            except psutil.Error:
                continue
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        return rss / 2**20, pss / 2**20

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            for proc in self.processes():
                proc.kill()
        self.log.close()


def prepare(work: Path, venvs: dict[str, Path], env: dict[str, str]) -> dict[str, Path]:
    """Train both models; save each in cpmai's, MLflow's and BentoML's own format."""
    saved: dict[str, Path] = {}
    for kind in MODELS:
        folder = work / kind
        folder.mkdir()
        shutil.copy(ROOT / "examples" / "churn" / "train.py", folder)
        manifest = (ROOT / "examples" / "churn" / "cpmai.yaml").read_text()
        (folder / "cpmai.yaml").write_text(
            manifest.replace("name: churn-classifier", f"name: churn-{kind}")
        )
        run([PY, "train.py", "--model", kind], cwd=folder)
        run([PY, "-m", "cpmai", "package", "cpmai.yaml"], cwd=folder, env=env)
        # the same model without the ONNX twin: how much of the difference is the runtime
        (folder / "sklearn.yaml").write_text(
            manifest.replace("name: churn-classifier", f"name: churn-{kind}-sklearn").replace(
                "runtime: auto", "runtime: sklearn"
            )
        )
        run([PY, "-m", "cpmai", "package", "sklearn.yaml"], cwd=folder, env=env)
        args = [str(folder / "model.joblib"), str(folder / "data" / "holdout.csv"), "churned"]
        for tool, out in (("mlflow", str(work / f"mlflow-{kind}")), ("bentoml", f"churn-{kind}")):
            run(
                [str(venvs[tool] / "bin" / "python"), str(HERE / "peer_save.py"), tool, *args, out],
                env=env,
            )
        saved[kind] = folder
    return saved


def start_servers(
    work: Path, venvs: dict[str, Path], env: dict[str, str]
) -> dict[tuple[str, str], Server]:
    servers: dict[tuple[str, str], Server] = {}
    shutil.copy(HERE / "bento_service.py", work)
    for kind in MODELS:
        peer_env = {**env, "PATH": f"{venvs['mlflow'] / 'bin'}:{env['PATH']}"}
        for tool, artifact, note in (
            ("cpmai", f"churn-{kind}", ""),
            ("cpmai-sklearn", f"churn-{kind}-sklearn", "   (runtime: sklearn, no ONNX twin)"),
        ):
            servers[(kind, tool)] = Server(
                [PY, "-m", "cpmai", "serve", artifact, "--port", "{port}"],
                f"cpmai serve {artifact} --port P{note}",
                "/v2/health/ready",
                env,
                work,
                work / f"{tool}-{kind}.log",
            )
        servers[(kind, "mlflow")] = Server(
            [
                str(venvs["mlflow"] / "bin" / "mlflow"),
                "models",
                "serve",
                "-m",
                str(work / f"mlflow-{kind}"),
                "--env-manager",
                "local",
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
            ],
            f"mlflow models serve -m mlflow-{kind} --env-manager local --port P",
            "/ping",
            peer_env,
            work,
            work / f"mlflow-{kind}.log",
        )
        bento_env = {
            **env,
            "PATH": f"{venvs['bentoml'] / 'bin'}:{env['PATH']}",
            "CHURN_MODEL": f"churn-{kind}",
        }
        servers[(kind, "bentoml")] = Server(
            [
                str(venvs["bentoml"] / "bin" / "bentoml"),
                "serve",
                "bento_service:Churn",
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
            ],
            f"CHURN_MODEL=churn-{kind} bentoml serve bento_service:Churn --port P",
            "/readyz",
            bento_env,
            work,
            work / f"bentoml-{kind}.log",
        )
    return servers


def check_same_answers(servers: dict[tuple[str, str], Server]) -> None:
    """Every server must answer the row the same way, or the comparison means nothing."""
    body = json.dumps({"dataframe_records": [ROW]}).encode()
    for kind in MODELS:
        answers = {}
        for tool in TOOLS:
            request = urllib.request.Request(
                f"http://127.0.0.1:{servers[(kind, tool)].port}/invocations",
                data=body,
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=30) as reply:
                answers[tool] = json.loads(reply.read())["predictions"]
        if len({json.dumps(a) for a in answers.values()}) != 1:
            raise RuntimeError(f"{kind}: the servers disagree: {answers}")


def measure(
    servers: dict[tuple[str, str], Server], wrk: str, script: Path, duration: float, rounds: int
) -> dict[tuple[str, str, int], list[dict[str, Any]]]:
    cells: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    total = rounds * len(LEVELS) * len(MODELS) * len(TOOLS)
    done = 0
    for _ in range(rounds):
        for level in LEVELS:
            for kind in MODELS:
                for tool in TOOLS:
                    server = servers[(kind, tool)]
                    run_wrk(wrk, server.port, script, 1, level)  # warm-up, not counted
                    cpu0, t0 = server.cpu_seconds(), time.monotonic()
                    result = run_wrk(wrk, server.port, script, duration, level)
                    cpu = server.cpu_seconds() - cpu0
                    result["cpu_percent"] = 100 * cpu / (time.monotonic() - t0)
                    result["cpu_ms_per_request"] = 1000 * cpu / max(result["requests"], 1)
                    result["rss_mib"], result["pss_mib"] = server.memory_mib()
                    cells.setdefault((kind, tool, level), []).append(result)
                    done += 1
                    print(
                        f"[{done}/{total}] {kind} {tool} c={level}: {result['rps']:,.0f} req/s, "
                        f"p99 {result['p99_ms']:.2f} ms",
                        file=sys.stderr,
                    )
    return cells


def cpmai_bench_mlflow(server: Server, env: dict[str, str], duration: float) -> dict[str, Any]:
    argv = [
        PY,
        "-m",
        "cpmai",
        "bench",
        "churn-logreg",
        "--url",
        f"http://127.0.0.1:{server.port}",
        "--concurrency",
        ",".join(str(level) for level in LEVELS),
        "--duration",
        str(duration),
        "--pid",
        str(server.proc.pid),
        "--no-save",
        "--json",
    ]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    if proc.returncode not in (0, 4):  # 4: the manifest's SLO missed, still a measurement
        raise RuntimeError(f"cpmai bench --url failed ({proc.returncode}): {proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def med(items: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(item[key] for item in items))


def render(
    cells: dict[tuple[str, str, int], list[dict[str, Any]]],
    bench: dict[str, Any],
    facts: dict[str, Any],
) -> tuple[str, list[tuple[str, str, str, bool]]]:
    lines = [
        f"Measured {facts['date']} on {facts['machine']}, by `{facts['command']}` "
        f"(cpmai {facts['cpmai_rev']}).",
        "",
        "Versions: " + "; ".join(f"{tool}: {v}" for tool, v in facts["versions"].items()) + ".",
        "",
        f'Load: wrk, single-row JSON `{{"dataframe_records": [row]}}` POSTed to `/invocations`,'
        f" `-t1 -c1`, `-t2 -c8`, `-t2 -c64`, {facts['duration']:g} s per cell after 1 s of "
        f"warm-up, {facts['rounds']} rounds interleaved cell by cell; medians of the rounds. "
        "wrk and the servers share the machine's 2 cores.",
        "",
        "Servers (one worker each, every tool's default):",
        "",
        *[f"- `{shown}`" for shown in facts["servers"]],
        "",
        "| model | c | tool | req/s | p50 ms | p99 ms | errors | CPU % | CPU ms/req | RSS MiB "
        "| PSS MiB |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in MODELS:
        for level in LEVELS:
            for tool in TOOLS:
                items = cells[(kind, tool, level)]
                lines.append(
                    f"| {MODELS[kind]} | {level} | {SHOWN[tool]} | {med(items, 'rps'):,.0f} | "
                    f"{med(items, 'p50_ms'):.2f} | {med(items, 'p99_ms'):.2f} | "
                    f"{sum(i['errors'] for i in items)} | {med(items, 'cpu_percent'):.0f} | "
                    f"{med(items, 'cpu_ms_per_request'):.3f} | {med(items, 'rss_mib'):.0f} | "
                    f"{med(items, 'pss_mib'):.0f} |"
                )
    lines += [
        "",
        "CPU % is the server's processes' CPU time over the cell's wall time (100% = one core); "
        "RSS and PSS are read after each cell, summed over the server's processes (PSS divides "
        "shared pages among the processes that share them).",
        "",
        "Ratios, cpmai ÷ peer (requests/s; p99 as peer ÷ cpmai, so above 1 means cpmai is lower):",
        "",
        "| model | c | req/s vs MLflow | req/s vs BentoML | p99 vs MLflow | p99 vs BentoML "
        "| runtime: sklearn, req/s vs MLflow | vs BentoML |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    checks: list[tuple[str, str, str, bool]] = []
    slower: list[str] = []
    for kind in MODELS:
        for level in LEVELS:
            ours = cells[(kind, "cpmai", level)]
            row = f"| {MODELS[kind]} | {level} |"
            speed = {}
            for peer in ("mlflow", "bentoml"):
                theirs = med(cells[(kind, peer, level)], "rps")
                speed[peer] = med(ours, "rps") / theirs if theirs else float("inf")
                row += f" {speed[peer]:,.1f}× |" if theirs else " ∞ (none answered) |"
            for peer in ("mlflow", "bentoml"):
                # a peer that answered nothing in the cell has no p99: it waited longer than it
                theirs = cells[(kind, peer, level)]
                answered = med(theirs, "rps") > 0
                lower = med(theirs, "p99_ms") / med(ours, "p99_ms") if answered else float("inf")
                row += f" {lower:,.1f}× |"
                checks.append(
                    (f"{kind} c={level}: p99 below {peer}", f"{lower:,.1f}×", "> 1×", lower > 1)
                )
                if lower <= 1:
                    slower.append(f"{kind} c={level}: p99 not below {peer}'s")
                if speed[peer] < 1:
                    slower.append(f"{kind} c={level}: fewer requests/s than {peer}")
                if med(ours, "pss_mib") > med(theirs, "pss_mib"):
                    slower.append(f"{kind} c={level}: more memory (PSS) than {peer}")
            plain = med(cells[(kind, "cpmai-sklearn", level)], "rps")
            for peer in ("mlflow", "bentoml"):
                theirs_rps = med(cells[(kind, peer, level)], "rps")
                row += f" {plain / theirs_rps:,.1f}× |" if theirs_rps else " ∞ |"
            lines.append(row)
            if level == 8:
                for peer in ("mlflow", "bentoml"):
                    want = TARGETS[kind]
                    checks.append(
                        (
                            f"{kind} c=8: req/s vs {peer}",
                            f"{speed[peer]:,.1f}×",
                            f"≥ {want:g}×",
                            speed[peer] >= want,
                        )
                    )
    lines += [
        "",
        "Cells where cpmai (default runtime) does worse than a peer: "
        + ("; ".join(slower) or "none")
        + ".",
    ]
    lines += [
        "",
        "`cpmai bench churn-logreg --url http://127.0.0.1:P --concurrency 1,8,64 "
        f"--duration {facts['duration']:g} --pid PID` against the MLflow server of the logistic "
        "regression (cpmai's own load generator, a Python process, against a server cpmai did "
        "not build; one run after the rounds above):",
        "",
        "| c | req/s | p50 ms | p99 ms | errors | server CPU % mean | server RSS MiB peak "
        "| wrk's rounds, req/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    resources = bench.get("resources") or {}
    cpu = (resources.get("cpu_percent") or {}).get("mean")
    rss = (resources.get("rss_bytes") or {}).get("peak")
    for level in bench["levels"]:
        latency = level["latency_ms"]
        lines.append(
            f"| {level['concurrency']} | {level['throughput_rps']:,.0f} | "
            f"{latency['p50_ms']:.2f} | {latency['p99_ms']:.2f} | "
            f"{level['requests'] - level['ok']} | "
            f"{'-' if cpu is None else f'{cpu:.0f}'} | "
            f"{'-' if rss is None else f'{rss / 2**20:.0f}'} | "
            + " / ".join(
                f"{r['rps']:.1f}" for r in cells[("logreg", "mlflow", level["concurrency"])]
            )
            + " |"
        )
    lines.append("")
    lines.append("(resources: over the whole `cpmai bench` run, all levels)")
    return "\n".join(lines) + "\n", checks


def write_section(path: Path, text: str) -> None:
    begin, end = "<!-- compare:begin -->", "<!-- compare:end -->"
    old = path.read_text() if path.exists() else f"{begin}\n{end}\n"
    if begin not in old or end not in old:
        raise SystemExit(f"{path} has no {begin} … {end} markers")
    head, rest = old.split(begin, 1)
    tail = rest.split(end, 1)[1]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{head}{begin}\n{text}{end}{tail}")
    tmp.replace(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--venvs", type=Path, default=Path.home() / ".cache" / "cpmai-compare")
    parser.add_argument("--write", type=Path, help="put the result into this Markdown file")
    parser.add_argument(
        "--render-only", action="store_true", help="re-render the last run's measurements"
    )
    args = parser.parse_args()
    if args.render_only:
        saved = json.loads((args.venvs / "last-run.json").read_text())
        cells = {(k, t, int(c)): v for k, t, c, v in saved["cells"]}
        return finish(cells, saved["bench"], saved["facts"], args.write)
    # a SIGTERM (or Ctrl-C) must still run the `finally` that stops the eight servers
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    wrk = ensure_wrk()
    venvs = {tool: ensure_venv(args.venvs, tool) for tool in PEERS}
    with tempfile.TemporaryDirectory(prefix="cpmai-compare-") as tmp:
        work = Path(tmp)
        env = {
            **os.environ,
            **QUIET,
            "CPMAI_HOME": str(work / "state"),
            "CPMAI_ACTOR": "bench",
            "BENTOML_HOME": str(work / "bentoml"),
        }
        prepare(work, venvs, env)
        script = post_script(work, {"dataframe_records": [ROW]})
        servers = start_servers(work, venvs, env)
        try:
            check_same_answers(servers)
            cells = measure(servers, wrk, script, args.duration, args.rounds)
            bench = cpmai_bench_mlflow(servers[("logreg", "mlflow")], env, args.duration)
        finally:
            for server in servers.values():
                server.stop()
    rev = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    facts = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": fingerprint(),
        "command": " ".join(["python benchmarks/compare/run.py", *sys.argv[1:]]),
        "cpmai_rev": rev or "?",
        "duration": args.duration,
        "rounds": args.rounds,
        "versions": {
            "cpmai": versions(PY, ("scikit-learn", "onnxruntime", "pandas", "uvicorn")),
            "MLflow": versions(
                venvs["mlflow"] / "bin" / "python", ("mlflow", "scikit-learn", "pandas", "uvicorn")
            ),
            "BentoML": versions(
                venvs["bentoml"] / "bin" / "python",
                ("bentoml", "scikit-learn", "pandas", "uvicorn"),
            ),
        },
        "servers": sorted({server.shown for server in servers.values()}),
    }
    raw = args.venvs / "last-run.json"
    raw.write_text(
        json.dumps(
            {
                "cells": [[*key, value] for key, value in cells.items()],
                "bench": bench,
                "facts": facts,
            }
        )
    )
    print(f"raw measurements: {raw} (--render-only re-renders them)", file=sys.stderr)
    return finish(cells, bench, facts, args.write)


def finish(
    cells: dict[tuple[str, str, int], list[dict[str, Any]]],
    bench: dict[str, Any],
    facts: dict[str, Any],
    write: Path | None,
) -> int:
    text, checks = render(cells, bench, facts)
    print(text)
    if write:
        write_section(write, text)
        print(f"written to {write}", file=sys.stderr)
    return verdicts(checks, ("target", "measured", "wanted"))


if __name__ == "__main__":
    sys.exit(main())
