"""The manifest reference in Markdown, generated from the schema (docs/manifest.md)."""

from __future__ import annotations

import types
import typing
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from cpmai.manifest import Manifest


def render_reference() -> str:
    """Every section and field of the manifest: type, default and what it means."""
    lines = [
        "# Manifest reference",
        "",
        "Generated from the schema by `cpmai schema --markdown`; a test keeps this file in sync.",
        "Unknown keys are errors. Relative paths resolve against the manifest's folder.",
        "The JSON Schema (for editors) is [manifest.schema.json](manifest.schema.json).",
        "",
    ]
    sections: list[tuple[str, type[BaseModel]]] = [("(top level)", Manifest)]
    seen: set[type[BaseModel]] = {Manifest}
    index = 0
    while index < len(sections):
        title, model = sections[index]
        index += 1
        lines += [f"## {title}", ""]
        if model.__doc__ and model is not Manifest:
            lines += [" ".join(model.__doc__.split()), ""]
        lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for field_name, info in model.model_fields.items():
            name = info.alias or field_name  # as the manifest spells it (`for`)
            lines.append(
                f"| `{name}` | {_type(info.annotation)} | {_default(info)} | "
                f"{' '.join((info.description or '').split())} |"
            )
            for nested in _models_in(info.annotation):
                if nested not in seen:
                    seen.add(nested)
                    prefix = "" if title == "(top level)" else f"{title}."
                    sections.append((f"{prefix}{name}", nested))
        lines.append("")
    return "\n".join(lines)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in get_args(annotation):
        found += _models_in(arg)
    return found


def _type(annotation: Any) -> str:
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin in (typing.Union, types.UnionType):
        parts = [_type(a) for a in args if a is not type(None)]
        text = " or ".join(parts)
        return f"{text} (optional)" if type(None) in args else text
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is dict:
        return f"mapping of {_type(args[0])} to {_type(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping (below)"
    return getattr(annotation, "__name__", str(annotation))


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "see below"
    if value in ({}, [], None, ""):
        return "—"
    return f"`{value}`"
