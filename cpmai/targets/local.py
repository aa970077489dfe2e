"""The local target: one supervised server process per environment, versions switched in place.

`runs/NAME/ENV/` holds `run.json` (pid, host, port, workers, start time), `routes.json` (what
the server should serve), `workers/PID.json` (what each worker serves and has counted) and
`server.log` (the process's output): typed records shared with the server, in
`cpmai.serving.runstate`.

The server runs detached in its own session (it outlives the `cpmai deploy` that started it) with
`replicas` uvicorn workers on one listening socket. A new version is loaded beside the live one
in the same process and traffic moves only when every worker has it loaded, so clients keep their
connections and no request is refused; the old version stays loaded (rollback is a pointer swap)
and drains. A canary shifts a share of requests to the new version step by step and compares the
two versions' error rates and p99 from the workers' counters.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from cpmai.clock import iso
from cpmai.errors import TargetError
from cpmai.serving.runstate import (
    Counters,
    RouteTable,
    RunFiles,
    ServerRecord,
    WorkerStatus,
)
from cpmai.steps import Step
from cpmai.targets import Progress, RolloutPlan, RolloutResult, TargetStatus
from cpmai.targets.canary import describe, judge, window

START_TIMEOUT = 60.0
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Health checks go straight to the server, whatever http_proxy says."""
SWITCH_TIMEOUT = 60.0
STOP_TIMEOUT = 35.0


