"""What the prediction log costs the request path, counted in instructions (callgrind), which do
not swing from run to run as wrk's requests/s on a shared machine do.

    python benchmarks/log_cost.py [--short 800] [--long 4000]

Packages the churn example into a temporary state folder, then runs this file under
`valgrind --tool=callgrind` four times: the ASGI app called directly (no HTTP, no uvicorn) with
`--short` and `--long` one-row requests at concurrency 8, with the prediction log on and off.
The difference between the two lengths divided by the difference in requests is the cost of
one request, start-up and imports cancelled out. Prints instructions per request with and
without the log and the log's share; exits 4 when the share is 5% or more (issue 3's bound,
which it sets on throughput). Needs valgrind (Debian package `valgrind`). Takes a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import ROW, fingerprint, verdicts  # noqa: E402

NAME = "churn-classifier"


def drive(home: Path, log: bool, requests: int) -> None:
    """The child: `requests` one-row MLflow requests through the app, 8 at a time."""
    import orjson

    from cpmai.artifacts import open_artifact
    from cpmai.serving.app import ServeConfig, build_app

    artifact = open_artifact(home, NAME)
    config = ServeConfig(home=str(home), name=NAME, version="", env="cost", prediction_log=log)
    app = build_app(config.for_artifact(artifact), artifact)
    body = orjson.dumps({"dataframe_records": [ROW]})
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/invocations",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
    }

    async def send(message: dict[str, object]) -> None:
        return None

    async def client(count: int) -> None:
        for _ in range(count):
            messages = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive(messages: list[dict[str, object]] = messages) -> dict[str, object]:
                if messages:
                    return messages.pop()
                await asyncio.sleep(3600)  # the client never disconnects
                return {}

            await app(dict(scope), receive, send)

    async def run() -> None:
        app.start()
        await asyncio.gather(*(client(requests // 8) for _ in range(8)))
        app.close()

    asyncio.run(run())


def instructions(home: Path, log: bool, requests: int, out: Path) -> int:
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
         __file__, "--child", str(home), "log" if log else "nolog", str(requests)],
        check=True, capture_output=True,
    )  # fmt: skip
    found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
    if not found:
        raise SystemExit(f"no total in {out}")
    return int(found[1])


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        drive(Path(sys.argv[2]), sys.argv[3] == "log", int(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=int, default=800)
    parser.add_argument("--long", type=int, default=4000)
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        sys.exit("valgrind is needed (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="cpmai-log-cost-") as tmp:
        work = Path(tmp)
        for file in ("train.py", "cpmai.yaml"):
            shutil.copy(ROOT / "examples" / "churn" / file, work)
        env = {**os.environ, "CPMAI_HOME": str(work / "state"), "CPMAI_ACTOR": "bench"}
        subprocess.run([sys.executable, "train.py"], cwd=work, check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "cpmai", "package", "cpmai.yaml"], cwd=work,
                       env=env, check=True, capture_output=True)  # fmt: skip
        per_request = {}
        for log in (True, False):
            counts = [
                instructions(work / "state", log, n, work / f"cg.{log}.{n}")
                for n in (args.short, args.long)
            ]
            per_request[log] = (counts[1] - counts[0]) / (args.long - args.short)
    share = (per_request[True] - per_request[False]) / per_request[True]
    print(f"machine: {fingerprint()}")
    print(f"requests: {args.short:,} and {args.long:,}, one row each, concurrency 8, in process")
    print(f"with the log: {per_request[True]:,.0f} instructions a request")
    print(f"without: {per_request[False]:,.0f} instructions a request\n")
    return verdicts(
        [("the log's share of the request path", f"{share:.1%}", "< 5%", share < 0.05)],
        ("what", "measured", "target"),
    )


if __name__ == "__main__":
    sys.exit(main())
