"""One environment's server: the versions of a model it holds, behind one port, switched in place.

The local target runs one of these per environment (`python -m cpmai.serving.router`). What it
serves is a route table (`cpmai.serving.runstate.RouteTable`, `runs/NAME/ENV/routes.json`) that
`cpmai deploy / promote / rollback` rewrite atomically:

    {"seq": 7, "live": "1.1.0", "canary": "1.2.0", "weight": 0.1, "keep": ["1.0.0"]}

Every worker polls the file (every POLL_SECONDS: one stat call). A version it does not hold yet is
verified against the ledger and loaded in a thread while the current ones keep answering; only
when every version the table names is loaded does the worker switch. A version that fails to
load leaves the routing as it was and is reported. So a switch never drops a request or a
connection: clients keep their sockets, requests in flight finish on the version that took them,
and the version left behind is closed once nothing runs on it. `keep` holds the previous version
loaded, so a rollback is a pointer swap.

Routing: infer without a version and /invocations go to the canary with probability `weight`,
else to the live version; `/v2/models/NAME/versions/V/...` goes to version V if held;
everything else to the live version; /metrics merges every held version (label `version`).

Each worker writes its `WorkerStatus` (`runs/NAME/ENV/workers/PID.json`) every REPORT_SECONDS
and after each switch: the route seq applied, load errors, and per-version request, error and
latency-histogram counters, which the canary compares and `cpmai status` reads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import random
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpmai.serving.app import InferenceApp
from cpmai.serving.config import ServeConfig, resource_log
from cpmai.serving.metrics import LATENCY_BUCKETS, merged_registry
from cpmai.serving.runstate import (
    POLL_SECONDS,
    REPORT_SECONDS,
    Counters,
    RouteTable,
    RunFiles,
    ServerRecord,
    WorkerStatus,
)

if TYPE_CHECKING:
    from cpmai.serving.resources import ResourceLog

DRAIN_SECONDS = 30.0
NO_LIVE = "(routes)"
"""The key of a route table's own error among the load errors, which are keyed by version."""
PREDICT_ENDPOINTS = ("infer", "invocations")


def announce(files: RunFiles, host: str, port: int, workers: int) -> None:
    """Write `server.json`: what runs, even if the command that started this process dies
    before it writes `run.json` (a SIGKILL right after the start)."""
    import psutil

    me = psutil.Process()
    files.write_server(files.server, ServerRecord(me.pid, me.create_time(), host, port, workers))


def counters(app: InferenceApp) -> Counters:
    """Requests, errors (any non-2xx) and the latency histogram of the predict endpoints."""
    metrics = app.metrics
    requests = errors = 0
    for (endpoint, status, _), count in metrics.requests.items():
        if endpoint in PREDICT_ENDPOINTS:
            requests += count
            if status >= 300:
                errors += count
    buckets = [0] * (len(LATENCY_BUCKETS) + 1)
    for (endpoint, _), histogram in metrics.latency.items():
        if endpoint in PREDICT_ENDPOINTS:
            buckets = [a + b for a, b in zip(buckets, histogram.counts, strict=True)]
    return Counters(requests, errors, buckets)


