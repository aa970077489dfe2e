"""What runs on Ray's workers for `cpmai.batch.ray_engine`: the scoring actor, which loads the
model once from the artifact files shipped through the object store (each checked against
`artifact.json`, whose listing must give the digest the ledger recorded), then checks, scores
and writes a block at a time — a Parquet file in the output's hidden folder, or a transaction on
the output table — and returns a row of counts for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpmai.batch.chunks import PROBABILITY, REFUSED, ChunkScorer, Scored
from cpmai.batch.locations import SqlLocation
from cpmai.batch.sql import (
    RUN_ID,
    SCORED_AT,
    VERSION,
    SqlSink,
    check_key_values,
    connect_error,
    native_key,
)
from cpmai.errors import CpmaiError, IntegrityError, UsageError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from cpmai.artifacts import Artifact


@dataclass(frozen=True)
class Spec:
    """What every scoring actor needs, picklable (no open model, engine or file)."""

    name: str
    version: str
    digest: str
    meta: dict[str, Any]
    runtime: str
    probabilities: bool
    where: str
    key: tuple[str, ...]
    check_key: bool  # each block's key present and unique: for a table input or output
    run_id: str
    folder: str | None  # the hidden folder of a Parquet output
    sql: SqlLocation | None
    table: str | None
    key_types: dict[str, Any]
    outputs: dict[str, Any]
    prediction_type: str  # of `prediction` in every file: int64, bool, float64 or string


def artifact_files(artifact: Artifact) -> dict[str, bytes]:
    """The files the model loads from: all but the reference and holdout data."""
    listed = [str(rel) for rel in artifact.meta["files"] if not str(rel).startswith("data/")]
    return {rel: (artifact.path / rel).read_bytes() for rel in listed}


def _unpack(spec: Spec, files: dict[str, bytes], folder: Path) -> Artifact:
    """The shipped files written to `folder`, each checked against `artifact.json`, whose
    listing must give the digest the ledger recorded (checked on the driver)."""
    from cpmai.artifacts import ARTIFACT_FILE, Artifact, digest_of

    what = f"refusing to load {spec.name} {spec.version} on a Ray worker"
    listed: dict[str, str] = {str(k): str(v) for k, v in spec.meta["files"].items()}
    if digest_of(listed) != spec.digest:
        raise IntegrityError(f"{what}: its file list does not match the recorded digest")
    for rel, data in files.items():
        target = (folder / rel).resolve()
        if rel not in listed or not target.is_relative_to(folder.resolve()):
            raise IntegrityError(f"{what}: {rel} is not one of its files")
        if hashlib.sha256(data).hexdigest() != listed[rel]:
            raise IntegrityError(f"{what}: {rel} arrived changed (SHA-256 differs)")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (folder / ARTIFACT_FILE).write_text(json.dumps(spec.meta), encoding="utf-8")
    return Artifact(spec.name, spec.version, spec.digest, folder, spec.meta)


class BlockScorer:
    """A scoring actor: the model loaded once, then a block at a time scored and written, and
    a row of counts returned for it. cpmai's errors are returned in that row (`error`): a task
    that raises reaches the driver wrapped by Ray, without them."""

    def __init__(self, spec: Spec, shipped: list[Any]) -> None:
        import tempfile

        import ray

        from cpmai.runtime.predictor import Predictor

        self.spec = spec
        self.failed: CpmaiError | None = None
        folder = Path(tempfile.mkdtemp(prefix="cpmai-artifact-"))
        try:
            artifact = _unpack(spec, ray.get(shipped[0]), folder)
            predictor = Predictor.from_artifact(artifact, runtime=spec.runtime)
            self.scorer = ChunkScorer(predictor, probabilities=spec.probabilities)
            self.sink = SqlSink(spec.sql, spec.table) if spec.sql and spec.table else None
            if self.sink is not None:  # created by the driver: reflected
                self.sink.prepare(spec.key_types, spec.outputs)
        except CpmaiError as exc:
            self.failed = exc
        except Exception as exc:  # a worker without the model's runtime, say: said, not raised
            self.failed = UsageError(f"a Ray worker could not load the model: {exc}")
        finally:  # loaded into memory: the files are no longer needed
            shutil.rmtree(folder, ignore_errors=True)

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        import pandas as pd

        counts: dict[str, Any] = {"rows": len(frame), "scored": 0, "refused": 0, "reasons": "{}"}
        counts["error"] = counts["error_kind"] = ""
        try:
            if self.failed is not None:
                raise self.failed
            counts.update(self._score(frame))
        except CpmaiError as exc:
            counts["error"], counts["error_kind"] = exc.message, type(exc).__name__
        return pd.DataFrame({name: [value] for name, value in counts.items()})

    def _score(self, frame: pd.DataFrame) -> dict[str, Any]:
        spec = self.spec
        if spec.check_key:
            check_key_values(frame, list(spec.key), 0)
        scored = self.scorer.score(frame, on_refused="keep", where=spec.where)
        if self.sink is not None:
            self._write_rows(self.sink, frame, scored)
        elif spec.folder is not None:
            import pyarrow.parquet as pq

            name = f"part-{uuid.uuid4().hex}.parquet"
            partial = Path(spec.folder) / f".{name}.partial"
            pq.write_table(_output_table(frame, scored, self.scorer.output_names, spec), partial)
            partial.replace(partial.with_name(name))
        reasons = json.dumps(dict(Counter(scored.refused.values())))
        return {
            "scored": len(scored.served_rows),
            "refused": len(scored.refused),
            "reasons": reasons,
        }

    def _write_rows(self, sink: SqlSink, frame: pd.DataFrame, scored: Scored) -> None:
        """What `_TableSink` writes: key, outputs, version, run id, time, refusal."""
        count, spec = len(frame), self.spec
        rows = {k: [native_key(v) for v in frame[k].tolist()] for k in spec.key}
        rows.update(scored.columns())
        rows[VERSION], rows[RUN_ID] = [spec.version] * count, [spec.run_id] * count
        rows[SCORED_AT] = [datetime.now(UTC)] * count
        rows[REFUSED] = [scored.refused.get(i) for i in range(count)]
        try:
            with sink.engine.begin() as conn:
                sink.write(conn, rows)
        except UsageError:
            raise
        except Exception as exc:
            raise connect_error(sink.where, exc) from None


def _output_table(frame: pd.DataFrame, scored: Scored, names: list[str], spec: Spec) -> pa.Table:
    """A block of a Parquet output: the input's columns as the local engine writes them, then
    the outputs and `refused`, typed alike in every file (a block of refused rows only still
    has an int64 prediction; the pandas metadata, which would say otherwise, is left out)."""
    import pyarrow as pa

    table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
    table = table.drop_columns([n for n in [*names, REFUSED] if n in table.column_names])
    kinds = {"int64": pa.int64(), "bool": pa.bool_(), "float64": pa.float64()}
    columns = scored.columns()
    for name in names:
        kind = pa.float64() if name.startswith(PROBABILITY) else kinds.get(spec.prediction_type)
        try:
            values = pa.array(columns[name], type=kind or pa.large_string())
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # labels of a model that has no classes
            values = pa.array(columns[name])
        table = table.append_column(name, values)
    refused = [scored.refused.get(i) for i in range(len(frame))]
    return table.append_column(REFUSED, pa.array(refused, type=pa.large_string()))


def error_of(kind: str, message: str) -> CpmaiError:
    """An error a scoring actor returned, as the class it was raised as."""
    from cpmai import errors

    found = getattr(errors, kind, None)
    if isinstance(found, type) and issubclass(found, CpmaiError):
        with contextlib.suppress(TypeError):  # a class of its own arguments (ManifestError)
            return found(message)
    return UsageError(message)