class LocalTarget:
    kind = "local"

    def __init__(self, home: Path, name: str, env: str) -> None:
        self.home = home
        self.name = name
        self.env = env
        self.files = RunFiles.of(home, name, env)
        self.folder = self.files.folder
        self.log_path = self.files.log

    # --- reading what runs -------------------------------------------------------------------

    def _run(self) -> ServerRecord | None:
        """What runs here: `run.json` (written by the command that started it) or, when that
        command died first, the `server.json` the server wrote itself."""
        recorded = self.files.read_server(self.files.run)
        if recorded is not None:
            return recorded
        announced = self.files.read_server(self.files.server)
        return announced if self._alive(announced) else None

    def _alive(self, run: ServerRecord | None) -> bool:
        if run is None:
            return False
        import psutil

        try:
            process = psutil.Process(run.pid)
            return bool(
                process.status() != psutil.STATUS_ZOMBIE
                and abs(process.create_time() - run.created) < 1.0
            )
        except (psutil.Error, ValueError, OverflowError):
            return False

    def _workers(self) -> list[WorkerStatus]:
        """The status of every worker process that is alive."""
        return self.files.statuses()

    def _url(self, run: ServerRecord) -> str:
        host = run.host
        shown = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"http://[{shown}]:{run.port}" if ":" in shown else f"http://{shown}:{run.port}"

    def _healthy(self, run: ServerRecord, timeout: float = 0.5) -> bool:
        try:
            with _DIRECT.open(f"{self._url(run)}/v2/health/ready", timeout=timeout) as reply:
                return int(reply.status) == 200
        except (OSError, ValueError):
            return False

    def status(self) -> TargetStatus:
        run = self._run()
        if run is None:
            return TargetStatus(state="stopped", detail="no server started")
        url = self._url(run)
        if not self._alive(run):
            return TargetStatus(
                state="down",
                url=url,
                pid=run.pid,
                detail=f"server process {run.pid} is not running (see {self.log_path})",
            )
        workers = self._workers()
        routes = self.files.read_routes() or RouteTable(0, None)
        healthy = self._healthy(run)
        expected = run.workers
        state = "running" if healthy and len(workers) >= expected else "degraded"
        detail = "" if state == "running" else f"{len(workers)}/{expected} workers reporting"
        if not healthy:
            detail = "not answering /v2/health/ready"
        return TargetStatus(
            state=state,
            url=url,
            pid=run.pid,
            uptime_s=round(time.time() - run.created, 1),
            healthy=healthy,
            live=routes.live,
            canary=routes.canary,
            weight=routes.weight,
            workers=len(workers),
            detail=detail,
        )

    # --- rolling out ---------------------------------------------------------------------------

    def rollout(self, plan: RolloutPlan, progress: Progress) -> RolloutResult:
        run = self._run()
        if not self._alive(run):
            return self._start(plan, run, progress)
        given = os.environ.get("CPMAI_TOKEN") or None
        if given is not None and _sha256(given) != self.files.recorded_token():
            progress(
                f"$CPMAI_TOKEN differs from the token {self.env}'s running server requires: it "
                f"keeps its own until restarted (`cpmai stop`, then deploy)"
            )
        assert run is not None
        routes = self.files.read_routes() or RouteTable(0, None)
        old = routes.live
        result = RolloutResult(url=self._url(run), previous=old, pid=run.pid)
        if old == plan.version:
            self._route(live=old, keep=[v for v in routes.keep if v != old])
            result.steps.append({"step": "unchanged", "seconds": 0.0, "note": "already live"})
            return result
        changed = [
            f"{key} {getattr(run, key)} → {value}"
            for key, value in (
                ("host", plan.spec.host),
                ("port", plan.spec.port),
                ("workers", plan.spec.min_replicas),
            )
            if value is not None and getattr(run, key) != value
        ]
        if changed:
            progress(
                f"note: {', '.join(changed)} in the manifest does not apply to the running "
                f"server until `cpmai stop {self.name} --env {self.env}` and a new deploy"
            )
        try:
            return self._replace(plan, old, result, progress)
        except BaseException:
            # interrupted, timed out, refused or a bug: everything back on the version that was live
            # (a worker restarted by uvicorn reads the table again: it must name the old one)
            self._route(live=old, keep=[])
            raise

    def _replace(
        self, plan: RolloutPlan, old: str | None, result: RolloutResult, progress: Progress
    ) -> RolloutResult:
        """Move the running server from `old` to the plan's version (canary steps first)."""
        keep = [old] if old else []
        if plan.canary and old:
            started = time.perf_counter()
            progress(f"loading {plan.version} beside {old} in the running server")
            self._switch(live=old, canary=plan.version, keep=[], what="load", fallback=old)
            result.steps.append(_step("load", started, f"{plan.version} loaded by every worker"))
            for percent in plan.spec.rollout.steps[:-1]:
                started = time.perf_counter()
                window = self._canary_step(plan, old, percent, progress)
                result.steps.append(_step(f"canary {percent}%", started, "", window))
                if window.get("breach"):
                    if plan.spec.rollout.auto_rollback:
                        self._switch(live=old, keep=[], what="roll back", fallback=old)
                        raise CanaryBreach(plan, percent, window)
                    progress(f"breach at {percent}% but auto_rollback is off: going on")
        started = time.perf_counter()
        # each worker loads what it lacks first and switches only when it has it (or reports
        # failure and keeps serving the old version)
        self._switch(live=plan.version, keep=keep, what="switch", fallback=old)
        result.steps.append(_step("switch", started, f"{plan.version} takes all traffic"))
        return result

    def _start(
        self, plan: RolloutPlan, previous_run: ServerRecord | None, progress: Progress
    ) -> RolloutResult:
        spec = plan.spec
        port = spec.port or (previous_run.port if previous_run else None) or _free_port(spec.host)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.files.clear_statuses()
        _check_port_free(spec.host, port)
        self._record_token(progress)
        seq = self._route(live=plan.version, keep=[])
        progress(f"starting a server for {plan.version} on {spec.host}:{port}")
        started = time.perf_counter()
        command = [
            sys.executable,
            "-m",
            "cpmai.serving.router",
            "--home",
            str(self.home),
            "--name",
            self.name,
            "--env",
            self.env,
            "--host",
            spec.host,
            "--port",
            str(port),
            "--workers",
            str(spec.min_replicas),
            "--header-timeout",
            str(plan.timeouts[0]),
            "--body-timeout",
            str(plan.timeouts[1]),
        ]
        from cpmai.guards import start_detached

        process = start_detached(command, self.log_path)
        import psutil

        created = psutil.Process(process.pid).create_time()
        run = ServerRecord(process.pid, created, spec.host, port, spec.min_replicas)
        self.files.write_server(self.files.run, run)
        try:
            self._wait_started(process, run, seq, plan)
        except KeyboardInterrupt:
            self._kill(run)
            raise
        result = RolloutResult(url=self._url(run), previous=None, pid=process.pid)
        result.steps.append(
            _step("start", started, f"pid {process.pid}, {spec.min_replicas} worker(s)")
        )
        return result

    def _record_token(self, progress: Progress) -> None:
        """Keep the bearer token the server is started with (its SHA-256, owner-only), so a
        restart from a shell without $CPMAI_TOKEN (a rollback, say) still requires it; say when
        it is kept or changes."""
        given = os.environ.get("CPMAI_TOKEN") or None
        recorded = self.files.recorded_token()
        if given is None:
            if recorded is not None:
                progress(f"{self.env} keeps requiring its recorded bearer token")
            return
        digest = _sha256(given)
        if digest == recorded:
            return
        if recorded is not None:
            progress(f"{self.env}'s bearer token changes (from $CPMAI_TOKEN)")
        self.files.record_token(digest, iso())

    def _wait_started(
        self, process: subprocess.Popen[bytes], run: ServerRecord, seq: int, plan: RolloutPlan
    ) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise TargetError(
                    f"the server for {self.name} {plan.version} exited with status "
                    f"{process.returncode} before it was ready:\n{self.log_tail()}",
                    hint=f"the whole log: {self.log_path}",
                )
            failed = [w for w in self._workers() if w.failed_seq >= seq]
            if failed:
                self._kill(run)
                raise TargetError(
                    f"the server could not load {plan.version}: {failed[0].load_errors()}"
                )
            if self._applied(seq, plan.version, plan.spec.min_replicas) and self._healthy(run):
                return
            if time.monotonic() > deadline:
                self._kill(run)
                raise TargetError(
                    f"the server for {self.name} {plan.version} was not ready after "
                    f"{START_TIMEOUT:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _route(
        self,
        *,
        live: str | None,
        canary: str | None = None,
        weight: float = 0.0,
        keep: list[str],
    ) -> int:
        """Write the next route table; returns its seq."""
        # past every table written or applied: a damaged routes.json must not restart the count
        # below what the workers applied (they would ignore the new table as old)
        current = self.files.read_routes()
        seen = [max(w.seq, w.failed_seq) for w in self._workers()]
        seq = max([current.seq if current else 0, *seen]) + 1
        self.files.write_routes(RouteTable(seq, live, canary, weight, keep))
        return seq

    def _switch(
        self,
        *,
        live: str | None,
        canary: str | None = None,
        weight: float = 0.0,
        keep: list[str],
        what: str,
        fallback: str | None,
    ) -> None:
        """Write the table and wait until every worker applied it. When a worker cannot (a
        version failed to load), route everything back to `fallback` and raise TargetError."""
        run = self._run()
        expected = run.workers if run else 1
        seq = self._route(live=live, canary=canary, weight=weight, keep=keep)
        deadline = time.monotonic() + SWITCH_TIMEOUT
        while True:
            workers = self._workers()
            failed = [w for w in workers if w.failed_seq >= seq]
            if failed:
                self._route(live=fallback, keep=[])
                raise TargetError(
                    f"{what}: the server could not load {canary or live}: "
                    f"{failed[0].load_errors()}; "
                    f"{fallback} keeps serving"
                )
            if sum(1 for w in workers if w.seq >= seq) >= expected:
                return
            if not self._alive(run):
                raise TargetError(f"{what}: the server process died:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TargetError(
                    f"{what}: workers did not apply the new routes in {SWITCH_TIMEOUT:.0f} s"
                )
            time.sleep(0.02)

    def _applied(self, seq: int, version: str, expected: int) -> bool:
        workers = [w for w in self._workers() if w.seq >= seq]
        return len(workers) >= expected and all(w.live == version for w in workers)

    def _canary_step(
        self, plan: RolloutPlan, old: str, percent: int, progress: Progress
    ) -> dict[str, Any]:
        settings = plan.spec.rollout
        self._switch(
            live=old,
            canary=plan.version,
            weight=percent / 100,
            keep=[],
            what="canary",
            fallback=old,
        )
        progress(
            f"canary {percent}% of traffic to {plan.version}; watching {settings.window_s:g} s"
        )
        before = self._snapshot()
        end = time.monotonic() + settings.window_s
        while time.monotonic() < end:
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            if plan.watch:
                now = self._snapshot()
                progress(
                    "  "
                    + "  ".join(
                        f"{label} {describe(window(before, now, v))}"
                        for label, v in (("live", old), ("canary", plan.version))
                    )
                )
        self.files.reports_after(time.time())  # counters up to the window's end
        after = self._snapshot()
        live_w, new_w = window(before, after, old), window(before, after, plan.version)
        verdict = judge(live_w, new_w, settings, plan.slo.p99_ms)
        progress(f"  {percent}%: live {describe(live_w)}; canary {describe(new_w)} → {verdict}")
        return {
            "percent": percent,
            "live": live_w.to_dict(),
            "canary": new_w.to_dict(),
            "verdict": verdict,
            "breach": verdict.startswith("breach"),
        }

    def _snapshot(self) -> dict[int, dict[str, Counters]]:
        return {w.pid: w.counters for w in self._workers()}

    # --- stopping ------------------------------------------------------------------------------

    def stop(self) -> None:
        run = self._run()
        if run is not None and self._alive(run):
            self._kill(run)
        for path in (self.files.run, self.files.server, self.files.routes):
            path.unlink(missing_ok=True)
        self.files.clear_statuses()

    def _kill(self, run: ServerRecord) -> None:
        """SIGTERM the server's process group (in-flight requests finish), SIGKILL after
        STOP_TIMEOUT."""
        pid = run.pid
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            if not self._alive(run):
                return
            time.sleep(0.05)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            return

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "  (no server log)"
        return "\n".join(f"  {line}" for line in text.splitlines()[-lines:])


