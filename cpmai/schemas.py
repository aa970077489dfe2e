"""The JSON Schemas of cpmai's `--json` documents, generated from the models that build them.

One registry of (file under docs/, model) pairs: `python -m cpmai.schemas` writes every file,
and a test keeps each committed file equal to `document_schema(file)`. Models are named by
import path so that importing this module stays cheap. (The manifest's schema is
`cpmai.manifest_file.json_schema`, written by `cpmai schema`.)
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Document:
    """A JSON document cpmai prints, and the model whose schema describes it."""

    model: str
    """`module:Class` of the pydantic model."""
    id: str
    title: str


DOCUMENTS: dict[str, Document] = {
    "bench.schema.json": Document(
        "cpmai.bench.result:BenchResult",
        "https://cpmai.dev/schema/bench.json",
        "cpmai bench result (cpmai-bench/1)",
    ),
    "cost.schema.json": Document(
        "cpmai.costs.document:CostDocument",
        "https://cpmai.dev/schema/cost.json",
        "cpmai cost result (cpmai-cost/1)",
    ),
    "monitor.schema.json": Document(
        "cpmai.monitor.result:MonitorResult",
        "https://cpmai.dev/schemas/monitor.schema.json",
        "cpmai monitor --json",
    ),
    "report.schema.json": Document(
        "cpmai.report.document:Report",
        "https://cpmai.dev/schema/report.json",
        "cpmai report (cpmai-report/1)",
    ),
}
"""docs/FILE → the document it describes."""


def document_schema(file: str) -> dict[str, Any]:
    """The JSON Schema of the document `docs/<file>` describes, from its model."""
    document = DOCUMENTS[file]
    module, name = document.model.split(":")
    model = getattr(importlib.import_module(module), name)
    schema: dict[str, Any] = model.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": document.id,
        **schema,
        "title": document.title,
    }


def render(file: str) -> str:
    """The text of `docs/<file>` as it is committed."""
    return json.dumps(document_schema(file), indent=2, ensure_ascii=False) + "\n"


def write_all(folder: Path) -> list[Path]:
    """Write every registered schema into `folder` (docs/); returns the files written."""
    written = []
    for file in DOCUMENTS:
        path = folder / file
        path.write_text(render(file), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":  # python -m cpmai.schemas: regenerate docs/*.schema.json
    write_all(Path(__file__).resolve().parent.parent / "docs")
