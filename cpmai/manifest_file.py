"""Reading a manifest file: YAML with line numbers, `extends:`, the files it names checked, and
every problem reported as `FILE:LINE field.path: message`; the JSON Schema export."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from cpmai.errors import ManifestError
from cpmai.manifest import Manifest, _CrossCheckError
from cpmai.yamlsource import Path_, YamlDocument, merge_under, read_yaml

# --- loading ---------------------------------------------------------------------------------


def load_manifest(file: str | Path, *, check_files: bool = True) -> Manifest:
    """Read, validate and (optionally) check the files a manifest names.

    Raises ManifestError listing every problem as `FILE:LINE field.path: message`.
    """
    path = Path(file)
    doc = _with_extends(read_yaml(path), seen=())
    manifest = validate_document(doc)
    if check_files:
        problems = check_manifest_files(manifest, doc)
        if problems:
            raise ManifestError(problems)
    return manifest


def _with_extends(doc: YamlDocument, seen: tuple[Path, ...]) -> YamlDocument:
    """Merge the file named by `extends:` (a team's shared defaults) under `doc`, recursively."""
    if not isinstance(doc.data, dict) or not isinstance(doc.data.get("extends"), str):
        return doc  # a wrong type is reported by validation
    base_path = (doc.file.parent / doc.data["extends"]).resolve()
    here = doc.where(("extends",))
    if base_path in seen or base_path == doc.file.resolve():
        raise ManifestError([f"{here} extends: {doc.data['extends']} extends itself (a cycle)"])
    if not base_path.is_file():
        raise ManifestError([f"{here} extends: file not found: {doc.data['extends']}"])
    base = _with_extends(read_yaml(base_path), (*seen, doc.file.resolve()))
    if not isinstance(base.data, dict):
        raise ManifestError([f"{base_path}:1: a file to extend must be a mapping"])
    base.data.pop("extends", None)
    return merge_under(base, doc)


def validate_document(doc: YamlDocument) -> Manifest:
    if not isinstance(doc.data, dict):
        kind = "empty" if doc.data is None else f"a {type(doc.data).__name__}"
        raise ManifestError(
            [f"{doc.file}:1: the manifest is {kind}; expected a mapping (name:, model:, ...)"]
        )
    try:
        manifest = Manifest.model_validate(doc.data)
    except ValidationError as exc:
        raise ManifestError(_describe(exc, doc)) from None
    manifest._file = doc.file.resolve()
    return manifest


def check_manifest_files(manifest: Manifest, doc: YamlDocument) -> list[str]:
    problems = []
    fields: list[tuple[Path_, str | None]] = [
        (("model", "path"), manifest.model.path),
        (("data", "reference"), manifest.data.reference),
        (("data", "holdout"), manifest.data.holdout),
    ]
    from cpmai.fsutil import not_regular

    for loc, rel in fields:
        if rel is None:
            continue
        path = manifest.resolve(rel)
        why = not_regular(path)
        if not path.exists():
            problems.append(f"{doc.where(loc)} {_dotted(loc)}: file not found: {rel}")
        elif why is not None and not (loc == ("model", "path") and path.is_dir()):
            problems.append(f"{doc.where(loc)} {_dotted(loc)}: {rel} {why}")
    if manifest.infers_signature and not manifest.data.reference:
        model = manifest.resolve(manifest.model.path)
        self_describing = model.suffix.lower() == ".onnx" or (model / "MLmodel").is_file()
        if not self_describing:
            problems.append(
                f"{doc.where(('signature',))} signature: `infer` needs data.reference "
                "(or list the inputs, or use an ONNX file / MLflow folder that declares them)"
            )
    return problems


def _describe(exc: ValidationError, doc: YamlDocument) -> list[str]:
    """Turn pydantic's errors into `FILE:LINE path: message` lines, one per problem."""
    out: list[tuple[int, str]] = []
    seen: set[str] = set()
    errors = exc.errors(include_url=False)
    branches = [_data_path(err["loc"], doc.data) for err in errors]
    reached = [_data_path(err["loc"], doc.data, every_branch=True) or () for err in errors]
    for err, data_loc in zip(errors, branches, strict=True):
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _CrossCheckError):
            for loc, message in ctx_error.problems:
                out.append((doc.line_of(loc), f"{doc.where(loc)} {_dotted(loc)}: {message}"))
            continue
        if data_loc is None:
            where = _data_path(err["loc"], doc.data, every_branch=True) or ()
            if any(kept is not None and kept[: len(where)] == where for kept in branches) or any(
                len(deeper) > len(where) and deeper[: len(where)] == where for deeper in reached
            ):
                continue  # a union branch that does not match the value's kind, while another
                # branch did and found what is wrong inside the value
            data_loc = where  # no branch matches the value's kind: say what each expected
        loc = data_loc
        message = _message(err, loc, doc.data)
        line = f"{doc.where(loc)} {_dotted(loc) or '(top level)'}: {message}"
        if line not in seen:
            seen.add(line)
            out.append((doc.line_of(loc), line))
    out.sort(key=lambda pair: pair[0])
    return [text for _, text in out]


