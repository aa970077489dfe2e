"""The `cpmai` command: global options, the command groups, and the one error boundary."""

import errno
import importlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from cpmai import __version__
from cpmai.cli import output
from cpmai.cli.options import flag, option
from cpmai.errors import CpmaiError, ExitCode

COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("cpmai.cli.project", "init"),
    "validate": ("cpmai.cli.project", "validate"),
    "schema": ("cpmai.cli.project", "schema"),
    "package": ("cpmai.cli.package_cmd", "package"),
    "deploy": ("cpmai.cli.deploy", "deploy"),
    "approve": ("cpmai.cli.deploy", "approve"),
    "promote": ("cpmai.cli.deploy", "promote"),
    "rollback": ("cpmai.cli.deploy", "rollback"),
    "status": ("cpmai.cli.status", "status"),
    "stop": ("cpmai.cli.deploy", "stop"),
    "versions": ("cpmai.cli.versions", "versions"),
    "history": ("cpmai.cli.versions", "history"),
    "serve": ("cpmai.cli.serve", "serve"),
    "predict": ("cpmai.cli.predict", "predict"),
    "bench": ("cpmai.cli.bench", "bench"),
    "monitor": ("cpmai.cli.monitor", "monitor"),
    "alerts": ("cpmai.cli.alerts", "app"),
    "cost": ("cpmai.cli.cost", "cost"),
    "kpi": ("cpmai.cli.kpi", "app"),
    "report": ("cpmai.cli.report", "report"),
    "render": ("cpmai.cli.render", "app"),
    "ledger": ("cpmai.cli.ledger_cmd", "app"),
}
"""Every command, in the order `cpmai --help` lists them: module and attribute (a function, or a
Typer app for a group). Only the command being run is imported and built: typer turns each
function's signature into click parameters, which for all of them costs more than the command
itself in a quick one such as `versions`."""
_GLOBAL_OPTIONS_WITH_VALUES = {"--home", "--actor"}


EXIT_CODES_HELP = """\
\b
Exit codes:
  0    success
  1    internal error (a bug; bad input never ends here)
  2    usage error, invalid manifest or input file
  3    a gate refused (deploy/promote blocked)
  4    a threshold breached (SLO, baseline, monitor trigger, budget)
  5    integrity failure (artifact digest mismatch, ledger chain broken, unreadable log)
  6    target failure (not healthy, rollout aborted)
  130  interrupted
"""


def _argument_names_as_typed() -> None:
    """Usage lines name arguments as users type them (`cpmai deploy [OPTIONS] MANIFEST`):
    typer 0.28 writes a required argument as `{manifest}`."""
    from typer.core import TyperArgument

    def make_metavar(self: TyperArgument, ctx: object, *, usage: bool = False) -> str:
        var = self.metavar or (self.name or "").upper()
        if self.nargs != 1:
            var += "..."
        return f"[{var}]" if usage and not self.required else var

    TyperArgument.make_metavar = make_metavar  # type: ignore[method-assign]


def build_app(only: str | None = None) -> typer.Typer:
    """The CLI with every command, or only `only` (when that is the command being run)."""
    _argument_names_as_typed()
    app = typer.Typer(
        name="cpmai",
        help="Take a validated model into production and keep it accountable there "
        "(CPMAI phase 6).\n\n" + EXIT_CODES_HELP,
        context_settings={"help_option_names": ["-h", "--help"]},
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        rich_markup_mode=None,
    )
    app.callback()(root)
    for name, (module, attribute) in COMMANDS.items():
        if only is not None and name != only:
            continue
        target = getattr(importlib.import_module(module), attribute)
        if isinstance(target, typer.Typer):
            app.add_typer(target, name=name)
        else:
            app.command(name)(target)
    return app


def _command_in(args: list[str]) -> str | None:
    """The command named in `args` (after the global options), if it is a known one."""
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in _GLOBAL_OPTIONS_WITH_VALUES:
            skip = True
        elif not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def _version(value: bool) -> None:
    if value:
        print(f"cpmai {__version__}")
        raise typer.Exit()


def root(
    json_: Annotated[bool, flag("--json", "One JSON document on stdout, nothing else.")] = False,
    home: Annotated[
        Path | None, option("State folder (default: $CPMAI_HOME, else ./.cpmai).", "--home")
    ] = None,
    actor: Annotated[
        str | None,
        option(
            "Who is acting, for the ledger (default: $CPMAI_ACTOR, git user.email, OS user).",
            "--actor",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only results and errors.")] = False,
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, help="More detail.")] = 0,
    debug: Annotated[bool, flag("--debug", "Show tracebacks.")] = False,
    no_color: Annotated[bool, flag("--no-color", "No colour (NO_COLOR is honoured too).")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    opts = output.OPTIONS
    opts.json, opts.home, opts.actor = json_, home, actor
    opts.quiet, opts.verbose, opts.debug, opts.color = quiet, verbose, debug, not no_color


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; map every outcome to an exit code. Returns the code (and exits with it when
    run as the `cpmai` script)."""
    args = sys.argv[1:] if argv is None else argv
    output.reset()
    output.OPTIONS.debug = "--debug" in args
    try:
        app = build_app(_command_in(args))
        result = app(args=args, prog_name="cpmai", standalone_mode=False)
        code = int(result) if isinstance(result, int) else ExitCode.OK
        if code == ExitCode.INTERRUPTED:  # typer turns Ctrl-C into this code, silently
            output.OPTIONS.err.print("interrupted")
    except CpmaiError as exc:
        code = _report(exc, exc.exit_code)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.TyperException as exc:  # bad arguments or options
        show = getattr(exc, "show", None)
        if show is not None:
            show(file=sys.stderr)
        else:
            output.error(exc.message)
        code = exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        output.OPTIONS.err.print("interrupted")
        code = ExitCode.INTERRUPTED
    except BrokenPipeError:
        code = ExitCode.OK
    except OSError as exc:  # the machine said no: a path, a permission, a full disk
        code = _report_os_error(exc)
    except Exception as exc:  # a bug: say so, keep the traceback for --debug
        code = _report(exc, ExitCode.INTERNAL)
    return int(code)


_USER_FIXABLE = {
    errno.EACCES,
    errno.EPERM,
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EROFS,
    errno.EEXIST,
}


def _report_os_error(exc: OSError) -> ExitCode:
    """An OSError is not a bug in cpmai: name the file and the reason, no traceback."""
    where = f"{exc.filename}: " if exc.filename else ""
    code = ExitCode.USAGE if exc.errno in _USER_FIXABLE else ExitCode.INTERNAL
    return _report(CpmaiError(f"{where}{exc.strerror or exc}"), code)


def _report(exc: BaseException, code: ExitCode) -> ExitCode:
    opts = output.OPTIONS
    if opts.debug:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, CpmaiError):
        output.error(exc.message, exc.hint)
    else:
        output.error(
            f"internal error: {type(exc).__name__}: {exc}",
            None if opts.debug else "this is a bug in cpmai; rerun with --debug for the traceback",
        )
    if opts.json and not opts.json_written:
        output.emit_json(
            {"error": {"type": type(exc).__name__, "message": str(exc), "exit_code": int(code)}}
        )
    return code


def run() -> None:
    sys.exit(main())
