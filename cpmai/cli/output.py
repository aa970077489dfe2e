"""How commands speak: results on stdout (Rich, or one JSON document), messages on stderr.

Colour only on a terminal, never with --no-color, NO_COLOR or --json.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console, RenderableType


@dataclass
class Options:
    """The global options, set by the root callback and read by every command."""

    json: bool = False
    home: Path | None = None
    actor: str | None = None
    quiet: bool = False
    verbose: int = 0
    debug: bool = False
    color: bool = True
    json_written: bool = field(default=False, repr=False)

    _out: Console | None = field(default=None, repr=False)
    _err: Console | None = field(default=None, repr=False)

    @property
    def out(self) -> Console:
        if self._out is None:
            self._out = _console(sys.stdout, self.color and not self.json)
        return self._out

    @property
    def err(self) -> Console:
        if self._err is None:
            self._err = _console(sys.stderr, self.color, soft_wrap=True)
        return self._err


def _console(stream: Any, color: bool, *, soft_wrap: bool = False) -> Console:
    from rich.console import Console

    tty = stream.isatty()
    use_color = color and tty and not os.environ.get("NO_COLOR")
    return Console(
        file=stream,
        color_system="auto" if use_color else None,
        highlight=False,
        soft_wrap=soft_wrap,
        width=None if tty else 120,
    )


OPTIONS = Options()


def reset() -> None:
    """Fresh options for one run of `main` (commands hold a reference to OPTIONS itself)."""
    OPTIONS.__dict__.update(Options().__dict__)


def emit_json(data: Any) -> None:
    """The one JSON document a --json command writes to stdout."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()
    OPTIONS.json_written = True


def show(renderable: RenderableType | str) -> None:
    """A human result on stdout."""
    OPTIONS.out.print(renderable)


def shown_path(path: str | Path) -> str:
    """A path as a user would type it: relative to the working folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """An aligned plain-text table on stdout (header in bold on a terminal).

    Plain and fast on purpose: `history` of 10,000 events renders in milliseconds (a Rich table
    takes seconds), and the output stays easy to grep and cut.
    """
    cells = [[str(value) for value in row] for row in rows]
    widths = [max([len(name)] + [len(row[i]) for row in cells]) for i, name in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        padded = [v.ljust(w) for v, w in zip(values[:-1], widths[:-1], strict=True)]
        return "  ".join([*padded, values[-1]]).rstrip()

    OPTIONS.out.print(line(list(columns)), style="bold", markup=False, highlight=False)
    sys.stdout.write("".join(line(row) + "\n" for row in cells))
    sys.stdout.flush()


def info(message: str) -> None:
    """Progress and notes on stderr (plain text, no markup); silenced by -q."""
    if not OPTIONS.quiet:
        OPTIONS.err.print(_escape(message))


def detail(message: str) -> None:
    """Extra detail on stderr with -v."""
    if OPTIONS.verbose and not OPTIONS.quiet:
        OPTIONS.err.print(f"[dim]{_escape(message)}[/dim]")


def warn(message: str) -> None:
    OPTIONS.err.print(f"[yellow]warning:[/yellow] {_escape(message)}")


def error(message: str, hint: str | None = None) -> None:
    OPTIONS.err.print(f"[bold red]error:[/bold red] {_escape(message)}")
    if hint:
        OPTIONS.err.print(f"[dim]hint:[/dim] {_escape(hint)}")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


@contextmanager
def progress(fallback: Callable[[str], None] = info) -> Iterator[Callable[[str], None]]:
    """A callback for the core's progress messages: a live status line on a terminal (unless
    -q), else `fallback` (`info`, or `detail` for steps only -v should show)."""
    if OPTIONS.err.is_terminal and not OPTIONS.quiet:
        with OPTIONS.err.status("starting") as status:
            yield lambda message: status.update(_escape(message))
    else:
        yield fallback


def wants_json(local: bool) -> bool:
    return local or OPTIONS.json
