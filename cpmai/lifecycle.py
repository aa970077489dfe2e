"""Deploy, promote, rollback, stop, approve and status: one story from artifact to live version.

deploy = package (or reuse the identical artifact) → verify → gates → ledger (`gate`) → roll out
on the environment's target → wait until healthy → ledger (`deploy`, result live or failed).
promote = the same from an already packaged version. rollback = back to the previous good (or a
named) version, without gates. Every decision is recorded, pass or fail, with who and why.

A rollout of one environment holds `runs/NAME/ENV/rollout.lock` from the gates to the last
ledger event, so two deploys of the same environment run one after the other and the ledger
always agrees with what runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpmai.errors import CpmaiError, GateError, TargetError, UsageError
from cpmai.guards import env_lock, signals_interrupt
from cpmai.home import Home
from cpmai.ledger import Ledger
from cpmai.replay import LIVE_ACTIONS, replay, target_kind
from cpmai.steps import StepLog
from cpmai.targets import RolloutPlan, get_target

if TYPE_CHECKING:
    from cpmai.artifacts import Artifact, PackageResult
    from cpmai.gates import GateReport
    from cpmai.manifest import Manifest

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass
class LiveResult:
    """What a deploy, promote or rollback did."""

    action: str
    name: str
    env: str
    version: str
    previous: str | None
    url: str | None
    target: str
    pid: int | None = None
    changed: bool = True
    gates: dict[str, Any] | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class GateCheck:
    """What `deploy --dry-run` found: whether the version would pass the environment's gates."""

    name: str
    env: str
    version: str
    passed: bool
    gates: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    action: str = "dry-run"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _env_spec(manifest: Manifest, env: str) -> Any:
    if env not in manifest.environments:
        known = ", ".join(manifest.environments) or "none defined"
        raise UsageError(f"{manifest.name} has no environment {env!r} (environments: {known})")
    return manifest.environments[env]


def deploy(
    manifest: Manifest,
    home: Path,
    env: str,
    *,
    actor: str,
    reason: str | None = None,
    watch: bool = False,
    progress: Progress = _quiet,
) -> LiveResult:
    """Package `manifest` (or reuse the identical artifact) and put it live in `env`."""
    log = StepLog()
    started = time.perf_counter()
    packaged = _package(manifest, home, env, actor, progress, log)
    result = _go_live(
        home, packaged.name, packaged.version, env, "deploy", actor, reason, watch, progress
    )
    result.steps = [s.to_dict() for s in log.steps] + result.steps
    result.seconds = time.perf_counter() - started
    return result


def _package(
    manifest: Manifest, home: Path, env: str, actor: str, progress: Progress, log: StepLog
) -> PackageResult:
    """The first step of deploy and dry run: `env` checked, then package (or reuse)."""
    from cpmai.artifacts import package

    _env_spec(manifest, env)
    with log.step("package") as step:
        packaged = package(manifest, home, actor=actor)
        step.note = f"{packaged.version} ({'new' if packaged.created else 'unchanged'})"
    progress(f"package  {packaged.name} {packaged.version}  {step.seconds:.2f} s  {step.note}")
    note = packaged.runtime_note
    if note:
        progress(note)
    return packaged


def dry_run(
    manifest: Manifest,
    home: Path,
    env: str,
    *,
    actor: str,
    approvals: bool = True,
    progress: Progress = _quiet,
) -> GateCheck:
    """Package `manifest` (or reuse the identical artifact) and run every gate `env` would run
    (approvals only if `approvals`), recording the result as a `gate` event (`for: dry-run`),
    without touching the target: no server, no run folder, no lock. Raises GateError (exit 3)
    when a gate fails."""
    from cpmai.artifacts import open_artifact

    log = StepLog()
    started = time.perf_counter()
    packaged = _package(manifest, home, env, actor, progress, log)
    with log.step("verify") as step:
        artifact = open_artifact(home, packaged.name, packaged.version)
        step.note = f"sha256:{artifact.digest[:12]}"
    report = _gates(
        home, artifact, artifact.manifest(), env, "dry-run", actor, progress, log, approvals
    )
    return GateCheck(
        name=artifact.name,
        env=env,
        version=artifact.version,
        passed=report.passed,
        gates=report.to_dict(),
        steps=[s.to_dict() for s in log.steps],
        seconds=time.perf_counter() - started,
    )


