#!/usr/bin/env python3
"""Run this bundle's model on a device. Needs Python 3.9+, numpy and onnxruntime only.

    python runner.py score INPUT.csv [--output OUT.csv] [--probabilities]
    python runner.py serve [--host 127.0.0.1] [--port 8080]

`score` reads a CSV with a header naming the model's inputs (other columns are kept as they
are) and writes it back with a `prediction` column (and one probability column per class with
--probabilities). `serve` answers POST /invocations in MLflow's format (`dataframe_records`,
`dataframe_split`, `instances` or `inputs`) with {"predictions": [...]}, and GET /ping.
Inputs are checked against signature.json: a missing column, a value that is not a number,
or an unknown category is refused with a message (exit 2, or HTTP 400), never guessed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

HERE = Path(__file__).resolve().parent
NUMPY_FOR_ONNX = {
    "tensor(double)": "float64",
    "tensor(float)": "float32",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
    "tensor(string)": "object",
}
MAX_BODY = 10 * 1024 * 1024


class InputError(ValueError):
    """Input the model cannot take; the message names the column."""


class Model:
    def __init__(self, folder: Path = HERE) -> None:
        self.signature = json.loads((folder / "signature.json").read_text())
        bundle = json.loads((folder / "bundle.json").read_text())
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(
            str(folder / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.inputs = self.signature["inputs"]
        self.names = [spec["name"] for spec in self.inputs]
        graph = self.session.get_inputs()
        self.dtypes = {i.name: NUMPY_FOR_ONNX.get(i.type, "float32") for i in graph}
        renamed = bundle.get("graph_inputs") or {}  # column -> graph input, where they differ
        self.columns_of = {renamed.get(n, n): n for n in self.names}
        self.mode = bundle.get("input_mode", "columns")
        if self.mode == "columns" and not all(i.name in self.columns_of for i in graph):
            self.mode = "matrix"
        self.matrix_name = graph[0].name
        outputs = self.session.get_outputs()
        self.label_output = outputs[0].name
        self.proba_output = outputs[1].name if len(outputs) > 1 else None
        declared = self.signature.get("outputs") or [{}]
        self.classes = declared[0].get("categories")

    def columns(self, records: list[dict[str, Any]]) -> dict[str, list[Any]]:
        """Records → one checked list per input."""
        out: dict[str, list[Any]] = {}
        for spec in self.inputs:
            name, kind = spec["name"], spec["type"]
            values = []
            for row, record in enumerate(records):
                if name not in record or record[name] in (None, ""):
                    raise InputError(f"row {row}: input {name!r} is missing")
                value = record[name]
                if kind in ("number", "integer"):
                    try:
                        value = float(value)
                    except (TypeError, ValueError):
                        raise InputError(
                            f"row {row}: input {name!r} must be a number, not {value!r}"
                        ) from None
                    if value != value or value in (float("inf"), float("-inf")):
                        raise InputError(f"row {row}: input {name!r} must be finite")
                elif kind == "category":
                    categories = spec.get("categories") or []
                    matched = [c for c in categories if str(c) == str(value)]
                    if categories and not matched:
                        raise InputError(
                            f"row {row}: input {name!r}: unknown category {value!r} "
                            f"(known: {', '.join(map(str, categories))})"
                        )
                    value = matched[0] if matched else value
                values.append(value)
            out[name] = values
        return out

    def feed(self, columns: dict[str, list[Any]]) -> dict[str, Any]:
        if self.mode == "matrix":
            dtype = self.dtypes[self.matrix_name]
            matrix = np.column_stack([np.asarray(columns[n], dtype=dtype) for n in self.names])
            return {self.matrix_name: matrix}
        feed = {}
        for name, dtype in self.dtypes.items():
            values = columns[self.columns_of[name]]
            if dtype == "object":
                array = np.asarray(["" if v is None else str(v) for v in values], dtype=object)
            else:
                array = np.asarray(values, dtype=dtype)
            feed[name] = array.reshape(-1, 1)
        return feed

    def predict(self, records: list[dict[str, Any]]) -> tuple[list[Any], list[list[float]] | None]:
        if not records:
            return [], None
        wanted = [self.label_output] + ([self.proba_output] if self.proba_output else [])
        outputs = self.session.run(wanted, self.feed(self.columns(records)))
        labels = np.asarray(outputs[0]).reshape(-1).tolist()
        probabilities = None
        if len(outputs) > 1:
            raw = outputs[1]
            if isinstance(raw, list) and raw and isinstance(raw[0], dict):  # a ZipMap output
                keys = list(raw[0])
                raw = [[row[k] for k in keys] for row in raw]
            probabilities = np.asarray(raw, dtype=np.float64).tolist()
        return labels, probabilities


def records_of(doc: Any) -> list[dict[str, Any]]:
    """The rows of an MLflow scoring request."""
    if not isinstance(doc, dict):
        raise InputError("expected a JSON object")
    if "dataframe_records" in doc and isinstance(doc["dataframe_records"], list):
        rows = doc["dataframe_records"]
    elif "dataframe_split" in doc and isinstance(doc["dataframe_split"], dict):
        split = doc["dataframe_split"]
        columns, data = split.get("columns"), split.get("data")
        if not isinstance(columns, list) or not isinstance(data, list):
            raise InputError("dataframe_split needs `columns` and `data` lists")
        rows = [
            dict(zip(columns, row))  # noqa: B905 (the runner supports Python 3.9: no strict=)
            for row in data
            if isinstance(row, list)
        ]
    elif isinstance(doc.get("instances"), list):
        rows = doc["instances"]
    elif isinstance(doc.get("inputs"), dict):
        columns = doc["inputs"]
        length = max((len(v) for v in columns.values() if isinstance(v, list)), default=0)
        rows = [{k: v[i] for k, v in columns.items() if isinstance(v, list)} for i in range(length)]
    else:
        raise InputError("expected dataframe_records, dataframe_split, instances or inputs")
    if not all(isinstance(row, dict) for row in rows):
        raise InputError("every row must be an object of input name → value")
    return rows


def score(model: Model, source: Path, target: Path | None, with_proba: bool) -> int:
    with source.open(newline="") as handle:
        reader = csv.DictReader(handle)
        records = list(reader)
        fields = list(reader.fieldnames or [])
    labels, probabilities = model.predict(records)
    columns = [*fields, "prediction"]
    classes = model.classes or list(range(len(probabilities[0]) if probabilities else 0))
    if with_proba and probabilities:
        columns += [f"probability_{c}" for c in classes]
    out = target.open("w", newline="") if target else sys.stdout
    try:
        writer = csv.writer(out)
        writer.writerow(columns)
        for i, record in enumerate(records):
            row = [record.get(f, "") for f in fields] + [labels[i]]
            if with_proba and probabilities:
                row += [repr(p) for p in probabilities[i]]
            writer.writerow(row)
    finally:
        if target:
            out.close()
    print(f"scored {len(records)} rows", file=sys.stderr)
    return 0


def serve(model: Model, host: str, port: int) -> int:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path in ("/ping", "/health"):
                self._send(200, {"status": "ok"})
            else:
                self._send(404, {"error": f"no such path: {self.path}"})

        def do_POST(self) -> None:
            if self.path != "/invocations":
                self._send(404, {"error": f"no such path: {self.path}"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 < length <= MAX_BODY:
                self._send(400 if length <= 0 else 413, {"error": "bad Content-Length"})
                return
            try:
                doc = json.loads(self.rfile.read(length))
                labels, probabilities = model.predict(records_of(doc))
            except (ValueError, InputError) as exc:
                self._send(400, {"error": str(exc)})
                return
            body: dict[str, Any] = {"predictions": labels}
            if probabilities is not None:
                body["probabilities"] = probabilities
            self._send(200, body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer((host, port), Handler)
    print(f"serving on http://{host}:{port}/invocations", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    scoring = commands.add_parser("score", help="score a CSV file")
    scoring.add_argument("input", type=Path)
    scoring.add_argument("--output", type=Path)
    scoring.add_argument("--probabilities", action="store_true")
    serving = commands.add_parser("serve", help="answer POST /invocations")
    serving.add_argument("--host", default="127.0.0.1")
    serving.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    model = Model()
    try:
        if args.command == "score":
            return score(model, args.input, args.output, args.probabilities)
        return serve(model, args.host, args.port)
    except (InputError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
