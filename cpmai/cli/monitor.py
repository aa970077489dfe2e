"""`cpmai monitor`: traffic, latency, errors, resources, drift and quality of an environment,
and the triggers they fire."""

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cpmai.cli.options import IncludeSyntheticFlag, JsonFlag, argument, flag, option
from cpmai.cli.output import OPTIONS, emit_json, info, show, wants_json, warn
from cpmai.cli.project import name_or_manifest
from cpmai.monitor.notes import lost_line, synthetic_line
from cpmai.report.text import ms

if TYPE_CHECKING:
    from cpmai.manifest import LabelsQuery
    from cpmai.monitor.live import Snapshot
    from cpmai.monitor.result import (
        DriftSummary,
        FeatureDrift,
        ModelQuality,
        MonitorResult,
        TrafficSummary,
    )


def monitor(
    target: Annotated[
        str,
        argument("Model name, or a manifest file (its monitoring: and slo: bounds then apply)."),
    ],
    env: Annotated[str, option("Environment (`batch` for `cpmai predict`'s log).", "--env", "-e")],
    window: Annotated[str, typer.Option(help="Window length: 30s, 5m, 1h, 1d.")] = "1h",
    since: Annotated[
        str | None, option("Start: an ISO time (UTC) or an age such as 2h or 7d.")
    ] = None,
    until: Annotated[str | None, option("End: an ISO time (UTC) or an age; default now.")] = None,
    version: Annotated[
        str | None,
        option("The version whose rows drift and quality judge (default: the live one)."),
    ] = None,
    labels: Annotated[
        str | None,
        option(
            "Ground truth: a file (CSV/JSON/Parquet: `id` [+ `row`] and `label` columns, or "
            "labels in row order) or a database URL with --labels-query (default: the "
            "manifest's monitoring.labels)."
        ),
    ] = None,
    labels_query: Annotated[
        str | None, option("--labels URL: the query that returns the labels.")
    ] = None,
    labels_key: Annotated[
        str | None,
        option(
            "--labels URL: the column(s) matching a prediction (comma-separated: the batch "
            "run's --key; default: id)."
        ),
    ] = None,
    labels_column: Annotated[
        str | None, option("--labels URL: the label column (default: label or data.target).")
    ] = None,
    run_triggers: Annotated[
        bool, flag("--run-triggers", "Run monitoring.triggers.command when a trigger fires.")
    ] = False,
    markdown: Annotated[Path | None, option("Write a Markdown summary (CI step summary).")] = None,
    watch: Annotated[
        bool, flag("--watch", "A live dashboard in the terminal (Ctrl-C leaves).")
    ] = False,
    interval: Annotated[float, typer.Option(help="--watch: seconds between refreshes.")] = 2.0,
    no_cache: Annotated[
        bool, flag("--no-cache", "Parse the whole log again (ignore and do not update the cache).")
    ] = False,
    include_synthetic: IncludeSyntheticFlag = False,
    json_: JsonFlag = False,
) -> int:
    """Report, per window and for the whole period: requests, rows, requests/s, errors by status,
    latency p50/p95/p99 against the SLO; CPU and memory of the server; data drift of every input
    and of the predictions against the reference data (KS / chi-square on small references,
    Wasserstein / Jensen–Shannon on large ones, PSI for all); missing, out-of-range and unseen
    values; model quality with --labels; the live version's age.

    Exit 4 when a bound is breached (drift, quality, SLO, age). Breaches listed in
    monitoring.triggers.on are recorded in the ledger as `trigger` events (once per cooldown);
    with --run-triggers the trigger command runs and its exit status is recorded too. Exit 5
    when lines of the prediction log cannot be read (the report is still shown; the period is
    never called within bounds).
    """
    import math

    from cpmai.clock import parse_duration, parse_moment
    from cpmai.errors import UsageError
    from cpmai.settings import resolve_actor, resolve_home

    home = resolve_home(OPTIONS.home)
    name, manifest = name_or_manifest(target)
    if not math.isfinite(interval) or interval < 0.1:
        raise UsageError(f"--interval {interval}: expected at least 0.1 seconds")
    if watch:
        given = [flag for flag, value in (("--json", wants_json(json_)), ("--labels", labels),
                 ("--labels-query", labels_query),
                 ("--markdown", markdown), ("--run-triggers", run_triggers), ("--since", since),
                 ("--until", until), ("--version", version),
                 ("--include-synthetic", include_synthetic)) if value]  # fmt: skip
        if given:
            raise UsageError(f"--watch draws the last minutes live; it does not take {given[0]}")
        return _watch(home, name, env, interval)
    now = time.time()
    window_s = parse_duration(window)
    start = parse_moment(since, now=now) if since else None
    end = parse_moment(until, now=now) if until else None
    if markdown is not None and not markdown.parent.is_dir():
        raise UsageError(f"{markdown}: the folder {markdown.parent} does not exist")
    truth = _labels(labels, labels_query, labels_key, labels_column)
    from cpmai.errors import IntegrityError
    from cpmai.monitor.run import monitor as run
    from cpmai.monitor.run import unreadable_error
    from cpmai.monitor.triggers import respond

    result = run(
        home,
        name,
        env,
        window_s=window_s,
        since=start,
        until=end,
        version=version,
        manifest=manifest,
        labels=truth,
        now=now,
        use_cache=not no_cache,
        include_synthetic=include_synthetic,
    )
    respond(home, result, actor=resolve_actor(OPTIONS.actor), run=run_triggers, say=info, warn=warn)
    if markdown is not None:
        from cpmai.monitor.reports import markdown as to_markdown

        markdown.write_text(to_markdown(result))
    if wants_json(json_):
        emit_json(result.to_json())
    else:
        _render(result)
    unreadable = unreadable_error(result)
    if unreadable is not None:  # the report is still shown; the message goes to stderr
        raise IntegrityError(unreadable[0], hint=unreadable[1])
    return result.exit_code


