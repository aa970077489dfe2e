"""`cpmai init`: write a commented manifest to start from."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from cpmai.errors import UsageError

MANIFEST_NAME = "cpmai.yaml"


def write_manifest(directory: Path, *, name: str | None = None, force: bool = False) -> Path:
    """Write `directory/cpmai.yaml` from the commented template. Refuses to overwrite."""
    target = directory / MANIFEST_NAME
    if target.exists() and not force:
        raise UsageError(f"{target} already exists", hint="pass --force to overwrite it")
    model_name = name or _slug(directory.resolve().name) or "my-model"
    if not re.match(r"^[a-z0-9][a-z0-9._-]{0,62}$", model_name):
        raise UsageError(f"{model_name!r} is not a valid model name (lower-case, digits, . _ -)")
    template = resources.files("cpmai.templates").joinpath("cpmai.yaml").read_text("utf-8")
    directory.mkdir(parents=True, exist_ok=True)
    target.write_text(template.replace("{{name}}", model_name), encoding="utf-8")
    return target


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")[:63]
