"""`cpmai report`: the dashboard for leads and for CI."""

from pathlib import Path
from typing import Annotated

from cpmai.cli.options import IncludeSyntheticFlag, JsonFlag, argument, option
from cpmai.cli.output import OPTIONS, detail, emit_json, info, progress, show, wants_json
from cpmai.cli.project import name_or_manifest


def report(
    target: Annotated[
        str,
        argument(
            "Model name, or a manifest file (its slo:, monitoring:, costs: and business: "
            "then apply)."
        ),
    ],
    env: Annotated[
        str | None, option("One environment (default: every one).", "--env", "-e")
    ] = None,
    since: Annotated[
        str | None,
        option("Start: ISO time or age (default: the first deployment, at most 730h ago)."),
    ] = None,
    until: Annotated[str | None, option("End (default: now).")] = None,
    html: Annotated[
        Path | None, option("Write the dashboard as one self-contained HTML file.")
    ] = None,
    markdown: Annotated[
        Path | None, option("Write a Markdown summary (pull-request comment).")
    ] = None,
    include_synthetic: IncludeSyntheticFlag = False,
    json_: JsonFlag = False,
) -> int:
    """The dashboard: every version's journey (packaged → gated → approved → deployed → rolled
    back, who and when), latency per version, traffic, SLOs and resources over time, drift and
    data quality, triggers fired, KPIs, cost per environment and per 1,000 predictions, budget
    and ROI.

    Exit 4 when something is breached (an SLO over the period, drift, quality, age, budget),
    as `cpmai monitor` and `cpmai cost` would; the report is written either way.
    """
    import time

    from cpmai.clock import parse_moment
    from cpmai.errors import UsageError
    from cpmai.report.data import build
    from cpmai.settings import resolve_home

    name, manifest = name_or_manifest(target)
    for path in (html, markdown):
        if path is not None and not path.parent.is_dir():
            raise UsageError(f"{path}: the folder {path.parent} does not exist")
    now = time.time()
    with progress(detail) as say:
        doc = build(
            resolve_home(OPTIONS.home),
            name,
            env=env,
            manifest=manifest,
            since=parse_moment(since, now=now) if since else None,
            until=parse_moment(until, now=now) if until else None,
            now=now,
            progress=say,
            include_synthetic=include_synthetic,
        )
    verdict = doc.judge()
    from cpmai.fsutil import write_atomic

    if html is not None:
        from cpmai.report.html import render as to_html

        write_atomic(html, to_html(doc).encode())
        info(f"wrote {html}")
    if markdown is not None:
        from cpmai.report.markdown import render as to_markdown

        write_atomic(markdown, to_markdown(doc).encode())
        info(f"wrote {markdown}")
    if wants_json(json_):
        emit_json(doc.to_json())
    else:
        from cpmai.report.terminal import render

        show(render(doc))
    return int(verdict)
