"""`cpmai render prometheus-rules` and `cpmai render grafana`: monitoring configuration for
Prometheus and Grafana, from a manifest's bounds."""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cpmai.cli import output
from cpmai.cli.options import argument, option
from cpmai.cli.output import OPTIONS, info

if TYPE_CHECKING:
    from cpmai.manifest import Manifest

app = typer.Typer(
    help="Render Prometheus alerting rules and a Grafana dashboard from a manifest.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

Target = Annotated[
    str,
    argument(
        "A manifest file, or a model NAME: the manifest packaged with the version live in --env "
        "(without --env: the latest version)."
    ),
]
EnvOption = Annotated[
    str | None,
    option(
        "Only this environment's watcher gauges (default: every environment's, each alert and "
        "panel labelled with its env).",
        "--env",
        "-e",
    ),
]
OutputOption = Annotated[
    Path | None, option("Write to this file (atomically) instead of stdout.", "--output", "-o")
]


@app.command("prometheus-rules")
def prometheus_rules(
    manifest_or_name: Target, env: EnvOption = None, out: OutputOption = None
) -> None:
    """Prometheus alerting rules (a rules file for `rule_files:`): SLO latency (p50/p95/p99) and
    error rate from the servers' own series, dataset drift, model quality past its bound,
    version age, a stale watcher (with monitoring.schedule), and servers that stopped answering.

    The servers' series carry no model or environment label: the rules pick the model's
    targets through cpmai_model_info and judge each scrape job apart, so give each environment
    its own job. Check the file with `promtool check rules FILE`.
    """
    from cpmai.monitor.prometheus import prometheus_rules as render

    _write(render(_manifest(manifest_or_name, env), env=env), out)


@app.command()
def grafana(manifest_or_name: Target, env: EnvOption = None, out: OutputOption = None) -> None:
    """A Grafana dashboard (JSON model, schemaVersion 39, a Prometheus data source chosen on
    import): requests/s, error rate, latency p50/p95/p99, batch sizes, CPU and memory, feature
    drift, drift share, model quality and the watcher's alerts and last check, each with the
    manifest's bound drawn as a threshold line.
    """
    import json

    from cpmai.monitor.grafana import grafana_dashboard

    dashboard = grafana_dashboard(_manifest(manifest_or_name, env), env=env)
    _write(json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n", out)


def _manifest(target: str, env: str | None) -> "Manifest":
    """The manifest file named, or the one packaged with NAME's version live in `env` (the
    latest without `env`)."""
    from cpmai.cli.project import name_or_manifest

    name, manifest = name_or_manifest(target)
    if manifest is not None:
        return manifest  # type: ignore[no-any-return]
    from cpmai.artifacts import open_artifact
    from cpmai.refs import resolve
    from cpmai.settings import resolve_home

    home = resolve_home(OPTIONS.home)
    ref = resolve(home, f"{name}@{env}" if env else name)
    return open_artifact(home, ref.name, ref.version).manifest()


def _write(text: str, out: Path | None) -> None:
    if out is None:
        typer.echo(text, nl=False)
        output.OPTIONS.json_written = True
        return
    from cpmai.errors import UsageError
    from cpmai.fsutil import write_atomic

    if not out.parent.is_dir():
        raise UsageError(f"--output {out}: no folder {out.parent}")
    write_atomic(out, text.encode())
    info(f"wrote {out}")