def promote(
    home: Path,
    name: str,
    version: str,
    env: str,
    *,
    actor: str,
    reason: str | None = None,
    watch: bool = False,
    progress: Progress = _quiet,
) -> LiveResult:
    """Put an already packaged version live in `env` (its gates checked for `env` again)."""
    started = time.perf_counter()
    result = _go_live(home, name, version, env, "promote", actor, reason, watch, progress)
    result.seconds = time.perf_counter() - started
    return result


def _go_live(
    home: Path,
    name: str,
    version: str,
    env: str,
    action: str,
    actor: str,
    reason: str | None,
    watch: bool,
    progress: Progress,
) -> LiveResult:
    from cpmai.artifacts import open_artifact

    log = StepLog()
    with env_lock(home, name, env, progress):
        reconcile(home, name, env, actor=actor, progress=progress)
        with log.step("verify") as step:
            artifact = open_artifact(home, name, version)
            manifest = artifact.manifest()
            spec = _env_spec(manifest, env)
            step.note = f"sha256:{artifact.digest[:12]}"
        target = get_target(spec.target, home, name, env)
        preflight = getattr(target, "preflight", None)
        if preflight is not None:  # e.g. a missing extra: refused before the gates
            preflight()
        key = _signer(home, manifest, env, actor)
        report = _gates(home, artifact, manifest, env, action, actor, progress, log)
        result = _roll_out(
            home, artifact, manifest, spec, env, action, actor, reason, watch, progress, log, key
        )
        result.gates = report.to_dict()
        return result


ENDS = (*LIVE_ACTIONS, "stop", "interrupted")


def reconcile(home: Path, name: str, env: str, *, actor: str, progress: Progress) -> None:
    """If the last rollout of `env` recorded its intent and never its end (the command was
    killed), record it as `interrupted`, with what actually runs there now (found from the run
    folder, not from the ledger): the command that called this then stops or adopts it."""
    ledger = Ledger(home)
    events = ledger.events()
    last = None
    for event in events:
        if event.name == name and event.env == env and event.action in (*ENDS, "intent"):
            last = event
    if last is None or last.action != "intent":
        return
    state = replay(events)
    target = get_target(target_kind(state.env(name, env)), home, name, env)
    found = target.status()
    progress(
        f"the {last.details.get('for', 'rollout')} of {name} {last.version} to {env} (ledger "
        f"#{last.seq}) never finished; found: {found.state}"
        + (f", serving {found.live}" if found.live else "")
    )
    ledger.append(
        "interrupted",
        actor=actor,
        name=name,
        version=last.version,
        env=env,
        details={"intent": last.seq, "for": last.details.get("for"), "found": found.state,
                 "serving": found.live, "pid": found.pid},
    )  # fmt: skip


def _gates(
    home: Path,
    artifact: Artifact,
    manifest: Manifest,
    env: str,
    action: str,
    actor: str,
    progress: Progress,
    log: StepLog,
    approvals: bool = True,
) -> GateReport:
    """Run `env`'s gates on `artifact`, record the `gate` event (`for: action`); raise GateError
    (exit 3) when one fails."""
    from cpmai import gates

    ledger = Ledger(home)
    name, version = artifact.name, artifact.version
    state = replay(ledger.events())
    with log.step("gates") as step:
        report = gates.check(artifact, manifest, env, state, actor=actor, approvals=approvals)
        step.note = "passed" if report.passed else f"{len(report.failed)} failed"
    progress(f"gates    {step.seconds:.2f} s")
    for gate in report.results:
        progress(f"  {gate.describe()}")
    ledger.append(
        "gate",
        actor=actor,
        name=name,
        version=version,
        env=env,
        details={
            "for": action,
            **report.to_dict(),
            **({} if approvals else {"approvals": "not checked"}),
        },
    )
    if not report.passed:
        failed = "; ".join(g.describe().removeprefix("✗ ") for g in report.failed)
        raise GateError(
            f"{name} {version} may not go live in {env}: {failed}",
            hint=_gate_hint(report, name, version, env),
        )
    return report