# --- the report ------------------------------------------------------------------------------


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _labels(
    given: str | None, query: str | None, key: str | None, column: str | None
) -> "Path | LabelsQuery | None":
    """--labels as a file, or as a database query (with --labels-query)."""
    from cpmai.batch.locations import is_url
    from cpmai.errors import UsageError
    from cpmai.manifest import LabelsQuery

    if given is None:
        extra = [n for n, v in (("--labels-query", query), ("--labels-key", key),
                                ("--labels-column", column)) if v is not None]  # fmt: skip
        if extra:
            raise UsageError(f"{extra[0]} goes with --labels URL")
        return None
    if not is_url(given):
        if query is not None or key is not None or column is not None:
            raise UsageError(
                "--labels-query, --labels-key and --labels-column are for a database (--labels URL)"
            )
        path = Path(given)
        if not path.is_file():
            raise UsageError(f"--labels {given}: file not found")
        return path
    if query is None:
        raise UsageError("--labels URL: give the query that returns the labels (--labels-query)")
    keys = [k.strip() for k in (key or "id").split(",") if k.strip()]
    return LabelsQuery(url=given, query=query, key=keys, label=column)


def _render(result: "MonitorResult") -> None:
    from rich.table import Table

    period, traffic = result.period, result.traffic
    show(
        f"[bold]{result.name}[/bold] @ {result.env}: version {result.version} "
        f"(live: {result.live_version or 'none'}), {period.since} → {period.until}"
    )
    log = result.log
    if not log.requests_logged:
        show(
            f"no traffic in this period ({log.files} log file(s) in {log.folder}); "
            "send requests, or widen --since"
        )
    lost = lost_line(log.lost)
    if lost:
        warn(lost)
    synthetic = synthetic_line(log.synthetic)
    if synthetic:
        show(synthetic)
    windows = result.windows
    shown = windows[-24:]
    table = Table(
        title=f"traffic by window of {period.window_s:g} s"
        + (f" (last {len(shown)} of {len(windows)})" if len(shown) < len(windows) else ""),
        title_justify="left",
    )
    for column in ("window", "requests", "req/s", "errors", "p50 ms", "p95 ms", "p99 ms",
                   "CPU %", "RSS MiB", "drift"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("window", "drift") else "right")
    rows: list[tuple[str, TrafficSummary, DriftSummary]] = [
        (w.start.replace("T", " ").replace("Z", ""), w, w.drift) for w in shown
    ]
    rows.append(("[bold]whole period[/bold]", traffic, result.drift))
    for label, row, drift in rows:
        lat = row.latency_ms
        res = row.resources
        table.add_row(
            label,
            f"{row.requests:,}",
            f"{row.requests_per_s:.2f}",
            _rate(row.error_rate),
            ms(lat.p50_ms),
            ms(lat.p95_ms),
            _slo_cell(lat.p99_ms, result.slo.bounds.get("p99_ms")),
            f"{res.cpu_percent_mean:.1f}" if res else "-",
            f"{res.rss_mb_mean:.0f}" if res else "-",
            _drift_cell(drift),
        )
    show(table)
    if traffic.errors:
        show("errors by status: " + ", ".join(f"{k}: {v:,}" for k, v in traffic.errors.items()))
    checks = result.slo.checks
    if checks:
        show(
            "SLO: "
            + "  ".join(
                f"{_mark(c.passed)} {c.metric} {_g(c.measured)} (≤ {c.bound:g})" for c in checks
            )
        )
    _render_drift(result)
    _render_quality(result.model_quality)
    if result.labels_error:
        warn(f"{result.labels_error} (model quality not judged)")
    age = result.age
    show(
        f"age: {age.days:.1f} days since packaging"
        + (f" (max {age.max_days})" if age.max_days else "")
        + (f"; live since {age.live_since[:19]}Z" if age.live_since else "")
    )
    for alert in result.alerts:
        show(f"[red]ALERT[/red] {alert.kind}: {alert.message} — trigger {alert.trigger}")
    if result.trigger_run:
        run = result.trigger_run
        show(f"trigger command exited {run.exit_code} after {run.seconds:.1f} s")
    if log.unreadable_lines:
        show(
            f"[red]not judged: {log.unreadable_lines:,} line(s) of the prediction log "
            "could not be read[/red]"
        )
    elif not result.alerts:
        show("[green]within bounds[/green]")


