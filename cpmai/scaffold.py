"""`cpmai init`: write a commented manifest to start from, or copy a worked example."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from cpmai.errors import UsageError
from cpmai.fsutil import write_atomic

MANIFEST_NAME = "cpmai.yaml"
# What an example is made of; train.py writes the model and data/ when it runs.
EXAMPLE_FILES = (MANIFEST_NAME, "train.py", "traffic.py", "ask.py")


def write_manifest(directory: Path, *, name: str | None = None, force: bool = False) -> Path:
    """Write `directory/cpmai.yaml` from the commented template. Refuses to overwrite."""
    target = directory / MANIFEST_NAME
    if target.exists() and not force:
        raise UsageError(f"{target} already exists", hint="pass --force to overwrite it")
    model_name = name or _slug(directory.resolve().name) or "my-model"
    _check_name(model_name)
    template = resources.files("cpmai.templates").joinpath("cpmai.yaml").read_text("utf-8")
    directory.mkdir(parents=True, exist_ok=True)
    target.write_text(template.replace("{{name}}", model_name), encoding="utf-8")
    return target


def examples_root() -> Path:
    """The packaged examples (a wheel carries them under cpmai/examples), else the checkout's."""
    packaged = Path(str(resources.files("cpmai"))) / "examples"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "examples"


def example_names() -> list[str]:
    root = examples_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST_NAME).is_file())


def write_example(
    directory: Path, example: str, *, name: str | None = None, force: bool = False
) -> list[Path]:
    """Copy example `example` (manifest and scripts) into `directory`. Refuses to overwrite."""
    known = example_names()
    if example not in known:
        raise UsageError(
            f"no example named {example!r}", hint=f"known: {', '.join(known) or 'none'}"
        )
    source = examples_root() / example
    targets = [directory / file for file in EXAMPLE_FILES if (source / file).is_file()]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise UsageError(f"already there: {', '.join(existing)}", hint="pass --force to overwrite")
    if name is not None:
        _check_name(name)
    directory.mkdir(parents=True, exist_ok=True)
    for target in targets:
        text = (source / target.name).read_text("utf-8")
        if name is not None and target.name == MANIFEST_NAME:
            text = re.sub(r"(?m)^name: .*$", f"name: {name}", text, count=1)
        write_atomic(target, text.encode("utf-8"))
    return targets


def _check_name(name: str) -> None:
    if not re.match(r"^[a-z0-9][a-z0-9._-]{0,62}$", name):
        raise UsageError(f"{name!r} is not a valid model name (lower-case, digits, . _ -)")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")[:63]
