"""`cpmai predict`: score a file with a packaged model."""

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from cpmai.cli.options import JsonFlag, argument, flag, option
from cpmai.cli.output import OPTIONS, emit_json, info, wants_json


def predict(
    ref: Annotated[
        str,
        argument("NAME, NAME@VERSION or NAME@ENV (the version live there); default: the latest."),
    ],
    input_file: Annotated[
        Path, option("CSV, JSON, JSON lines or Parquet file to score.", "--input", "-i")
    ],
    output_file: Annotated[
        Path | None,
        option(
            "Where to write (.csv, .jsonl, .parquet; default: INPUT.predictions.csv).",
            "--output",
            "-o",
        ),
    ] = None,
    probabilities: Annotated[
        bool, flag("--probabilities", "Add one probability_<class> column per class.")
    ] = False,
    chunk_rows: Annotated[
        int, typer.Option(help="Rows per chunk (memory stays flat).", min=1)
    ] = 50_000,
    runtime: Annotated[str | None, option("Force sklearn or onnx.")] = None,
    no_log: Annotated[
        bool, flag("--no-log", "Do not write the prediction log (logs/NAME/batch).")
    ] = False,
    json_: JsonFlag = False,
) -> None:
    """Score a file in chunks with a progress bar; inputs are checked against the signature
    like requests are. Extra columns (ids, labels) pass through to the output."""
    from cpmai.artifacts import open_artifact
    from cpmai.batch import score_file
    from cpmai.errors import UsageError
    from cpmai.home import Home
    from cpmai.predlog.writer import PredictionLog
    from cpmai.refs import resolve
    from cpmai.runtime.predictor import Predictor
    from cpmai.settings import resolve_home

    if runtime not in (None, "sklearn", "onnx"):
        raise UsageError(f"--runtime {runtime!r}: expected sklearn or onnx")
    from cpmai.fsutil import not_regular

    why = not_regular(input_file)
    if why is not None:
        raise UsageError(f"{input_file}: {why}")
    if not input_file.is_file():
        raise UsageError(f"{input_file}: no such file")
    home = resolve_home(OPTIONS.home)
    target = resolve(home, ref)
    artifact = open_artifact(home, target.name, target.version)
    predictor = Predictor.from_artifact(artifact, runtime=runtime)
    output = output_file or input_file.with_name(f"{input_file.stem}.predictions.csv")
    log = None
    if not no_log:
        log = PredictionLog(
            Home(home).env(target.name, "batch").logs,
            model=target.name,
            version=target.version,
            mode="thread",
            signature=predictor.signature,
        )
        log.start()
    show_bar = sys.stderr.isatty() and not OPTIONS.quiet and not wants_json(json_)
    try:
        with _progress(show_bar, f"scoring {input_file.name}") as advance:
            result = score_file(
                predictor,
                input_file,
                output,
                chunk_rows=chunk_rows,
                probabilities=probabilities,
                log=log,
                on_chunk=advance,
            )
    finally:
        if log is not None:
            log.close()
    if wants_json(json_):
        emit_json(
            {
                "name": target.name,
                "version": target.version,
                "runtime": predictor.flavor,
                **result.to_dict(),
            }
        )
        return
    info(
        f"scored {result.rows:,} rows with {target.name} {target.version} ({predictor.flavor}) "
        f"in {result.seconds:.2f} s ({result.rows_per_second:,.0f} rows/s) → {output}"
    )


@contextmanager
def _progress(enabled: bool, description: str) -> Iterator[Callable[[int], None] | None]:
    """A rows counter with a spinner on a terminal; nothing otherwise."""
    if not enabled:
        yield None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed:,} rows"),
        TimeElapsedColumn(),
        console=OPTIONS.err,
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=None)
        yield lambda rows: progress.advance(task, rows)
