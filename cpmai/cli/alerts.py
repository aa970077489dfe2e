"""`cpmai alerts NAME`, `cpmai alerts test`, `cpmai alerts silence`, `cpmai alerts expire`."""

from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from cpmai.cli.options import JsonFlag, argument, option
from cpmai.cli.output import OPTIONS, emit_json, show, table, wants_json, warn

if TYPE_CHECKING:
    from cpmai.watch.view import AlertsView


class _ShowByDefault(TyperGroup):
    """`cpmai alerts NAME` is `cpmai alerts show NAME`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["show", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_ShowByDefault,
    help="Alerts the watcher sends (monitoring.schedule, monitoring.alerts): what fires, what "
    "fired, silences, and a test through every channel. `cpmai alerts NAME` lists them.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

EnvOption = Annotated[str, option("The environment.", "--env", "-e")]


@app.command()
def show_(
    name: Annotated[str, argument("Model name.")],
    env: Annotated[str | None, option("Only this environment.", "--env", "-e")] = None,
    last: Annotated[int, option("How many recent events to show.", "--last")] = 10,
    json_: JsonFlag = False,
) -> None:
    """Firing alerts, silences in force, recent events and deliveries, per environment.

    Exit 0 whatever fires (a CI gate on alerts is `cpmai monitor`); the JSON is schema
    cpmai-alerts/1."""
    from cpmai.settings import resolve_home
    from cpmai.watch.view import view

    result = view(resolve_home(OPTIONS.home), name, env, limit=max(0, last))
    if wants_json(json_):
        emit_json(result.to_json())
        return
    _render(result)


show_.__name__ = "show"


def _render(result: "AlertsView") -> None:
    if not result.environments:
        show(f"{result.name} has no environment yet")
    for each in result.environments:
        watcher = each.watcher
        state = watcher["state"]
        head = f"[bold]{result.name} {each.env}[/bold]: watcher {state}"
        if state != "stopped":
            head += f" (pid {watcher['pid']}, every {watcher['every']}"
            head += f", last check {watcher['last_check'][:19]}Z)" if watcher["last_check"] else ")"
        show(head)
        if state == "down":
            warn(f"  {watcher['detail']}")
        if each.firing:
            table(
                ["KEY", "VERSION", "SINCE", "CHECKS", "SUMMARY"],
                (
                    [
                        a.key + (" (silenced)" if a.silenced_by else ""),
                        a.version or "-",
                        a.started_at[:19] + "Z",
                        str(a.checks),
                        a.summary,
                    ]
                    for a in each.firing
                ),
            )
        else:
            show("  nothing firing")
        for silence in each.silences:
            what = silence.kind or "every kind"
            what += f"/{silence.feature}" if silence.feature else ""
            show(f"  silence {silence.id}: {what} until {silence.until} by {silence.actor} — "
                 f"{silence.reason}")  # fmt: skip
        for event in each.events:
            show("  " + _event_line(event))
        if each.pending_deliveries:
            show(f"  {each.pending_deliveries} deliveries waiting for a retry")
        if each.failed_deliveries:
            warn(f"  {each.failed_deliveries} deliveries given up after their retries "
                 f"(see the events above, or --json)")  # fmt: skip


def _event_line(event: dict[str, Any]) -> str:
    at = str(event.get("at", ""))[:19]
    kind = event.get("type")
    if kind == "delivery":
        outcome = "sent" if event.get("ok") else f"failed ({event.get('error')})"
        retry = "" if event.get("ok") or event.get("final") else ", will retry"
        return (
            f"{at}  delivery #{event.get('attempt')} via {event.get('channel')}: {outcome}{retry}"
        )
    if kind == "silenced":
        return f"{at}  held back by silence {event.get('silence')}: {event.get('summary')}"
    if kind == "unreadable":
        return f"{event.get('lines')} unreadable line(s) in alerts.jsonl"
    sent = "" if event.get("sent", True) else " (not sent)"
    return f"{at}  {str(event.get('event', '?')).upper()}{sent} {event.get('key')}: " + str(
        event.get("summary")
    )


@app.command()
def test(
    name: Annotated[str, argument("Model name.")],
    env: Annotated[
        str | None, option("The environment (needed when the model has several).", "--env", "-e")
    ] = None,
    json_: JsonFlag = False,
) -> None:
    """Send a test message through every channel of the live version's monitoring.alerts,
    once each, now.

    Exit 6 when a channel fails (each failure named)."""
    from cpmai.errors import TargetError
    from cpmai.settings import resolve_home
    from cpmai.watch.view import only_env, send_test

    home = resolve_home(OPTIONS.home)
    env = only_env(home, name, env)
    results = send_test(home, name, env)
    failed = [r for r in results if not r.ok]
    if wants_json(json_):
        emit_json({"name": name, "env": env, "channels": [r.to_json() for r in results]})
    else:
        for r in results:
            show(f"{'✓' if r.ok else '✗'} {r.channel}  {r.seconds:.2f} s" + (
                f"  {r.error}" if r.error else ""))  # fmt: skip
    if failed:
        raise TargetError(f"{len(failed)} of {len(results)} channel(s) failed: "
                          + "; ".join(f"{r.channel}: {r.error}" for r in failed))  # fmt: skip


@app.command()
def silence(
    name: Annotated[str, argument("Model name.")],
    env: EnvOption,
    for_: Annotated[str, option("How long, e.g. 30m, 2h, 1d (at most 90d).", "--for")],
    reason: Annotated[str, option("Why (recorded in the ledger).", "--reason")],
    kind: Annotated[
        str | None,
        option("Only alerts of this kind (drift, quality, slo, errors, age, check).", "--kind"),
    ] = None,
    feature: Annotated[
        str | None, option("Only alerts about this feature or metric.", "--feature")
    ] = None,
    json_: JsonFlag = False,
) -> None:
    """Hold back alerts of an environment (of one kind, about one feature) for a while:
    they are still checked and kept, not sent. Recorded in the ledger; ends by itself, or
    with `cpmai alerts expire`."""
    from cpmai.settings import resolve_actor, resolve_home
    from cpmai.watch.view import silence as record

    done = record(
        resolve_home(OPTIONS.home), name, env, duration=for_, reason=reason,
        actor=resolve_actor(OPTIONS.actor), kind=kind, feature=feature,
    )  # fmt: skip
    if wants_json(json_):
        emit_json(done.to_json())
    else:
        what = (kind or "all alerts") + (f"/{feature}" if feature else "")
        show(f"silence {done.id}: {what} of {name} in {env} held back until {done.until}")


@app.command()
def expire(
    name: Annotated[str, argument("Model name.")],
    silence_id: Annotated[str, argument("The silence's id (s-…).")],
    env: EnvOption,
) -> None:
    """End a silence now (recorded in the ledger)."""
    from cpmai.settings import resolve_actor, resolve_home
    from cpmai.watch.view import expire as end

    end(resolve_home(OPTIONS.home), name, env, silence_id, actor=resolve_actor(OPTIONS.actor))
    show(f"silence {silence_id} ended")