def _is_tag(part: str) -> bool:
    """A union branch's name in pydantic's error location, not a key of the document."""
    return (
        "[" in part
        or part.startswith("constrained-")
        or (part[:1].isupper() and part.isidentifier())
        or part in ("str", "int", "float", "bool")
    )


def _data_path(loc: tuple[str | int, ...], data: Any, every_branch: bool = False) -> Path_ | None:
    """Drop pydantic's union tags (e.g. `list[InputSpec]`) from a location.

    Returns None when the tag names a branch that cannot match the value found there, so a
    list with a bad element reports the element, not also "expected 'infer'".
    """
    path: list[str | int] = []
    node = data
    for part in loc:
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        ):
            path.append(part)
            node = node[part]  # type: ignore[index]
        elif every_branch and isinstance(part, str) and _is_tag(part):
            continue
        elif isinstance(part, str) and part.startswith("constrained-"):
            kind = part.removeprefix("constrained-")  # a number or text with bounds
            if kind in ("int", "float") and (isinstance(node, bool | dict | list | str)):
                return None
        elif isinstance(part, str) and part.startswith(("function-after[", "function-before[")):
            branch = part[part.index("[") + 1 : -1].rsplit(",", 1)[-1].strip()
            if branch[:1].isupper() and not isinstance(node, dict):
                return None  # a model class's branch with its own validator (Autoscaling)
        elif isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool")):
            kind = part.split("[", 1)[0]
            matches = {
                "list": isinstance(node, list),
                "dict": isinstance(node, dict),
                "literal": isinstance(node, str),
                "str": isinstance(node, str),
            }.get(kind, True)
            if not matches:
                return None
        elif isinstance(part, str) and part[:1].isupper() and part.isidentifier():
            if not isinstance(node, dict):  # a model class's branch (InferredSignature)
                return None
        else:
            path.append(part)  # a missing key: point at its parent's line
            node = None
    return tuple(path)


def _message(err: Any, loc: Path_, data: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        known = _known_keys(loc[:-1])
        guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"; did you mean {guess[0]!r}?" if guess else ""
        listing = f" (known: {', '.join(known)})" if known else ""
        return f"unknown key{hint}{listing}"
    if kind == "missing":
        return "required field is missing"
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    if kind == "string_pattern_mismatch":
        if (loc[-1:] == ("name",) and len(loc) == 1) or loc[:1] == ("environments",):
            return "expected lower-case letters, digits, '.', '_' or '-' (at most 63)"
        if loc == ("version",):
            return 'expected a semantic version such as "1.2.0" (quote it)'
    if kind == "model_type":  # a model's branch of a union, given something else
        return "input should be a mapping"
    message = str(err["msg"])
    if kind in ("string_type",) and isinstance(err.get("input"), int | float):
        message += " (quote it)"
    return message[:1].lower() + message[1:]


def _known_keys(loc: Path_) -> list[str]:
    """The field names allowed at `loc`, walking the schema's annotations."""
    annotation: Any = Manifest
    for part in loc:
        annotation = _step(annotation, part)
        if annotation is None:
            return []
    model = _step(annotation, None)
    return list(model.model_fields) if model is not None else []


def _step(annotation: Any, part: str | int | None) -> Any:
    """The annotation one level below `annotation` at key/index `part` (None: the model itself)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if part is None:
            return annotation
        field_info = annotation.model_fields.get(str(part))
        return field_info.annotation if field_info else None
    origin = getattr(annotation, "__origin__", None)
    args: tuple[Any, ...] = getattr(annotation, "__args__", ())
    if origin is dict:
        return args[1] if part is not None else None
    if origin is list:
        return args[0] if part is not None else None
    for arg in args:  # a union or Annotated[...]
        found = _step(arg, part)
        if found is not None:
            return found
    return None


def _dotted(loc: Path_) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def json_schema() -> dict[str, Any]:
    """The manifest's JSON Schema, for editors (yaml-language-server) and other tools."""
    schema = Manifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://cpmai.dev/schema/manifest.json"
    return schema
