"""`cpmai ledger verify` and `cpmai ledger repair`."""

from typing import Annotated

import typer

from cpmai.cli.options import JsonFlag, flag, option
from cpmai.cli.output import OPTIONS, emit_json, info, show, wants_json

app = typer.Typer(
    help="Check and mend the ledger (ledger.jsonl).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@app.command()
def verify(
    expect_head: Annotated[
        str | None,
        option(
            "A head pinned earlier (`cpmai ledger head`, SEQ:HASH or HASH): fail unless "
            "it is still an event of the chain.",
            "--expect-head",
        ),
    ] = None,
    json_: JsonFlag = False,
) -> None:
    """Re-hash the whole chain and every recorded artifact's files; check the head file and
    that every artifact on disk is recorded.

    Exit 5 naming the line or file when anything was edited, removed or torn.
    """
    from cpmai.errors import IntegrityError
    from cpmai.integrity import verify as check
    from cpmai.settings import resolve_home

    report = check(resolve_home(OPTIONS.home), expect_head=expect_head)
    if wants_json(json_):
        emit_json(report.to_dict())
    elif report.ok:
        show(
            f"✓ ledger intact: {report.chain.events} events, "
            f"{report.artifacts_checked} artifacts verified"
        )
    if not report.ok:
        problems = report.problems
        raise IntegrityError(
            f"ledger verification failed ({len(problems)} problem{'s' * (len(problems) > 1)}):\n"
            + "\n".join(f"  {p}" for p in problems),
            hint="`cpmai ledger repair` moves a torn last line aside; other damage needs a backup"
            if report.chain.torn
            else None,
        )


@app.command()
def head(json_: JsonFlag = False) -> None:
    """Print the last event's SEQ:HASH, after checking the chain: pin it outside this machine
    (a CI log, a commit) and check it later with `cpmai ledger verify --expect-head`."""
    from cpmai.ledger import Ledger
    from cpmai.settings import resolve_home

    found = Ledger(resolve_home(OPTIONS.home)).head()
    if wants_json(json_):
        emit_json({"seq": found[0], "hash": found[1]} if found else {"seq": 0, "hash": None})
    else:
        show(f"{found[0]}:{found[1]}" if found else "the ledger is empty")


@app.command()
def repair(
    yes: Annotated[bool, flag("--yes", "Do not ask for confirmation.")] = False,
    json_: JsonFlag = False,
) -> None:
    """Move an incomplete last line (an interrupted write) aside and record that in the ledger.

    The torn bytes are kept in ledger.torn-TIME next to the ledger. Nothing else is changed:
    an edited or removed line cannot be repaired, only reported by `verify`.
    """
    from cpmai.ledger import Ledger
    from cpmai.settings import resolve_actor, resolve_home

    ledger = Ledger(resolve_home(OPTIONS.home))
    torn = ledger.read().torn
    if torn is None:
        if wants_json(json_):
            emit_json({"repaired": False, "reason": "no torn tail"})
        else:
            show("nothing to repair: the ledger ends with a complete line")
        return
    info(torn.describe(ledger.path))
    if not yes and not wants_json(json_):
        typer.confirm("move it aside and record a repair event?", abort=True, err=True)
    done = ledger.repair(actor=resolve_actor(OPTIONS.actor))
    if wants_json(json_):
        emit_json({"repaired": done is not None, "line": torn.line, "bytes": torn.size})
    else:
        show(f"repaired: moved {torn.size} bytes of line {torn.line} aside")