def _mark(passed: bool | None) -> str:
    return "[green]✓[/green]" if passed else ("[red]✗[/red]" if passed is False else "-")


def _slo_cell(value: float | None, bound: float | None) -> str:
    text = ms(value)
    if value is not None and bound is not None and value > bound:
        return f"[red]{text}[/red]"
    return text


def _drift_cell(summary: "DriftSummary") -> str:
    status = summary.status
    if status == "drift":
        return f"[red]drift {len(summary.drifted)}/{summary.judged}[/red]"
    if status == "ok":
        return f"[green]ok[/green] {len(summary.drifted)}/{summary.judged}"
    return "[dim]not enough data[/dim]"


def _render_drift(result: "MonitorResult") -> None:
    from rich.table import Table

    drift = result.drift
    table = Table(
        title=f"data drift of version {drift.version} against its reference data "
        f"({drift.reference_rows:,} rows): {drift.status}",
        title_justify="left",
    )
    for column in ("feature", "method", "statistic", "p-value", "PSI", "rows", "status",
                   "missing", "outside", "unseen"):  # fmt: skip
        table.add_column(
            column, justify="left" if column in ("feature", "method", "status") else "right"
        )
    quality = {q.feature: q for q in result.data_quality}
    rows: list[tuple[str, FeatureDrift]] = [(f.feature, f) for f in drift.features]
    if drift.prediction:
        rows.append(("(prediction)", drift.prediction))
    for feature, f in rows:
        q = quality.get(feature)
        colour = {"drift": "red", "ok": "green"}.get(f.status, "dim")
        table.add_row(
            feature,
            f.method,
            _g(f.statistic),
            _g(f.p_value),
            _g(f.psi),
            f"{f.rows:,}",
            f"[{colour}]{f.status}[/{colour}]",
            str(q.missing) if q else "",
            "-" if not q or q.out_of_range is None else str(q.out_of_range),
            str(q.unseen) if q else "",
        )
    show(table)
    _render_text(drift.features)
    for q in result.data_quality:
        if q.unseen_values:
            values = ", ".join(f"{k!r} ×{v}" for k, v in q.unseen_values.items())
            show(f"  {q.feature}: unseen values {values}")


