"""`cpmai versions` and `cpmai history`: what the ledger knows about a model.

These read only the ledger (no pandas, no scikit-learn): they must start fast.
"""

from typing import Annotated, Any

import typer

from cpmai.cli.options import JsonFlag, argument
from cpmai.cli.output import OPTIONS, emit_json, show, table, wants_json, warn


def _read() -> Any:
    from cpmai.ledger import Ledger
    from cpmai.settings import resolve_home

    ledger = Ledger(resolve_home(OPTIONS.home))
    read = ledger.trusted()
    if read.torn:
        warn(read.torn.describe(ledger.path) + "; run `cpmai ledger repair`")
    return read


def versions(
    name: Annotated[str | None, argument("Model name (omit to list every model).")] = None,
    json_: JsonFlag = False,
) -> None:
    """List the packaged versions of a model: version, digest, when, by whom, format, size."""
    from cpmai.errors import UsageError
    from cpmai.replay import replay
    from cpmai.versioning import version_key

    state = replay(_read().events)
    if name is None:
        rows = [
            {
                "name": n,
                "versions": len(state.versions[n]),
                "latest": max(state.versions[n], key=version_key),
            }
            for n in state.names()
        ]
        if wants_json(json_):
            emit_json({"models": rows})
            return
        if not rows:
            show("no models packaged yet (run `cpmai package MANIFEST`)")
            return
        table(
            ["MODEL", "VERSIONS", "LATEST"], ([m["name"], m["versions"], m["latest"]] for m in rows)
        )
        return
    records = state.versions_of(name)
    if not records:
        known = ", ".join(state.names()) or "none yet"
        raise UsageError(f"no model named {name!r} has been packaged (packaged: {known})")
    records.sort(key=lambda r: version_key(r.version))
    data: list[dict[str, Any]] = [
        {
            "version": r.version,
            "digest": r.digest,
            "packaged_at": r.time,
            "actor": r.actor,
            "format": r.details.get("format"),
            "size_bytes": r.details.get("size_bytes"),
        }
        for r in records
    ]
    if wants_json(json_):
        emit_json({"name": name, "versions": data})
        return
    table(
        ["VERSION", "DIGEST", "PACKAGED (UTC)", "BY", "FORMAT", "SIZE"],
        (
            [
                r["version"],
                r["digest"][:12],
                _short_time(r["packaged_at"]),
                r["actor"],
                r["format"],
                _kb(r["size_bytes"]),
            ]
            for r in data
        ),
    )


def history(
    name: Annotated[str, argument("Model name.")],
    limit: Annotated[int, typer.Option(help="Show only the last N events (0: all).", min=0)] = 0,
    json_: JsonFlag = False,
) -> None:
    """The ledger's events for a model, oldest first: who did what, when, to which version."""
    from cpmai.errors import UsageError

    events = [e for e in _read().events if e.name == name]
    if not events:
        raise UsageError(f"the ledger has no events for {name!r}")
    if limit:
        events = events[-limit:]
    if wants_json(json_):
        emit_json({"name": name, "events": [e.to_dict() for e in events]})
        return
    table(
        ["SEQ", "TIME (UTC)", "ACTOR", "ACTION", "VERSION", "ENV", "DETAILS"],
        (
            [
                e.seq,
                _short_time(e.time),
                e.actor,
                e.action,
                e.version or "-",
                e.env or "-",
                _summary(e.details),
            ]
            for e in events
        ),
    )


def _short_time(iso: str) -> str:
    return iso[:19].replace("T", " ")


def _kb(size: Any) -> str:
    return f"{size / 1000:,.1f} kB" if isinstance(size, int | float) else ""


def _summary(details: dict[str, Any]) -> str:
    parts = []
    for key, value in details.items():
        if key in ("source", "files") or value is None or isinstance(value, dict | list):
            continue  # nested results are in `history --json`
        text = value[:12] if key == "digest" and isinstance(value, str) else value
        parts.append(f"{key}={text}")
    return " ".join(parts)
