"""`cpmai status`: what is live where, now or at a past moment."""

from typing import Annotated, Any

from cpmai.cli.options import JsonFlag, argument, option
from cpmai.cli.output import OPTIONS, emit_json, show, table, wants_json, warn


def status(
    name: Annotated[str | None, argument("Model name (omit for every model).")] = None,
    at: Annotated[
        str | None,
        option(
            "A past moment (ISO 8601, UTC unless an offset is given, e.g. "
            "2026-11-01T12:00): replay the ledger to then.",
            "--at",
        ),
    ] = None,
    json_: JsonFlag = False,
) -> None:
    """Per environment: the live version, target, url, health, pid, uptime and last event.

    With --at: which version was live in each environment at that moment, deployed by whom,
    approved by whom, with which gate results (from the ledger alone)."""
    from cpmai.errors import UsageError
    from cpmai.settings import resolve_home
    from cpmai.status import status as read

    moment = None
    if at is not None:
        from cpmai.clock import parse_time

        try:
            moment = parse_time(at).isoformat()
        except ValueError:
            raise UsageError(
                f"--at {at!r}: expected an ISO time such as 2026-11-01T12:00"
            ) from None
    rows = read(resolve_home(OPTIONS.home), name, at=moment)
    if wants_json(json_):
        emit_json({"at": moment, "environments": rows})
        return
    if not rows:
        show("nothing deployed yet (run `cpmai deploy MANIFEST --env ENV`)")
        return
    if moment is not None:
        _past(rows, moment)
        return
    table(
        ["MODEL", "ENV", "LIVE", "STATE", "URL", "PID", "UPTIME", "LAST EVENT"],
        ([*_now_cells(row)] for row in rows),
    )
    for row in rows:
        server = row["server"]
        if server.get("detail") and server["state"] not in ("running",):
            show(f"  {row['name']} {row['env']}: {server['detail']}")
        if row.get("differs"):
            warn(f"{row['name']} {row['env']}: {row['differs']}")
        _watcher(row)


def _watcher(row: dict[str, Any]) -> None:
    watcher = row.get("watcher") or {}
    if watcher.get("state", "stopped") == "stopped":
        return
    where = f"  {row['name']} {row['env']} watcher"
    if watcher["state"] == "down":
        warn(f"{where}: down — {watcher['detail']} (the next deploy or rollback starts it)")
        return
    last = watcher.get("last_check")
    parts = [f"pid {watcher['pid']}, a check every {watcher['every']}"]
    parts.append(f"last {last[:19]}Z" if last else "no check yet")
    parts.append(f"{watcher['firing']} alert(s) firing")
    if watcher.get("pending_deliveries"):
        parts.append(f"{watcher['pending_deliveries']} deliveries pending")
    show(f"{where}: " + ", ".join(parts) + (f" — {watcher['detail']}" if watcher["detail"] else ""))


def _now_cells(row: dict[str, Any]) -> list[str]:
    server = row["server"]
    live = row["version"] or "-"
    if server.get("canary"):
        live += f" (+{server['canary']} {server['weight']:.0%})"
    if server.get("live") and row["version"] and server["live"] != row["version"]:
        live += f" (server: {server['live']})"
    last = row["last_event"]
    last_text = f"{last['action']} {last['version'] or ''} {last['time'][:19]}Z" if last else "-"
    return [
        row["name"],
        row["env"],
        live,
        server["state"],
        server.get("url") or "-",
        str(server.get("pid") or "-"),
        _duration(server.get("uptime_s")),
        last_text.replace("  ", " "),
    ]


def _past(rows: list[dict[str, Any]], moment: str) -> None:
    show(f"as recorded in the ledger at {moment}:")
    for row in rows:
        if not row["version"]:
            show(f"{row['name']} {row['env']}: nothing live")
            continue
        approved = ", ".join(row["approved_by"]) or "nobody"
        show(
            f"{row['name']} {row['env']}: [bold]{row['version']}[/bold] live since "
            f"{row['since'][:19]}Z, {row['how']} by {row['by']}; approved by {approved}"
        )
        gates = row["gates"]
        if gates:
            marks = "  ".join(
                f"{'✓' if g['passed'] else '✗'} {g['gate']}={g['measured']}"
                for g in gates["results"]
            )
            show(f"  gates ({gates['time'][:19]}Z): {marks}")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"
