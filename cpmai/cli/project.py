"""`cpmai init`, `cpmai validate`, `cpmai schema`: starting and checking a manifest."""

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cpmai.cli import output
from cpmai.cli.options import JsonFlag, flag, option
from cpmai.cli.output import emit_json, info, show, wants_json


def name_or_manifest(text: str) -> tuple[str, Any]:
    """A model name, or a manifest file (then its name and the manifest, whose current settings
    apply)."""
    path = Path(text)
    if text.endswith((".yaml", ".yml")) or path.is_file():
        from cpmai.manifest_file import load_manifest

        manifest = load_manifest(path, check_files=False)
        return manifest.name, manifest
    return text, None


def init(
    directory: Annotated[Path, typer.Argument(help="Where to write cpmai.yaml.")] = Path(),
    name: Annotated[str | None, option("Model name (default: the folder's name).")] = None,
    force: Annotated[bool, flag("--force", "Overwrite an existing cpmai.yaml.")] = False,
    example: Annotated[
        str | None,
        option(
            "Copy a worked example instead (its manifest, train.py, traffic.py and ask.py): churn."
        ),
    ] = None,
    json_: JsonFlag = False,
) -> None:
    """Scaffold a commented cpmai.yaml to edit, or copy a worked example (--example churn)."""
    from cpmai.scaffold import write_example, write_manifest

    if example is not None:
        files = write_example(directory, example, name=name, force=force)
        if wants_json(json_):
            emit_json({"manifest": str(files[0]), "files": [str(f) for f in files]})
            return
        show(f"wrote {', '.join(str(f) for f in files)}")
        info(
            f"next: cd {directory} && python train.py, then `cpmai deploy cpmai.yaml --env staging`"
        )
        return
    path = write_manifest(directory, name=name, force=force)
    if wants_json(json_):
        emit_json({"manifest": str(path)})
        return
    show(f"wrote {path}")
    info("next: edit model.path and data:, then run `cpmai validate " + str(path) + "`")


def validate(
    manifests: Annotated[
        list[Path] | None,
        typer.Argument(
            help="The manifest (cpmai.yaml), or several (a pre-commit hook passes them all).",
            show_default=False,
            metavar="MANIFEST",
        ),
    ] = None,
    schema: Annotated[bool, flag("--schema", "Print the manifest's JSON Schema instead.")] = False,
    no_files: Annotated[
        bool,
        flag(
            "--no-files",
            "Check the schema only, not that the files named exist (a commit hook, where "
            "models and data are not checked in).",
        ),
    ] = False,
    json_: JsonFlag = False,
) -> None:
    """Check a manifest against the schema and check the files it names exist.

    Every problem is reported as FILE:LINE field.path: message. Exit 2 when one is invalid
    (every manifest given is checked and reported first). With --json, one document for one
    manifest, a list for several.
    """
    from cpmai.errors import ManifestError, UsageError

    if schema:
        _print_schema()
        return
    if not manifests:
        raise UsageError("missing MANIFEST", hint="cpmai validate cpmai.yaml")
    from cpmai.manifest_file import load_manifest

    docs: list[dict[str, Any]] = []
    problems: list[str] = []
    for manifest in manifests:
        try:
            spec = load_manifest(manifest, check_files=not no_files)
        except ManifestError as exc:
            docs.append({"valid": False, "manifest": str(manifest), "problems": exc.problems})
            problems += exc.problems
            if len(manifests) == 1 and not wants_json(json_):
                raise
            continue
        docs.append(
            {
                "valid": True,
                "manifest": str(manifest),
                "name": spec.name,
                "task": spec.model.task,
                "environments": list(spec.environments),
            }
        )
        if not wants_json(json_):
            envs = ", ".join(spec.environments) or "no environments"
            show(f"✓ {manifest}: {spec.name} ({spec.model.task}; {envs}) is valid")
    if wants_json(json_):
        emit_json(docs[0] if len(manifests) == 1 else docs)
    if problems:
        raise ManifestError(problems)


def schema(
    out: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")
    ] = None,
    markdown: Annotated[
        bool, flag("--markdown", "The manifest reference in Markdown instead.")
    ] = False,
) -> None:
    """Print the manifest's JSON Schema (for editor completion and other tools)."""
    _print_schema(out, markdown=markdown)


def _print_schema(out: Path | None = None, *, markdown: bool = False) -> None:
    if markdown:
        from cpmai.schema_docs import render_reference

        text = render_reference()
    else:
        from cpmai.manifest_file import json_schema

        text = json.dumps(json_schema(), indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
        output.OPTIONS.json_written = True
    else:
        out.write_text(text, encoding="utf-8")
        info(f"wrote {out}")
