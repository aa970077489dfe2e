"""`cpmai predict`: score a file or a database table with a packaged model."""

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from cpmai.cli.options import JsonFlag, argument, flag, option
from cpmai.cli.output import OPTIONS, emit_json, info, wants_json


def predict(
    ref: Annotated[
        str,
        argument("NAME, NAME@VERSION or NAME@ENV (the version live there); default: the latest."),
    ],
    input_: Annotated[
        str,
        option(
            "A CSV, JSON, JSON lines or Parquet file, or a database URL (sqlite:///FILE, "
            "postgresql://USER@HOST/DB, or env:VAR to read the URL from $VAR).",
            "--input",
            "-i",
        ),
    ],
    output_: Annotated[
        str | None,
        option(
            "A file (.csv, .jsonl, .parquet; default: INPUT.predictions.csv) or a database URL "
            "(default for a database input: the same database).",
            "--output",
            "-o",
        ),
    ] = None,
    table: Annotated[str | None, option("The input table (database input).")] = None,
    query: Annotated[
        str | None, option("The input query, instead of --table (needs --key).")
    ] = None,
    output_table: Annotated[
        str | None,
        option(
            "The output table (database output; created when absent; default: TABLE_predictions)."
        ),
    ] = None,
    key: Annotated[
        list[str] | None,
        option(
            "Column(s) that identify a row (comma-separated or repeated; default: the input "
            "table's primary key). Written to an output table, used to resume and to join labels.",
        ),
    ] = None,
    probabilities: Annotated[
        bool, flag("--probabilities", "Add one probability_<class> column per class.")
    ] = False,
    chunk_rows: Annotated[
        int, typer.Option(help="Rows per chunk (memory stays flat).", min=1)
    ] = 50_000,
    run_id: Annotated[
        str | None,
        option("Go on with this run (table output), or start one under this id."),
    ] = None,
    new_run: Annotated[
        bool,
        flag("--new-run", "Start a new run even if the same command left one unfinished."),
    ] = False,
    on_refused: Annotated[
        str | None,
        option(
            "A row the signature refuses: stop (exit 2, naming the row; the default for a file "
            "output) or keep (written with its reason in `refused`; the default for a table, "
            "and the only way of the Ray engine)."
        ),
    ] = None,
    env: Annotated[
        str, option("The environment the prediction log files this run under.")
    ] = "batch",
    log_sample: Annotated[
        float,
        typer.Option(help="Share of rows kept in the prediction log (0–1).", min=0.0, max=1.0),
    ] = 1.0,
    engine: Annotated[
        str,
        option(
            "local (this process) or ray (Ray Data tasks on a Ray cluster; it writes no "
            "prediction log and does not resume)."
        ),
    ] = "local",
    address: Annotated[
        str | None, option("--engine ray: the cluster's address (default: a local one).")
    ] = None,
    runtime: Annotated[str | None, option("Force sklearn or onnx.")] = None,
    no_log: Annotated[
        bool, flag("--no-log", "Do not write the prediction log (logs/NAME/ENV).")
    ] = False,
    json_: JsonFlag = False,
) -> None:
    """Score a file or a database table in chunks with a progress bar; inputs are checked
    against the signature like requests are. A file output keeps the input's columns; a table
    output keeps the key, and an interrupted run goes on where it stopped when the same command
    runs again. Every run is recorded in the ledger."""
    from cpmai.artifacts import open_artifact
    from cpmai.batch.locations import FileLocation, SqlLocation, location
    from cpmai.batch.run import ACTION, BatchJob, BatchResult, score_batch
    from cpmai.errors import UsageError
    from cpmai.home import Home
    from cpmai.ledger import Ledger
    from cpmai.predlog.writer import PredictionLog
    from cpmai.refs import resolve
    from cpmai.runtime.predictor import Predictor
    from cpmai.settings import resolve_actor, resolve_home

    if runtime not in (None, "sklearn", "onnx"):
        raise UsageError(f"--runtime {runtime!r}: expected sklearn or onnx")
    if on_refused not in (None, "stop", "keep"):
        raise UsageError(f"--on-refused {on_refused!r}: expected stop or keep")
    if engine not in ("local", "ray"):
        raise UsageError(f"--engine {engine!r}: expected local or ray")
    if address is not None and engine != "ray":
        raise UsageError("--address is for --engine ray")
    source = location(input_, option="--input")
    if isinstance(source, FileLocation):  # before the model is opened: a FIFO would block
        from cpmai.fsutil import not_regular

        why = not_regular(source.path)
        if why is not None and not (engine == "ray" and source.path.is_dir()):
            raise UsageError(f"{source.path}: {why}")
        if not source.path.exists():
            raise UsageError(f"{source.path}: no such file")
    if output_ is not None:
        output = location(output_, option="--output")
    elif isinstance(source, SqlLocation):
        output = source
    else:  # the Ray engine writes a Parquet folder
        suffix = ".parquet" if engine == "ray" else ".csv"
        output = FileLocation(source.path.with_name(f"{source.path.stem}.predictions{suffix}"))
    if isinstance(output, SqlLocation) and output_table is None:
        if table is None:
            raise UsageError("--output-table: name the table to write the predictions to")
        output_table = f"{table}_predictions"
    keys = [k.strip() for item in key or [] for k in item.split(",") if k.strip()]
    home = resolve_home(OPTIONS.home)
    actor = resolve_actor(OPTIONS.actor)
    target = resolve(home, ref)
    artifact = open_artifact(home, target.name, target.version)
    predictor = Predictor.from_artifact(artifact, runtime=runtime)
    job = BatchJob(
        name=target.name, version=target.version, predictor=predictor, source=source,
        output=output, table=table, query=query, output_table=output_table, key=keys,
        probabilities=probabilities, chunk_rows=chunk_rows, run_id=run_id, new_run=new_run,
        on_refused=on_refused,  # type: ignore[arg-type]
        engine=engine, task=artifact.manifest().model.task,
    )  # fmt: skip
    ledger = Ledger(home)

    def record(result: BatchResult) -> None:
        details = {k: v for k, v in result.to_dict().items() if k not in ("name", "version")}
        ledger.append(ACTION, actor=actor, name=target.name, version=target.version, env=env,
                      details=details)  # fmt: skip

    log = None
    if not no_log and engine == "local":  # Ray's tasks write no prediction log
        log = PredictionLog(
            Home(home).env(target.name, env).logs,
            model=target.name,
            version=target.version,
            mode="thread",
            signature=predictor.signature,
            sample_rate=log_sample,
        )
        log.start()
    show_bar = sys.stderr.isatty() and not OPTIONS.quiet and not wants_json(json_)
    try:
        with _progress(
            show_bar,
            f"scoring {source.shown if isinstance(source, FileLocation) else table or 'the query'}",
        ) as advance:
            if engine == "ray":
                from cpmai.batch.ray_engine import score_on_ray

                result = score_on_ray(job, artifact=artifact, address=address, record=record,
                                      on_chunk=advance)  # fmt: skip
            else:
                try:
                    result = score_batch(job, log=log, on_chunk=advance, record=record)
                except KeyboardInterrupt:
                    if isinstance(output, SqlLocation):
                        info("the chunks written are kept: the same command goes on from there")
                    raise
    finally:
        if log is not None:
            log.close()
    if wants_json(json_):
        emit_json({"runtime": predictor.flavor, **result.to_dict()})
        return
    resumed = (
        f" (run {result.run_id} resumed after {result.resumed_after:,} rows)"
        if result.resumed_after
        else f" (run {result.run_id})"
    )
    refused = f", {result.refused:,} refused" if result.refused else ""
    info(
        f"scored {result.scored:,} rows{refused} with {target.name} {target.version} "
        f"({predictor.flavor}) in {result.seconds:.2f} s ({result.rows_per_second:,.0f} rows/s)"
        f"{resumed} → {result.output}"
    )
    for reason, count in result.refused_reasons.items():
        info(f"  refused {count:,}: {reason}")


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
