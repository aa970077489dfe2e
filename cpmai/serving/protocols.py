"""The two request shapes real clients send, turned into columns (name → list of values).

- Open Inference Protocol v2 (KServe, Triton, MLServer clients): one tensor per feature, or one
  [rows, features] tensor; JSON, or Triton's binary tensor extension (a JSON header followed by
  raw bytes, its length in `Inference-Header-Content-Length`), which tritonclient sends by
  default.
- MLflow scoring (`/invocations`): `dataframe_split`, `dataframe_records`, `instances`, `inputs`,
  or `text/csv`.

Anything malformed raises RequestError(400) naming what is wrong.
"""

from __future__ import annotations

import csv
import io
import struct
from typing import TYPE_CHECKING, Any

import orjson

from cpmai.serving.validation import RequestError

if TYPE_CHECKING:
    from cpmai.runtime.predictor import Predictor

Raw = dict[str, list[Any]]
MAX_DEPTH = 32

OIP_DATATYPES = {
    "integer": "INT64",
    "number": "FP64",
    "boolean": "BOOL",
    "category": "BYTES",
    "string": "BYTES",
}
_NUMERIC_DATATYPES = frozenset(
    {
        "FP16",
        "FP32",
        "FP64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
    }
)
_BINARY_FORMATS = {
    "FP32": "<f4",
    "FP64": "<f8",
    "FP16": "<f2",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "BOOL": "?",
}


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, f"malformed JSON: {exc}") from None


# --- Open Inference Protocol v2 ---------------------------------------------------------------


def oip_request(
    body: bytes, header_length: str | None, names: list[str], kinds: dict[str, str]
) -> tuple[dict[str, Any], Raw]:
    """The request document and its columns."""
    binary = b""
    if header_length is not None:
        try:
            cut = int(header_length)
        except ValueError:
            raise RequestError(400, "Inference-Header-Content-Length is not a number") from None
        if not 0 <= cut <= len(body):
            raise RequestError(400, "Inference-Header-Content-Length is larger than the body")
        body, binary = body[:cut], body[cut:]
    doc = parse_json(body)
    if not isinstance(doc, dict):
        raise RequestError(400, "the request must be a JSON object with an `inputs` list")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(400, "`inputs` must be a non-empty list of tensors")
    tensors = []
    offset = 0
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise RequestError(400, f"inputs[{i}] must be an object")
        name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
        if not isinstance(name, str):
            raise RequestError(400, f"inputs[{i}].name must be a string")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise RequestError(400, f"inputs[{i}] ({name}): shape must be a list of sizes")
        if not isinstance(datatype, str):
            raise RequestError(400, f"inputs[{i}] ({name}): datatype must be a string")
        size = 1
        for dim in shape:
            size *= dim
        params = tensor.get("parameters")
        binary_size = params.get("binary_data_size") if isinstance(params, dict) else None
        if binary_size is not None:
            if (
                type(binary_size) is not int
                or binary_size < 0
                or offset + binary_size > len(binary)
            ):
                raise RequestError(400, f"inputs[{i}] ({name}): bad binary_data_size")
            data = _decode_binary(binary[offset : offset + binary_size], datatype, size, name)
            offset += binary_size
        else:
            if "data" not in tensor:
                raise RequestError(400, f"inputs[{i}] ({name}): no data")
            data = _flatten(tensor["data"], name)
        if len(data) != size:
            raise RequestError(
                400, f"inputs[{i}] ({name}): shape {shape} needs {size} values, got {len(data)}"
            )
        tensors.append((name, shape, datatype, data))

    if all(t[0] in kinds for t in tensors):
        raw: Raw = {}
        for name, shape, datatype, data in tensors:
            if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
                raise RequestError(
                    400, f"input {name!r}: a per-feature tensor has shape [rows] or [rows, 1]"
                )
            raw[name] = _typed(data, datatype, kinds[name], name)
        return doc, raw
    if len(tensors) == 1 and len(tensors[0][1]) == 2 and tensors[0][1][1] == len(names):
        name, shape, datatype, data = tensors[0]
        width = len(names)
        rows = shape[0]
        raw = {
            column: _typed(
                [data[r * width + c] for r in range(rows)], datatype, kinds[column], column
            )
            for c, column in enumerate(names)
        }
        return doc, raw
    given = ", ".join(f"{t[0]}{t[1]}" for t in tensors)
    raise RequestError(
        400,
        f"inputs {given} match neither one tensor per feature ({', '.join(names)}) nor one "
        f"[rows, {len(names)}] tensor",
    )


