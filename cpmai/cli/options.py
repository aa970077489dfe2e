"""Option and argument definitions the commands share, so each command's signature says only
what is its own."""

from pathlib import Path
from typing import Annotated, Any

import typer

from cpmai.cli import output


def option(help: str, *names: str, **more: Any) -> Any:
    """A `typer.Option` whose default is not shown (ours mostly mean "not given")."""
    return typer.Option(*names, help=help, show_default=False, **more)


def argument(help: str) -> Any:
    """A required `typer.Argument`."""
    return typer.Argument(help=help, show_default=False)


def _json_mode(value: bool) -> bool:
    """Set at parse time, so an error raised before the command renders is JSON too."""
    if value:
        output.OPTIONS.json = True
    return value


JsonFlag = Annotated[
    bool, typer.Option("--json", help="One JSON document on stdout.", callback=_json_mode)
]
IncludeSyntheticFlag = Annotated[
    bool,
    typer.Option(
        "--include-synthetic",
        help="Count requests marked synthetic (header X-Cpmai-Traffic, as `cpmai bench` sends) "
        "as traffic; by default they are shown apart and left out of every figure.",
    ),
]
ManifestArg = Annotated[Path, argument("The manifest (cpmai.yaml).")]
MarkdownFile = Annotated[Path | None, option("Write a Markdown summary (CI step summary).")]


def flag(name: str, help: str) -> Any:
    """An on/off option (`--name`), off by default."""
    return typer.Option(name, help=help)
