"""`cpmai kpi record` and `cpmai kpi list`: business KPIs, kept in the ledger."""

from typing import Annotated

import typer

from cpmai.cli.options import JsonFlag, argument, option
from cpmai.cli.output import OPTIONS, emit_json, info, table, wants_json

app = typer.Typer(
    help="Business KPIs recorded against a model (kept in the ledger; `business.value_kpi` "
    "makes one the value ROI counts).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@app.command("record")
def record(
    name: Annotated[str, argument("Model name.")],
    metric: Annotated[str, argument("KPI name, e.g. retained_revenue.")],
    value: Annotated[float, argument("The measured value.")],
    at: Annotated[
        str | None, option("When the value holds: ISO time or age (default: now).")
    ] = None,
    note: Annotated[str, typer.Option(help="Where the figure comes from.")] = "",
    json_: JsonFlag = False,
) -> None:
    """Record a KPI value for a model (a `kpi` event in the ledger: who, when, how much)."""
    import time

    from cpmai import kpi
    from cpmai.clock import parse_moment
    from cpmai.settings import resolve_actor, resolve_home

    moment = parse_moment(at, now=time.time()) if at else None
    saved = kpi.record(
        resolve_home(OPTIONS.home),
        name,
        metric,
        value,
        actor=resolve_actor(OPTIONS.actor),
        at=moment,
        note=note,
    )
    if wants_json(json_):
        emit_json({"name": name, **saved.to_dict()})
    else:
        info(f"recorded {metric} = {value:g} for {name} at {saved.at} (ledger #{saved.seq})")


@app.command("list")
def list_(
    name: Annotated[str, argument("Model name.")],
    metric: Annotated[str | None, option("Only this KPI.")] = None,
    json_: JsonFlag = False,
) -> None:
    """The KPI values recorded for a model, in time order."""
    from cpmai import kpi
    from cpmai.ledger import Ledger
    from cpmai.settings import resolve_home

    records = kpi.read(Ledger(resolve_home(OPTIONS.home)).events(), name, metric)
    if wants_json(json_):
        emit_json([{"name": name, **r.to_dict()} for r in records])
        return
    if not records:
        info(f"no KPI recorded for {name} yet: `cpmai kpi record {name} METRIC VALUE`")
        return
    table(
        ("at", "metric", "value", "by", "note"),
        ((r.at, r.metric, f"{r.value:g}", r.actor, r.note) for r in records),
    )