def _typed(values: list[Any], datatype: str, kind: str, name: str) -> list[Any]:
    """OIP sends numbers as numbers and BYTES as strings; a [rows, features] BYTES tensor may
    carry numbers as text, which are parsed here (validation then checks the result)."""
    if kind in ("number", "integer") and datatype == "BYTES":
        out = []
        for value in values:
            if isinstance(value, str):
                try:
                    out.append(float(value))
                    continue
                except ValueError:
                    raise RequestError(
                        422, f"input {name!r}: expected a number, got {value[:40]!r}"
                    ) from None
            out.append(value)
        return out
    if kind in ("category", "string") and datatype in _NUMERIC_DATATYPES:
        raise RequestError(422, f"input {name!r}: expected BYTES (text), got {datatype}")
    return values


def _decode_binary(chunk: bytes, datatype: str, size: int, name: str) -> list[Any]:
    if datatype == "BYTES":
        out, pos = [], 0
        while pos < len(chunk):
            if pos + 4 > len(chunk):
                raise RequestError(400, f"input {name!r}: truncated BYTES element")
            (length,) = struct.unpack_from("<I", chunk, pos)
            pos += 4
            if pos + length > len(chunk):
                raise RequestError(400, f"input {name!r}: truncated BYTES element")
            try:
                out.append(chunk[pos : pos + length].decode("utf-8"))
            except UnicodeDecodeError:
                raise RequestError(400, f"input {name!r}: BYTES element is not UTF-8") from None
            pos += length
        return out
    fmt = _BINARY_FORMATS.get(datatype)
    if fmt is None:
        raise RequestError(400, f"input {name!r}: unknown datatype {datatype!r}")
    import numpy as np

    itemsize = np.dtype(fmt).itemsize
    if len(chunk) != size * itemsize:
        raise RequestError(
            400, f"input {name!r}: {len(chunk)} bytes is not {size} × {datatype} values"
        )
    values: list[Any] = np.frombuffer(chunk, dtype=fmt).tolist()
    return values


def _flatten(data: Any, name: str) -> list[Any]:
    """Row-major values of a flat or nested list (bounded depth)."""
    if isinstance(data, dict):
        raise RequestError(400, f"input {name!r}: data must be a list of values")
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        if any(isinstance(v, list | dict) for v in data):
            raise RequestError(400, f"input {name!r}: data mixes lists and values")
        return data
    return _flatten_ordered(data, name, 1)


def _flatten_ordered(data: list[Any], name: str, depth: int) -> list[Any]:
    if depth > MAX_DEPTH:
        raise RequestError(400, f"input {name!r}: data nested deeper than {MAX_DEPTH}")
    out: list[Any] = []
    for item in data:
        if isinstance(item, list):
            out.extend(_flatten_ordered(item, name, depth + 1))
        elif isinstance(item, dict):
            raise RequestError(400, f"input {name!r}: data holds an object")
        else:
            out.append(item)
    return out


def oip_response(
    model: str,
    version: str,
    request_id: Any,
    labels: list[Any],
    label_datatype: str,
    probabilities: list[list[float]] | None,
) -> bytes:
    """The infer response; probabilities go out as nested rows (row-major, as OIP allows)."""
    outputs: list[dict[str, Any]] = [
        {"name": "prediction", "shape": [len(labels)], "datatype": label_datatype, "data": labels}
    ]
    if probabilities is not None:
        width = len(probabilities[0]) if probabilities else 0
        outputs.append(
            {
                "name": "probabilities",
                "shape": [len(probabilities), width],
                "datatype": "FP64",
                "data": probabilities,
            }
        )
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": outputs}
    if request_id is not None:
        doc["id"] = request_id
    return orjson.dumps(doc)


# --- MLflow scoring protocol ------------------------------------------------------------------

MLFLOW_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")


def mlflow_request(
    body: bytes, content_type: str, names: list[str], kinds: dict[str, str]
) -> tuple[Raw, dict[str, Any]]:
    """Columns and the `params` object of an /invocations request."""
    if content_type.startswith("text/csv"):
        return _csv(body, kinds), {}
    doc = parse_json(body)
    if not isinstance(doc, dict):
        raise RequestError(400, f"the body must be a JSON object with one of {_keys()}")
    present = [k for k in MLFLOW_KEYS if k in doc]
    extra = [k for k in doc if k not in (*MLFLOW_KEYS, "params")]
    if len(present) != 1 or extra:
        found = ", ".join(repr(k) for k in doc) or "none"
        raise RequestError(
            400, f"expected exactly one of {_keys()} (and optionally 'params'); found keys: {found}"
        )
    params = doc.get("params") or {}
    if not isinstance(params, dict):
        raise RequestError(400, "`params` must be an object")
    key = present[0]
    value = doc[key]
    if key == "dataframe_split":
        return _split(value, names), params
    if key == "dataframe_records":
        return _records(value, "dataframe_records"), params
    if key == "inputs" and isinstance(value, dict):
        return {str(k): v if isinstance(v, list) else [v] for k, v in value.items()}, params
    return _rows(value, key, names), params