class EnvironmentApp:
    """ASGI app of one environment's worker process."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.files = RunFiles.of(Path(config.home), config.name, config.env)
        self.slots: dict[str, InferenceApp] = {}
        self.live: InferenceApp | None = None
        self.canary: InferenceApp | None = None
        self.weight = 0.0
        self.seq = 0
        self.routes_stamp: tuple[int, int, int] | None = None
        self.load_errors: dict[str, str] = {}
        self.failed_seq = 0
        self.started = time.time()
        self.parent = os.getppid()
        self.registry = merged_registry(lambda: [(v, s.metrics) for v, s in self.slots.items()])
        self._tasks: set[asyncio.Task[Any]] = set()
        self.resources: ResourceLog | None = None

    # --- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path == "/metrics":
            from prometheus_client import generate_latest

            from cpmai.serving.metrics import CONTENT_TYPE

            body = generate_latest(self.registry)
            await _send(send, 200, body, CONTENT_TYPE.encode())
            return
        slot = self.route(path)
        if slot is None:
            await _send(send, 503, b'{"error":"no model loaded yet"}', b"application/json")
            return
        slot.inflight += 1
        try:
            await slot(scope, receive, send)
        finally:
            slot.inflight -= 1

    def route(self, path: str) -> InferenceApp | None:
        """The version a request for `path` goes to (None before any is loaded)."""
        if path.startswith("/v2/models/") and "/versions/" in path:
            parts = path.split("/")
            if len(parts) > 5 and parts[5] in self.slots:
                return self.slots[parts[5]]
        elif (
            self.canary is not None
            and (path == "/invocations" or path.endswith("/infer"))
            and random.random() < self.weight
        ):
            return self.canary
        return self.live

    def short_way(self, path: str) -> tuple[InferenceApp, str] | None:
        """The version and endpoint that answer a POST to `path` from uvicorn's parser
        callbacks (`cpmai.serving.fastpath`), when it asks for predictions."""
        slot = self.route(path)
        return None if slot is None else slot.short_way(path)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._apply_if_changed()
                    if self.live is None:
                        raise RuntimeError(
                            "; ".join(f"{v}: {e}" for v, e in self.load_errors.items())
                            or f"no route table at {self.files.routes}"
                        )
                except Exception as exc:
                    self._report()
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                self._spawn(self._watch())
                live = self.live
                assert live is not None
                self.resources = resource_log(
                    live.config, lambda: self.live.version if self.live else None
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for slot in self.slots.values():
                    slot.close()
                if self.resources is not None:
                    self.resources.close()
                self.files.worker(os.getpid()).unlink(missing_ok=True)
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- following the route table -----------------------------------------------------------

    async def _watch(self) -> None:
        last_report = 0.0
        while True:
            await asyncio.sleep(POLL_SECONDS)
            if self.config.workers > 1 and os.getppid() != self.parent:
                os.kill(os.getpid(), signal.SIGTERM)  # the supervisor died: do not linger
                return
            with contextlib.suppress(Exception):  # a bad table is reported, never fatal
                if await self._apply_if_changed():
                    last_report = 0.0
            now = time.monotonic()
            if now - last_report >= REPORT_SECONDS:
                with contextlib.suppress(OSError):
                    self._report()
                last_report = now

    async def _apply_if_changed(self) -> bool:
        try:
            info = self.files.routes.stat()
        except FileNotFoundError:
            return False
        # every write is a new file (written aside, renamed): the inode changes even when a
        # coarse clock gives two writes the same mtime
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        if stamp == self.routes_stamp:
            return False
        routes = self.files.read_routes()
        if routes is None or routes.seq <= max(self.seq, self.failed_seq):
            self.routes_stamp = stamp
            return False
        await self._apply(routes)
        self.routes_stamp = stamp  # only once applied: a table that raised is tried again
        self._report()
        return True

    async def _apply(self, routes: RouteTable) -> None:
        seq, live, canary = routes.seq, routes.live, routes.canary
        if live is None:
            self.failed_seq = seq
            self.load_errors[NO_LIVE] = "the route table names no live version"
            return
        wanted = [live, *([canary] if canary else []), *routes.keep]
        loop = asyncio.get_running_loop()
        for version in wanted:
            if version in self.slots:
                continue
            try:
                slot = await loop.run_in_executor(None, self._load, version)
            except Exception as exc:
                self.load_errors[version] = f"{type(exc).__name__}: {exc}"
                continue
            slot.start()
            gc.freeze()  # loaded after the process was tuned: keep this model out of GC scans too
            self.slots[version] = slot
            self.load_errors.pop(version, None)
        if any(v not in self.slots for v in wanted[: 2 if canary else 1]):
            self.failed_seq = seq
            return
        self.live = self.slots[live]
        self.canary = self.slots[canary] if canary else None
        self.weight = routes.weight if canary else 0.0
        self.seq = seq
        self.load_errors.pop(NO_LIVE, None)
        for version in [v for v in self.slots if v not in wanted]:
            self._spawn(self._drain(self.slots.pop(version)))

    def _load(self, version: str) -> InferenceApp:
        """Verify the artifact against the ledger and load it (in a thread)."""
        from cpmai.artifacts import open_artifact
        from cpmai.serving.app import build_app

        artifact = open_artifact(Path(self.config.home), self.config.name, version)
        return build_app(self.config.for_artifact(artifact), artifact)

    async def _drain(self, slot: InferenceApp) -> None:
        deadline = time.monotonic() + DRAIN_SECONDS
        while slot.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        slot.close()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _report(self) -> None:
        self.files.write_status(
            WorkerStatus(
                pid=os.getpid(),
                time=time.time(),
                started=self.started,
                seq=self.seq,
                failed_seq=self.failed_seq,
                live=self.live.version if self.live else None,
                canary=self.canary.version if self.canary else None,
                weight=self.weight,
                loaded=sorted(self.slots),
                errors=dict(self.load_errors),
                counters={v: counters(s) for v, s in self.slots.items()},
            )
        )


async def _send(send: Any, status: int, body: bytes, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_router_from_env() -> EnvironmentApp:
    """uvicorn's factory for each worker: the config is in $CPMAI_SERVE_CONFIG."""
    from cpmai.serving.server import tune_process

    tune_process()
    return EnvironmentApp(ServeConfig.from_env())


def main(argv: list[str] | None = None) -> None:
    """The environment server process the local target starts (not a user command)."""
    from cpmai.serving.server import serve

    parser = argparse.ArgumentParser(prog="python -m cpmai.serving.router")
    parser.add_argument("--home", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--env", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--header-timeout", type=float, default=10.0)
    parser.add_argument("--body-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    files = RunFiles.of(Path(args.home), args.name, args.env)
    announce(files, args.host, args.port, args.workers)
    config = ServeConfig(
        home=args.home,
        name=args.name,
        version="",
        env=args.env,
        host=args.host,
        port=args.port,
        workers=args.workers,
        token=os.environ.get("CPMAI_TOKEN") or None,
        token_sha256=files.recorded_token(),
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
    )
    if config.workers == 1:
        serve(config, EnvironmentApp(config))  # `serve` tunes the process
    else:  # each worker builds its own app from $CPMAI_SERVE_CONFIG
        serve(config, factory="cpmai.serving.router:create_router_from_env")


if __name__ == "__main__":
    main()