def _signer(home: Path, manifest: Manifest, env: str, actor: str) -> Path | None:
    """The SSH key `actor`'s acts are signed with ($CPMAI_SIGNING_KEY), if set. Where `env`
    requires signed acts (`governance.require_signatures`), GateError (exit 3) unless the key
    is set and the allowed-signers file lets it sign as `actor` (checked on a probe signature
    before anything is done)."""
    from cpmai import signatures
    from cpmai.ledger import now_iso

    key = signatures.signing_key()
    if env not in manifest.governance.require_signatures:
        return key
    if key is None:
        raise GateError(
            f"{env} requires signed acts: set ${signatures.KEY_ENV} to your SSH key",
            hint="a private key file, or a public key whose private half is in ssh-agent",
        )
    signers = signatures.signers_file(home)
    if signers is None:
        raise GateError(
            f"{env} requires signed acts, and there is no allowed-signers file "
            f"({Home(home).signers} or ${signatures.SIGNERS_ENV})"
        )
    probe: dict[str, Any] = {"seq": 0, "time": now_iso(), "actor": actor, "action": "probe",
                             "name": manifest.name, "version": None, "env": env, "details": {},
                             "prev": ""}  # fmt: skip
    probe["details"]["signature"] = signatures.sign(probe, key)
    if signatures.verify(probe, signers) is not None:
        raise GateError(
            f"{key} may not sign as {actor}: {signers} allows it no principal of that name",
            hint="sign with your own key, as the actor you are (--actor / $CPMAI_ACTOR)",
        )
    return key


def _gate_hint(report: GateReport, name: str, version: str, env: str) -> str | None:
    if any(g.gate == "approvals" for g in report.failed):
        return f"ask an approver to run `cpmai approve {name} {version} --env {env}`"
    return None


def _roll_out(
    home: Path,
    artifact: Artifact,
    manifest: Manifest,
    spec: Any,
    env: str,
    action: str,
    actor: str,
    reason: str | None,
    watch: bool,
    progress: Progress,
    log: StepLog,
    key: Path | None = None,
    evidence: dict[str, Any] | None = None,
) -> LiveResult:
    """`key`: the SSH key the rollout's final event is signed with (`_signer`)."""
    name, version = artifact.name, artifact.version
    target = get_target(spec.target, home, name, env)
    plan = RolloutPlan(
        name=name,
        env=env,
        version=version,
        spec=spec,
        slo=manifest.slo,
        canary=action != "rollback" and spec.rollout.strategy == "canary",
        watch=watch,
        timeouts=(manifest.serving.header_timeout_s, manifest.serving.body_timeout_s),
    )
    ledger = Ledger(home)
    base = {"target": spec.target, "reason": reason, "strategy": spec.rollout.strategy}
    if evidence is not None:
        base["evidence"] = evidence
    started = time.perf_counter()

    def record(result: str, **details: Any) -> None:
        seconds = round(time.perf_counter() - started, 3)
        ledger.append(
            action,
            actor=actor,
            name=name,
            version=version,
            env=env,
            details={**base, "result": result, **details, "seconds": seconds},
            sign_with=key,
        )

    # the intent first: a rollout killed from here on (SIGKILL, a lost machine) is found and
    # recorded as interrupted by the next command on this environment (`reconcile`)
    ledger.append(
        "intent", actor=actor, name=name, version=version, env=env,
        details={"for": action, "target": spec.target, "strategy": spec.rollout.strategy},
    )  # fmt: skip
    try:
        with signals_interrupt():
            outcome = target.rollout(plan, progress)
    except KeyboardInterrupt:  # the target put the previous routing back before re-raising
        record("interrupted")
        raise
    except CpmaiError as exc:
        if not isinstance(exc, TargetError):  # e.g. a port already in use: still a failed rollout
            exc = TargetError(exc.message, hint=exc.hint)
        window = getattr(exc, "window", None)
        record("rolled-back" if window else "failed", error=exc.message, canary=window)
        raise exc from None
    except Exception as error:  # anything else: recorded as a failed rollout, exit 6
        record("failed", error=f"{type(error).__name__}: {error}")
        raise TargetError(
            f"the rollout of {name} {version} in {env} failed: {type(error).__name__}: {error}"
        ) from error
    changed = not any(s["step"] == "unchanged" for s in outcome.steps)
    progress(f"rollout  {time.perf_counter() - started:.2f} s  {outcome.url or ''}".rstrip())
    record(
        "live",
        previous=outcome.previous,
        url=outcome.url,
        pid=outcome.pid,
        changed=changed,
        steps=outcome.steps,
    )
    from cpmai.watch.process import watch_after_rollout

    watch_after_rollout(home, name, env, manifest, spec.target, progress)
    return LiveResult(
        action=action,
        name=name,
        env=env,
        version=version,
        previous=outcome.previous,
        url=outcome.url,
        target=spec.target,
        pid=outcome.pid,
        changed=changed,
        steps=[s.to_dict() for s in log.steps] + outcome.steps,
    )


