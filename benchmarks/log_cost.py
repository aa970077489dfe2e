"""What the prediction log costs the request path, counted in instructions (callgrind), which do
not swing from run to run as wrk's requests/s on a shared machine do.

    python benchmarks/log_cost.py [--short 800] [--long 4000] [--concurrency 8]

Packages the churn example into a temporary state folder, then runs this file under
`valgrind --tool=callgrind` four times: `--short` and `--long` one-row requests at
`--concurrency` (8; at 1 every batch is one request, so the log's per-batch work falls on each)
fed as bytes to uvicorn's protocol object as `cpmai serve` runs it (no sockets), with the
prediction log on and off (see `drive`).
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import ROW, fingerprint, verdicts  # noqa: E402

NAME = "churn-classifier"


def drive(home: Path, log: bool, requests: int, concurrency: int = 8) -> None:
    """The child: `requests` one-row MLflow requests on `concurrency` connections, each fed as
    bytes to uvicorn's protocol object as `cpmai serve` runs it (the short way for predictions),
    with a transport that only keeps what is written: all of the request path but the sockets.
    All of the log's work runs on this thread, its block written every 1,000 requests (in the
    server the event loop prepares a block every 1,000 rows, and a thread writes it), so the
    count is deterministic and holds all of it."""
    import orjson
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from cpmai.artifacts import open_artifact
    from cpmai.predlog import index, writer
    from cpmai.serving.app import build_app
    from cpmai.serving.config import ServeConfig
    from cpmai.serving.fastpath import InferenceHttpProtocol
    from cpmai.serving.server import tune_process

    writer.PredictionLog.start = lambda self: self.folder.mkdir(parents=True, exist_ok=True)
    # an index record when the run ends, not a minute into it: a run's wall time (valgrind, a
    # busy machine) must not change how many records it writes
    index.INDEX_SECONDS = float("inf")
    artifact = open_artifact(home, NAME)
    config = ServeConfig(home=str(home), name=NAME, version="", env="cost", prediction_log=log)
    app = build_app(config.for_artifact(artifact), artifact)
    tune_process()  # as a server process does where it starts
    body = orjson.dumps({"dataframe_records": [ROW]})
    request = (
        b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )

    async def run() -> None:
        loop = asyncio.get_running_loop()
        finished = loop.create_future()
        answered = 0

        class Transport(asyncio.Transport):
            def __init__(self, protocol: Any) -> None:
                super().__init__()
                self.protocol = protocol

            def write(self, data: Any) -> None:
                nonlocal answered
                answered += 1
                if app.log is not None and answered % 1000 == 0:
                    app.log.flush()
                if answered == requests:
                    finished.set_result(None)
                elif answered <= requests - concurrency:  # this connection's next request
                    loop.call_soon(self.protocol.data_received, request)

            def get_extra_info(self, name: str, default: Any = None) -> Any:
                return ("127.0.0.1", 8080) if name in ("sockname", "peername") else default

            def is_closing(self) -> bool:
                return False

        state = ServerState()
        uvicorn_config = Config(app, lifespan="off", proxy_headers=False, access_log=False)
        app.start()
        for _ in range(concurrency):
            protocol = InferenceHttpProtocol(uvicorn_config, state, {}, loop)
            protocol.connection_made(Transport(protocol))
            protocol.data_received(request)
        await finished
        app.close()

    import uvloop

    uvloop.run(run())


def instructions(home: Path, log: bool, requests: int, concurrency: int, out: Path) -> int:
    subprocess.run(
        ["valgrind", "--tool=callgrind", "--separate-threads=yes",
         f"--callgrind-out-file={out}", sys.executable,
         __file__, "--child", str(home), "log" if log else "nolog", str(requests),
         str(concurrency)],
        check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "0"},
    )  # fmt: skip
    # the main thread only: the libraries' idle worker threads (OpenBLAS, ONNX Runtime) spin a
    # varying number of instructions; everything the request path and the log do is on it here
    main = out.with_name(f"{out.name}-01")
    found = re.search(r"^(?:summary|totals): (\d+)", main.read_text(), re.MULTILINE)
    if not found:
        raise SystemExit(f"no total in {out}")
    return int(found[1])


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        drive(Path(sys.argv[2]), sys.argv[3] == "log", int(sys.argv[4]), int(sys.argv[5]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=int, default=800)
    parser.add_argument("--long", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=8)
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
                instructions(work / "state", log, n, args.concurrency, work / f"cg.{log}.{n}")
                for n in (args.short, args.long)
            ]
            per_request[log] = (counts[1] - counts[0]) / (args.long - args.short)
    share = (per_request[True] - per_request[False]) / per_request[True]
    print(f"machine: {fingerprint()}")
    print(
        f"requests: {args.short:,} and {args.long:,}, one row each, "
        f"concurrency {args.concurrency}, in process"
    )
    print(f"with the log: {per_request[True]:,.0f} instructions a request")
    print(f"without: {per_request[False]:,.0f} instructions a request\n")
    return verdicts(
        [("the log's share of the request path", f"{share:.1%}", "< 5%", share < 0.05)],
        ("what", "measured", "target"),
    )


if __name__ == "__main__":
    sys.exit(main())
