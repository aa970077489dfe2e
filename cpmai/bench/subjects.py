"""What `cpmai bench` measures: a packaged model in process, or any HTTP server speaking the
MLflow scoring protocol or the Open Inference Protocol v2 (cpmai's own, or a peer's)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from cpmai.bench.recorder import LoadResult
from cpmai.bench.run import Level, Settings, Subject
from cpmai.errors import UsageError

MAX_ROWS = 1000
_OIP_TYPES = {
    "integer": "INT64",
    "number": "FP64",
    "boolean": "BOOL",
    "string": "BYTES",
    "category": "BYTES",
}


def read_rows(path: Path, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Up to MAX_ROWS rows of an input file (CSV, JSON, JSON lines, Parquet) as dicts."""
    from cpmai.runtime.data import read_table

    frame = read_table(path).head(MAX_ROWS)
    if names is not None:
        missing = [n for n in names if n not in frame.columns]
        if missing:
            raise UsageError(f"{path.name}: no column {missing[0]!r} (the model's inputs: {names})")
        frame = frame[names]
    if frame.empty:
        raise UsageError(f"{path.name}: no rows to send")
    rows: list[dict[str, Any]] = frame.to_dict("records")
    return rows


def artifact_rows(artifact: Any, names: list[str]) -> list[dict[str, Any]]:
    files = artifact.meta["files"]
    reference = [r for r in files if r.startswith("data/reference.")] or [
        r for r in files if r.startswith("data/holdout.")
    ]
    if not reference:
        raise UsageError(
            f"{artifact.name} {artifact.version} holds no reference or holdout data to send",
            hint="set data.reference in the manifest (or give `cpmai bench` an --input FILE)",
        )
    return read_rows(artifact.path / reference[0], names)


def inprocess(home: Path, ref: str, input_file: Path | None) -> Subject:
    """The predict path of a packaged version, no HTTP."""
    from cpmai.artifacts import open_artifact
    from cpmai.bench.inprocess import make_batches, run_inprocess
    from cpmai.refs import resolve
    from cpmai.runtime.predictor import Predictor

    found = resolve(home, ref)
    artifact = open_artifact(home, found.name, found.version)
    predictor = Predictor.from_artifact(artifact)
    names = predictor.signature.names
    rows = read_rows(input_file, names) if input_file else artifact_rows(artifact, names)

    def run_level(level: Level, settings: Settings) -> LoadResult:
        batches = make_batches(rows, level.batch_size)
        return run_inprocess(
            predictor.run,
            batches,
            concurrency=level.concurrency,
            warmup_s=settings.warmup_s,
            duration_s=settings.duration_s,
            min_requests=settings.min_requests,
            max_duration_s=settings.max_duration_s,
        )

    return Subject(
        kind="inprocess",
        name=found.name,
        version=found.version,
        pid=os.getpid(),
        run_level=run_level,
    )


def http(
    home: Path,
    url: str,
    *,
    ref: str | None,
    input_file: Path | None,
    protocol: str,
    model: str | None,
    token: str | None,
    pid: int | None,
) -> Subject:
    """An HTTP server; rows from --input, or from the reference data of the model `ref` names."""
    from cpmai.bench.loadgen import LoadSpec, run_load
    from cpmai.bench.resources import pid_listening_on

    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise UsageError(f"--url {url!r}: expected http://HOST:PORT (https is not supported)")
    base = f"http://{parts.hostname}:{parts.port or 80}"
    name = version = None
    types: dict[str, str] = {}
    names: list[str] | None = None
    artifact = None
    if ref:
        from cpmai.artifacts import open_artifact
        from cpmai.refs import resolve

        found = resolve(home, ref)
        name, version = found.name, found.version
        artifact = open_artifact(home, name, version)
        inputs = artifact.signature.inputs
        names = [spec.name for spec in inputs]
        types = {spec.name: spec.type for spec in inputs}
    if input_file is not None:
        rows = read_rows(input_file, names)
    elif artifact is not None:
        rows = artifact_rows(artifact, names or [])
    else:
        raise UsageError(
            "--url needs rows to send: --input FILE, or a model NAME to take them from"
        )
    if protocol == "oip":
        model_name = model or name
        if not model_name:
            raise UsageError("--protocol oip needs the model's name: --model NAME or a TARGET")
        path = parts.path if parts.path not in ("", "/") else f"/v2/models/{model_name}/infer"
    else:
        path = parts.path if parts.path not in ("", "/") else "/invocations"
    from cpmai.serving import origin

    # load is not customers: the server logs it apart (monitor, report and cost leave it out)
    headers = {origin.HEADER: origin.header_value(origin.BENCH_SOURCE)}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    listening = pid or (
        pid_listening_on(parts.port or 80) if parts.hostname in ("127.0.0.1", "localhost") else None
    )

    def run_level(level: Level, settings: Settings) -> LoadResult:
        bodies = [
            _body(protocol, rows[i : i + level.batch_size], types)
            for i in range(0, min(len(rows), 64 * level.batch_size), level.batch_size)
        ]
        spec = LoadSpec(
            url=base,
            path=path,
            bodies=bodies,
            headers=headers,
            concurrency=level.concurrency,
            rate=level.rate,
            arrival=settings.arrival,
            seed=settings.seed,
            warmup_s=settings.warmup_s,
            duration_s=settings.duration_s,
            min_requests=settings.min_requests,
            max_duration_s=settings.max_duration_s,
        )
        return run_load(spec, settings.workers)

    return Subject(
        kind="http",
        name=name,
        version=version,
        url=base,
        path=path,
        protocol=protocol,
        pid=listening,
        run_level=run_level,
    )


def _body(protocol: str, rows: list[dict[str, Any]], types: dict[str, str]) -> bytes:
    if protocol == "mlflow":
        columns = list(rows[0])
        return orjson.dumps(
            {
                "dataframe_split": {
                    "columns": columns,
                    "data": [[r[c] for c in columns] for r in rows],
                }
            }
        )
    inputs = []
    for column in rows[0]:
        values = [r[column] for r in rows]
        kind = types.get(column)
        datatype = _OIP_TYPES.get(kind or "") or _guess(values[0])
        inputs.append(
            {"name": column, "shape": [len(values), 1], "datatype": datatype, "data": values}
        )
    return orjson.dumps({"inputs": inputs})


def _guess(value: Any) -> str:
    if isinstance(value, bool):
        return "BOOL"
    if isinstance(value, int):
        return "INT64"
    if isinstance(value, float):
        return "FP64"
    return "BYTES"
