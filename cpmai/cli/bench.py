"""`cpmai bench`: latency, throughput and resources, with verdicts CI can act on."""

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cpmai.bench import MAX_CONCURRENCY, MAX_RATE
from cpmai.cli.options import JsonFlag, argument, flag, option
from cpmai.cli.output import OPTIONS, emit_json, progress, show, shown_path, wants_json, warn

if TYPE_CHECKING:
    from cpmai.bench.result import BenchResult, LevelResult


def _numbers(text: str | None, kind: type, option: str) -> list[Any]:
    from cpmai.errors import UsageError

    if text is None:
        return []
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected a comma-separated list of numbers") from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise UsageError(f"{option} {text!r}: expected numbers above 0")
    if option == "--rate" and max(values) > MAX_RATE:
        raise UsageError(f"--rate {text!r}: at most {MAX_RATE:,.0f} requests per second")
    if option == "--concurrency" and max(values) > MAX_CONCURRENCY:
        raise UsageError(f"--concurrency {text!r}: at most {MAX_CONCURRENCY}")
    return values


def bench(
    target: Annotated[
        str | None,
        argument(
            "NAME[@VERSION|@ENV]: benchmark in process (no HTTP); with --url, the model whose "
            "reference rows to send."
        ),
    ] = None,
    url: Annotated[
        str | None, option("Benchmark a running server over HTTP (any MLflow or OIP v2 server).")
    ] = None,
    protocol: Annotated[
        str, typer.Option(help="With --url: mlflow (/invocations) or oip (/v2/models/M/infer).")
    ] = "mlflow",
    model: Annotated[str | None, option("With --protocol oip: the model name.")] = None,
    input_file: Annotated[
        Path | None,
        option(
            "Rows to send (CSV/JSON/Parquet; default: the artifact's reference data).",
            "--input",
            "-i",
        ),
    ] = None,
    concurrency: Annotated[
        str | None,
        option(
            "Closed loop: requests in flight, a list sweeps (e.g. 1,2,4,8,16). "
            "Open loop: connections (default 64)."
        ),
    ] = None,
    rate: Annotated[
        str | None,
        option(
            "Open loop: requests per second, a list sweeps (e.g. 500,1000); latency "
            "from the intended send time."
        ),
    ] = None,
    arrival: Annotated[str, typer.Option(help="Open loop arrivals: constant or poisson.")] = (
        "constant"
    ),
    seed: Annotated[int, typer.Option(help="Seed of Poisson arrivals.")] = 0,
    batch_size: Annotated[
        str | None, option("Rows per call/request, a list sweeps (e.g. 1,8,64).")
    ] = None,
    duration: Annotated[
        float, typer.Option(help="Seconds measured per level, at least.", min=0.1)
    ] = 5.0,
    warmup: Annotated[
        float, typer.Option(help="Seconds of warm-up per level, not counted.", min=0)
    ] = 1.0,
    min_requests: Annotated[int, typer.Option(help="Requests per level, at least.", min=0)] = 100,
    max_duration: Annotated[
        float, typer.Option(help="Stop a level here even below --min-requests (said so).", min=0.1)
    ] = 60.0,
    workers: Annotated[
        int, typer.Option(help="Load-generator processes (--url).", min=1, max=64)
    ] = 1,
    find_capacity: Annotated[
        bool,
        flag(
            "--find-capacity",
            "Search the highest concurrency (or rate, with "
            "--rate as the start) that meets the SLO.",
        ),
    ] = False,
    slo: Annotated[
        str | None,
        option(
            "e.g. p99_ms=20,error_rate=0.01,throughput_min=1000 (default: the "
            "manifest's slo: and gates.latency:)."
        ),
    ] = None,
    baseline: Annotated[
        str | None,
        option(
            "Compare with: latest, ENV (the newest run of the version live there), a "
            "VERSION, or a result FILE (.json)."
        ),
    ] = None,
    threshold: Annotated[
        float, typer.Option(help="Regression when the ratio exceeds this (and p < 0.05).", min=1.0)
    ] = 1.10,
    force: Annotated[
        bool, flag("--force", "Compare with a baseline from another machine.")
    ] = False,
    token: Annotated[str | None, option("Bearer token for --url.")] = None,
    pid: Annotated[
        int | None,
        option("The server's pid for resource figures (default: who listens on the port)."),
    ] = None,
    no_save: Annotated[bool, flag("--no-save", "Do not keep this run.")] = False,
    junit: Annotated[Path | None, option("Write JUnit XML (one testcase per check).")] = None,
    markdown: Annotated[
        Path | None, option("Write a Markdown summary (PR comment, step summary).")
    ] = None,
    csv: Annotated[Path | None, option("Write one CSV row per level.")] = None,
    json_: JsonFlag = False,
) -> int:
    """Benchmark a model in process or a server over HTTP: latency percentiles (p50 … p99.9,
    max) from an HDR-style histogram, throughput, errors, CPU and memory; closed loop
    (--concurrency) or open loop (--rate, corrected for coordinated omission).

    Exit 4 when an SLO is breached or a regression against --baseline is found; 2 for a bad
    option (an unknown SLO metric included). Every run is kept under .cpmai/bench/NAME/VERSION/.
    """
    from cpmai.bench import subjects
    from cpmai.bench.run import Level, Request, Settings, benchmark
    from cpmai.bench.verdicts import parse_slo
    from cpmai.errors import UsageError, breach_code
    from cpmai.settings import resolve_home

    home = resolve_home(OPTIONS.home)
    floats = {"--duration": duration, "--warmup": warmup, "--max-duration": max_duration,
              "--threshold": threshold}  # fmt: skip
    for name, number in floats.items():
        if not math.isfinite(number):
            raise UsageError(f"{name} {number}: expected a finite number")
    for path in (junit, markdown, csv):  # before minutes of load, not after
        if path is not None and not path.parent.is_dir():
            raise UsageError(f"{path}: the folder {path.parent} does not exist")
    if arrival not in ("constant", "poisson"):
        raise UsageError(f"--arrival {arrival!r}: expected constant or poisson")
    if protocol not in ("mlflow", "oip"):
        raise UsageError(f"--protocol {protocol!r}: expected mlflow or oip")
    if target is None and url is None:
        raise UsageError("name a model (NAME[@VERSION|@ENV]) or a server (--url http://HOST:PORT)")
    levels_c = _numbers(concurrency, int, "--concurrency")
    rates = _numbers(rate, float, "--rate")
    batches = _numbers(batch_size, int, "--batch-size") or [1]
    thresholds = parse_slo(slo) if slo else None  # a bad SLO fails before anything runs
    if url is None:
        if rates:
            raise UsageError("--rate (open loop) needs --url: in process, use --concurrency")
        assert target is not None
        subject = subjects.inprocess(home, target, input_file)
    else:
        subject = subjects.http(
            home, url, ref=target, input_file=input_file, protocol=protocol, model=model,
            token=token, pid=pid,
        )  # fmt: skip
    source = "--slo"
    if thresholds is None and subject.name:
        thresholds, source = _manifest_slo(home, subject.name, subject.version or ""), "manifest"
    if find_capacity and not thresholds:
        raise UsageError("--find-capacity needs an SLO: --slo p99_ms=20 (or slo: in the manifest)")
    if rates:
        connections = levels_c[0] if levels_c else 64
        levels = [Level("open", connections, rate=r, batch_size=b) for r in rates for b in batches]
    else:
        mode = "inprocess" if url is None else "closed"
        levels = [Level(mode, c, batch_size=b) for c in (levels_c or [1]) for b in batches]
    capacity = None
    if find_capacity:
        mode = "open" if rates else ("inprocess" if url is None else "closed")
        start = rates[0] if rates else float(levels_c[0] if levels_c else 1)
        capacity = (mode, start, batches[0], levels_c[0] if (rates and levels_c) else 64)
    request = Request(
        levels=levels,
        settings=Settings(
            warmup_s=warmup,
            duration_s=duration,
            min_requests=min_requests,
            max_duration_s=max_duration,
            workers=workers,
            arrival=arrival,
            seed=seed,
        ),
        slo=thresholds or None,
        slo_source=source if thresholds else "",
        capacity=capacity,
        baseline=baseline,
        threshold=threshold,
        force=force,
        save=not no_save,
    )
    with progress() as say:
        result = benchmark(home, subject, request, say)
    from cpmai.bench import reports

    for path, text in ((junit, reports.junit), (markdown, reports.markdown), (csv, reports.to_csv)):
        if path is not None:
            path.write_text(text(result))
    for warning in result.warnings:
        warn(warning)
    if wants_json(json_):
        emit_json(result.to_json())
    else:
        _render(result)
    return int(breach_code(result.breached))