def rollback(
    home: Path,
    name: str,
    env: str,
    *,
    actor: str,
    to: str | None = None,
    reason: str | None = None,
    progress: Progress = _quiet,
    evidence: dict[str, Any] | None = None,
    expect: str | None = None,
) -> LiveResult:
    """Go back to the previous good version in `env` (or `to`), without gates. `evidence`
    (an automatic rollback's: what the watcher's checks found) is recorded with it; `expect`:
    only when that version is still the live one once the environment's lock is held (the
    watcher judged it; a rollout may have replaced it while the lock was waited for)."""
    from cpmai.artifacts import open_artifact

    started = time.perf_counter()
    log = StepLog()
    with env_lock(home, name, env, progress):
        reconcile(home, name, env, actor=actor, progress=progress)
        state = replay(Ledger(home).events())
        env_state = state.env(name, env)
        live = env_state.live.version if env_state.live else None
        if expect is not None and live != expect:
            raise UsageError(
                f"{name} {expect} is no longer live in {env} ({live or 'nothing'} is): "
                "not rolled back"
            )
        if to is None:
            previous = env_state.previous_good()
            if previous is None:
                raise UsageError(
                    f"{name} has no earlier good version in {env} to roll back to",
                    hint="name one with --to VERSION, or use `cpmai promote`",
                )
            to = previous.version
        elif to not in {r.version for r in env_state.history}:
            raise UsageError(
                f"{name} {to} was never live in {env}: a rollback only returns to a version "
                "that was",
                hint=f"use `cpmai promote {name} {to} --env {env}` (it runs the gates)",
            )
        with log.step("verify") as step:
            artifact = open_artifact(home, name, to)
            manifest = artifact.manifest()
            step.note = f"sha256:{artifact.digest[:12]}"
        spec = _env_spec(manifest, env)
        key = _signer(home, manifest, env, actor)
        result = _roll_out(
            home, artifact, manifest, spec, env, "rollback", actor, reason, False, progress, log,
            key, evidence,
        )  # fmt: skip
    result.seconds = time.perf_counter() - started
    return result


def stop(home: Path, name: str, env: str, *, actor: str, reason: str | None = None) -> bool:
    """Stop what runs in `env` and record it. Returns False when nothing was recorded live."""
    with env_lock(home, name, env, _quiet):
        reconcile(home, name, env, actor=actor, progress=_quiet)
        state = replay(Ledger(home).events())
        env_state = state.env(name, env)
        kind = target_kind(env_state)
        target = get_target(kind, home, name, env)
        before = target.status()
        from cpmai.watch.process import stop_watcher

        stop_watcher(home, name, env)
        target.stop()
        if env_state.live is None and before.state == "stopped":
            return False
        Ledger(home).append(
            "stop",
            actor=actor,
            name=name,
            version=env_state.live.version if env_state.live else None,
            env=env,
            details={"reason": reason, "was": before.state, "target": kind},
        )
        return True


def approve(
    home: Path, name: str, version: str, env: str, *, actor: str, note: str | None = None
) -> dict[str, Any]:
    """Record `actor`'s approval of `version` for `env`. A refusal (not an approver) is recorded
    too, then raised as GateError."""
    from cpmai import gates
    from cpmai.artifacts import open_artifact

    artifact = open_artifact(home, name, version)
    manifest = artifact.manifest()
    _env_spec(manifest, env)
    ledger = Ledger(home)
    if not gates.may_approve(manifest, env, actor):
        patterns = ", ".join(manifest.environments[env].approvers)
        ledger.append(
            "approval-refused",
            actor=actor,
            name=name,
            version=version,
            env=env,
            details={"note": note, "approvers": manifest.environments[env].approvers},
        )
        raise GateError(
            f"{actor} may not approve for {env} (approvers: {patterns}); the refusal is recorded"
        )
    key = _signer(home, manifest, env, actor)
    event = ledger.append(
        "approve", actor=actor, name=name, version=version, env=env, details={"note": note},
        sign_with=key,
    )  # fmt: skip
    state = replay(ledger.events())
    needed = manifest.gates.approvals.get(env, 0)
    return {
        "name": name,
        "version": version,
        "env": env,
        "actor": actor,
        "seq": event.seq,
        "approvers": state.approvers(name, version, env),
        "needed": needed,
    }