def _render_text(features: "list[FeatureDrift]") -> None:
    """Free-text inputs: each of the three measures against its reference value."""
    from rich.table import Table

    texts = [(f, f.text) for f in features if f.text is not None]
    if not texts:
        return
    table = Table(
        title="free text: length in characters, unknown words and hashed token distribution "
        "against the reference text (excess over chance ≥ threshold: drift)",
        title_justify="left",
    )
    for column in ("feature", "mean length (ref)", "length test", "unknown words (expected)",
                   "token distance (chance)", "status"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("feature", "status") else "right")
    for f, text in texts:
        length, unknown, tokens = text.length, text.unknown_words, text.token_distribution
        colour = {"drift": "red", "ok": "green"}.get(f.status, "dim")
        status = f.status + (f" ({', '.join(text.drifted_by)})" if text.drifted_by else "")
        table.add_row(
            f.feature,
            f"{_g(length.mean)} ({_g(length.reference_mean)})",
            f"{length.method} {_g(length.statistic)}"
            + (f", p {_g(length.p_value)}" if length.p_value is not None else ""),
            f"{_share(unknown.share)} ({_share(unknown.expected_share)})",
            f"{_g(tokens.statistic)} ({_g(tokens.chance)})",
            f"[{colour}]{status}[/{colour}]",
        )
    show(table)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _render_quality(quality: "ModelQuality | None") -> None:
    if not quality:
        return
    metrics = "  ".join(f"{k} {v:.4f}" for k, v in quality.metrics.items())
    line = (
        f"model quality ({quality.labelled_rows:,} of {quality.labels_given:,} labels "
        f"matched by {quality.join}): {metrics or 'no labelled rows'}"
    )
    show(line)
    if quality.metric:
        show(f"  {quality.metric} {_mark(quality.passed)} (bound {quality.bound:g})")


# --- the live view ---------------------------------------------------------------------------


def _watch(home: Path, name: str, env: str, interval: float) -> int:
    from rich.live import Live

    from cpmai.monitor.live import LiveMonitor

    view = LiveMonitor(home, name, env, bucket_s=interval)
    try:
        with Live(_dashboard(view.poll()), console=OPTIONS.out, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(_dashboard(view.poll()), refresh=True)
    except KeyboardInterrupt:
        pass
    info("stopped watching")
    return 0


def _dashboard(snap: "Snapshot") -> Any:
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    from cpmai.report.terminal import sparkline

    minute = snap.minute
    header = Table.grid(padding=(0, 2))
    header.add_row(
        f"[bold]{snap.name}[/bold] @ {snap.env}",
        f"live: [bold]{snap.live_version or 'none'}[/bold]",
        time.strftime("%H:%M:%S", time.gmtime(snap.time)) + " UTC",
    )
    traffic = Table.grid(padding=(0, 2))
    traffic.add_row("req/s", sparkline(snap.rps), f"{snap.rps[-1]:.1f}" if snap.rps else "-")
    traffic.add_row("p99 ms", sparkline(snap.p99_ms), ms(snap.p99_ms[-1] if snap.p99_ms else None))
    p99_bound = snap.slo.get("p99_ms")
    err_bound = snap.slo.get("error_rate")
    p99_ok = minute.p99_ms is None or p99_bound is None or minute.p99_ms <= p99_bound
    err_ok = minute.error_rate is None or err_bound is None or minute.error_rate <= err_bound
    last = Table.grid(padding=(0, 2))
    last.add_row(
        f"last minute: {minute.requests:,} requests ({minute.requests_per_s:.1f}/s)",
        f"p50 {ms(minute.p50_ms)} ms",
        ("[green]" if p99_ok else "[red]")
        + f"p99 {ms(minute.p99_ms)} ms"
        + (f" (SLO {p99_bound:g})" if p99_bound else "")
        + ("[/green]" if p99_ok else "[/red]"),
        ("[green]" if err_ok else "[red]")
        + f"errors {_rate(minute.error_rate)}"
        + ("[/green]" if err_ok else "[/red]"),
    )
    res = snap.resources
    synthetic = sum(snap.synthetic.values())
    last.add_row(
        f"CPU {res.cpu_percent:.0f}%  RSS {res.rss_mb:.0f} MiB ({res.processes} proc)"
        if res
        else "CPU/RSS: no recent samples",
        f"[dim]+ {synthetic:,} synthetic requests in the last {snap.horizon_s / 60:g} min, "
        "not shown[/dim]"
        if synthetic
        else "",
        "",
        "",
    )
    drift = Table(title="drift (last minutes)", title_justify="left", expand=False)
    for column in ("feature", "method", "statistic", "PSI", "rows", "status"):
        drift.add_column(column)
    for f in snap.drift:
        colour = {"drift": "red", "ok": "green"}.get(f.status, "dim")
        drift.add_row(
            f.feature, f.method, _g(f.statistic), _g(f.psi), f"{f.rows:,}",
            f"[{colour}]{f.status}[/{colour}]",
        )  # fmt: skip
    return Panel(Group(header, traffic, last, drift), title="cpmai monitor --watch", expand=False)