def _manifest_slo(home: Path, name: str, version: str) -> dict[str, float] | None:
    """The manifest's `slo:` and `gates.latency:` bounds; where both bound a percentile, the
    stricter one."""
    from cpmai.artifacts import open_artifact

    manifest = open_artifact(home, name, version).manifest()
    out: dict[str, float] = {}
    sources = [manifest.slo, manifest.gates.latency]
    for key in ("p50_ms", "p95_ms", "p99_ms", "error_rate", "throughput_min"):
        found = [getattr(src, key, None) for src in sources if src is not None]
        values = [float(v) for v in found if v is not None]
        if values:
            out[key] = max(values) if key == "throughput_min" else min(values)
    return out or None


def _render(result: "BenchResult") -> None:
    from rich.table import Table

    target = result.target
    what = f"{target.name} {target.version}" if target.name else target.url
    table = Table(title=f"{what} ({target.kind})", title_justify="left")
    for column in ("level", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms",
                   "max ms", "errors", "stable"):  # fmt: skip
        table.add_column(column, justify="left" if column == "level" else "right")
    for level in result.levels:
        lat = level.latency_ms
        table.add_row(
            level.label,
            f"{level.requests:,}",
            f"{level.throughput_rps:,.0f}",
            *(_ms(v) for v in (lat.p50_ms, lat.p90_ms, lat.p99_ms, lat.p999_ms, lat.max_ms)),
            f"{level.error_rate:.2%}",
            "yes" if level.stable else "[yellow]no[/yellow]",
        )
    show(table)
    _chart(result.levels)
    res = result.resources
    if res and res.samples and res.cpu_percent and res.rss_bytes and res.threads:
        cpu, rss = res.cpu_percent, res.rss_bytes
        show(
            f"resources (pid {res.pid}): CPU mean {cpu.mean:.0f}% peak {cpu.peak:.0f}% "
            f"(100% = one core); RSS mean {rss.mean / 2**20:.0f} MiB peak "
            f"{rss.peak / 2**20:.0f} MiB; threads {res.threads.peak:.0f}"
        )
    if result.capacity:
        cap = result.capacity
        show(
            f"capacity at the SLO: [bold]{cap.level or 'none'}[/bold]"
            + (f" ({cap.throughput_rps:,.0f} req/s)" if cap.throughput_rps else "")
            + (f"; first breach at {cap.first_breach}" if cap.first_breach else "")
            + (f" — {cap.note}" if cap.note else "")
        )
    if result.slo:
        show(f"SLO ({result.slo.source}):")
        for check in result.slo.checks:
            mark = "[green]✓[/green]" if check.passed else "[red]✗[/red]"
            show(
                f"  {mark} {check.level}: {check.metric} {check.measured} "
                f"(needs {check.op} {check.threshold:g})"
            )
    if result.baseline:
        base = result.baseline
        show(f"baseline {base.file}:")
        for row in base.comparisons:
            for item in row.checks:
                mark = "[red]✗ regression[/red]" if item.regressed else "[green]✓[/green]"
                if item.untested:
                    mark = "[yellow]? untested[/yellow]"
                p = item.note if item.p_value is None else f"p = {item.p_value:.3g}"
                show(
                    f"  {mark} {row.level}: {item.metric} {item.current} vs "
                    f"{item.baseline} (ratio {item.ratio}, {p})"
                )
    if result.saved_to:
        show(f"[dim]saved: {shown_path(result.saved_to)}[/dim]")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _chart(levels: "list[LevelResult]") -> None:
    """p99 per level as bars: how latency grows with load."""
    values = [lv.latency_ms.p99_ms or 0.0 for lv in levels]
    if len(levels) < 2 or not max(values):
        return
    width = 40
    top = max(values)
    show("p99 by level:")
    for level, value in zip(levels, values, strict=True):
        bar = "█" * max(1, round(value / top * width))
        show(f"  {level.label:>14} {bar} {value:.3f} ms")