class CanaryBreach(TargetError):
    """A canary step breached: traffic went back to the live version."""

    def __init__(self, plan: RolloutPlan, percent: int, window: dict[str, Any]) -> None:
        super().__init__(
            f"canary of {plan.name} {plan.version} in {plan.env} breached at {percent}%: "
            f"{window['verdict']}; all traffic is back on the live version"
        )
        self.window = window


def _step(
    name: str, started: float, note: str, data: dict[str, Any] | None = None
) -> dict[str, Any]:
    step = Step(name, time.perf_counter() - started, note).to_dict()
    if data:
        step["canary"] = data
    return step


def _check_port_free(host: str, port: int) -> None:
    """Refuse to start where another process already listens: its health answers would pass
    for the new server's."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            from cpmai.bench.resources import pid_listening_on

            owner = pid_listening_on(port)
            who = f" by process {owner}" + _command_of(owner) if owner else ""
            raise TargetError(
                f"cannot start a server on {host}:{port}: {exc.strerror or exc}{who}",
                hint="stop that process, or give the environment another port: in the manifest",
            ) from None


def _command_of(pid: int) -> str:
    import psutil

    try:
        return f" ({' '.join(psutil.Process(pid).cmdline())[:120]})"
    except psutil.Error:
        return ""


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()
