"""`cpmai deploy`, `promote`, `rollback`, `stop`, `approve`: putting versions live, recorded."""

from typing import Annotated, Any

import typer

from cpmai.cli.options import JsonFlag, ManifestArg, argument, flag, option
from cpmai.cli.output import OPTIONS, emit_json, info, show, wants_json

EnvOpt = Annotated[
    str, typer.Option("--env", "-e", help="The environment (as named in the manifest).")
]
ReasonOpt = Annotated[str | None, option("Why, for the ledger.", "--reason")]
WatchOpt = Annotated[bool, flag("--watch", "Show a canary's figures every second while it runs.")]
NameArg = Annotated[str, argument("Model name.")]
VersionArg = Annotated[str, argument("Version (e.g. 1.2.0).")]


def _context() -> tuple[Any, str]:
    from cpmai.settings import resolve_actor, resolve_home

    return resolve_home(OPTIONS.home), resolve_actor(OPTIONS.actor)


def _render(result: Any, json_: bool) -> None:
    from rich.markup import escape

    if wants_json(json_):
        emit_json(result.to_dict())
        return
    verb = {"deploy": "deployed", "promote": "promoted", "rollback": "rolled back to"}[
        result.action
    ]
    where = result.url or ""
    applied = next((s["note"] for s in result.steps if s.get("step") == "apply"), None)
    if applied:  # a render or edge target: files written, the platform applies them
        verb = {"deploy": "rendered", "promote": "rendered", "rollback": "rendered (rollback)"}[
            result.action
        ]
        where = f"→ {escape(applied)}"
    if not result.changed:
        show(
            f"[bold]{result.name} {result.version}[/bold] was already live in {result.env}  {where}"
        )
        return
    before = f" (was {result.previous})" if result.previous else ""
    show(
        f"{verb} [bold]{result.name} {result.version}[/bold] in {result.env}{before}  "
        f"{result.seconds:.1f} s  {where}"
    )


def deploy(
    manifest: ManifestArg,
    env: EnvOpt,
    reason: ReasonOpt = None,
    watch: WatchOpt = False,
    dry_run: Annotated[
        bool,
        flag(
            "--dry-run",
            "Package and run every gate ENV would run, record the result, and stop there: "
            "nothing is rolled out (exit 0 or 3). For pull requests.",
        ),
    ] = False,
    without_approvals: Annotated[
        bool,
        flag(
            "--without-approvals",
            "With --dry-run: leave out the approvals gate (a pull request is checked before "
            "anyone approves it).",
        ),
    ] = False,
    json_: JsonFlag = False,
) -> None:
    """Package, check the gates, record the decision and roll the version out on the
    environment's target; wait until it is healthy and record the result.

    A failed gate exits 3 and changes nothing; a target that cannot get the version healthy (or a
    canary that breaches) exits 6 with the previous version still live. With --dry-run, the
    gates are run and recorded and nothing else happens.
    """
    from cpmai.manifest_file import load_manifest

    home, actor = _context()
    if without_approvals and not dry_run:
        from cpmai.errors import UsageError

        raise UsageError("--without-approvals goes with --dry-run: a rollout needs its approvals")
    if dry_run:
        from cpmai.lifecycle import dry_run as check

        if reason is not None or watch:
            from cpmai.errors import UsageError

            raise UsageError("--dry-run rolls nothing out: it takes neither --reason nor --watch")
        checked = check(
            load_manifest(manifest),
            home,
            env,
            actor=actor,
            approvals=not without_approvals,
            progress=info,
        )
        if wants_json(json_):
            emit_json(checked.to_dict())
        else:
            show(
                f"[bold]{checked.name} {checked.version}[/bold] passes {checked.env}'s gates  "
                f"{checked.seconds:.1f} s  (dry run: nothing rolled out"
                + ("; approvals not checked)" if without_approvals else ")")
            )
        return
    from cpmai.lifecycle import deploy as run

    result = run(
        load_manifest(manifest), home, env, actor=actor, reason=reason, watch=watch, progress=info
    )
    _render(result, json_)


def promote(
    name: NameArg,
    version: VersionArg,
    env: EnvOpt,
    reason: ReasonOpt = None,
    watch: WatchOpt = False,
    json_: JsonFlag = False,
) -> None:
    """Roll an already packaged version out to an environment (its gates are checked again for
    that environment: approvals, metrics, latency, size)."""
    from cpmai.lifecycle import promote as run

    home, actor = _context()
    result = run(home, name, version, env, actor=actor, reason=reason, watch=watch, progress=info)
    _render(result, json_)


def rollback(
    name: NameArg,
    env: EnvOpt,
    to: Annotated[
        str | None, option("The version to return to (default: the previous good one).", "--to")
    ] = None,
    reason: ReasonOpt = None,
    json_: JsonFlag = False,
) -> None:
    """Go back to the previous good version (or --to VERSION, which must have been live there)
    at once, without re-running gates. Recorded with who and why."""
    from cpmai.lifecycle import rollback as run

    home, actor = _context()
    _render(run(home, name, env, actor=actor, to=to, reason=reason, progress=info), json_)


def stop(name: NameArg, env: EnvOpt, reason: ReasonOpt = None, json_: JsonFlag = False) -> None:
    """Stop what serves NAME in ENV (in-flight requests finish) and record it."""
    from cpmai.lifecycle import stop as run

    home, actor = _context()
    recorded = run(home, name, env, actor=actor, reason=reason)
    if wants_json(json_):
        emit_json({"name": name, "env": env, "stopped": recorded})
        return
    show(f"stopped {name} in {env}" if recorded else f"nothing was running for {name} in {env}")


def approve(
    name: NameArg,
    version: VersionArg,
    env: EnvOpt,
    note: Annotated[str | None, option("What you checked.", "--note")] = None,
    json_: JsonFlag = False,
) -> None:
    """Approve VERSION for ENV. Only the environment's `approvers:` may (others are refused,
    exit 3, and the refusal is recorded); the deployer's own approval does not count."""
    from cpmai.lifecycle import approve as run

    home, actor = _context()
    result = run(home, name, version, env, actor=actor, note=note)
    if wants_json(json_):
        emit_json(result)
        return
    count = len(result["approvers"])
    show(
        f"approved {name} {version} for {env} as {actor} "
        f"({count} of {result['needed']} needed: {', '.join(result['approvers'])})"
    )