def _keys() -> str:
    return ", ".join(repr(k) for k in MLFLOW_KEYS)


def _split(value: Any, names: list[str]) -> Raw:
    if not isinstance(value, dict):
        raise RequestError(400, "dataframe_split must be an object with `columns` and `data`")
    columns = value.get("columns", names)
    data = value.get("data")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise RequestError(400, "dataframe_split.columns must be a list of names")
    if not isinstance(data, list) or not all(isinstance(r, list) for r in data):
        raise RequestError(400, "dataframe_split.data must be a list of rows (lists)")
    return _columns_from_rows(columns, data, "dataframe_split.data")


def _records(value: Any, where: str) -> Raw:
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise RequestError(400, f"{where} must be a list of objects")
    keys: dict[str, None] = {}
    for record in value:
        keys.update(dict.fromkeys(record))
    return {str(k): [record.get(k) for record in value] for k in keys}


def _rows(value: Any, key: str, names: list[str]) -> Raw:
    if not isinstance(value, list) or not value:
        raise RequestError(400, f"{key} must be a non-empty list")
    if all(isinstance(r, dict) for r in value):
        return _records(value, key)
    if all(isinstance(r, list) for r in value):
        return _columns_from_rows(names, value, key)
    if len(names) == 1 and not any(isinstance(r, list | dict) for r in value):
        return {names[0]: value}
    raise RequestError(400, f"{key} must be a list of rows (lists) or of objects")


def _columns_from_rows(columns: list[str], rows: list[list[Any]], where: str) -> Raw:
    width = len(columns)
    for i, row in enumerate(rows):
        if len(row) != width:
            raise RequestError(400, f"{where}[{i}] has {len(row)} values for {width} columns")
    return {name: [row[c] for row in rows] for c, name in enumerate(columns)}


def _csv(body: bytes, kinds: dict[str, str]) -> Raw:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise RequestError(400, "the CSV body is not UTF-8") from None
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
        rows = list(reader)
    except StopIteration:
        raise RequestError(400, "the CSV body is empty") from None
    except csv.Error as exc:
        raise RequestError(400, f"malformed CSV: {exc}") from None
    raw = _columns_from_rows(header, [r for r in rows if r], "CSV row")
    for name, values in raw.items():
        kind = kinds.get(name)
        if kind in ("number", "integer"):
            raw[name] = [_csv_number(v, name) for v in values]
        elif kind == "boolean":
            raw[name] = [None if v == "" else v.lower() in ("true", "1") for v in values]
        else:
            raw[name] = [None if v == "" else v for v in values]
    return raw


def _csv_number(text: str, name: str) -> Any:
    if text == "":
        return None
    try:
        number = float(text)
    except ValueError:
        raise RequestError(422, f"input {name!r}: expected a number, got {text[:40]!r}") from None
    return int(number) if number.is_integer() and "." not in text and "e" not in text else number


def model_metadata(
    name: str, version: str, predictor: Predictor, label_datatype: str
) -> dict[str, Any]:
    """The Open Inference Protocol's model metadata (`GET /v2/models/{name}`)."""
    inputs = [
        {
            "name": spec.name,
            "datatype": OIP_DATATYPES[spec.type],
            "shape": [-1, 1],
        }
        for spec in predictor.inputs
    ]
    outputs = [{"name": "prediction", "datatype": label_datatype, "shape": [-1]}]
    if predictor.has_proba and predictor.classes:
        outputs.append(
            {
                "name": "probabilities",
                "datatype": "FP64",
                "shape": [-1, len(predictor.classes)],
            }
        )
    platform = "onnxruntime_onnx" if predictor.flavor == "onnx" else "sklearn"
    return {
        "name": name,
        "versions": [version],
        "platform": platform,
        "inputs": inputs,
        "outputs": outputs,
        "parameters": {"classes": predictor.classes} if predictor.classes else {},
    }
