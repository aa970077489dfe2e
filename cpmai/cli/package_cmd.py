"""`cpmai package`: build the immutable artifact."""

from cpmai.cli.options import JsonFlag, ManifestArg
from cpmai.cli.output import OPTIONS, detail, emit_json, show, shown_path, wants_json, warn


def package(manifest: ManifestArg, json_: JsonFlag = False) -> None:
    """Build the artifact: model, data, resolved manifest, signature, environment, model card,
    and the SHA-256 of every file. Identical content is recognised, not packaged twice."""
    from cpmai.artifacts import package as build
    from cpmai.manifest_file import load_manifest
    from cpmai.settings import resolve_actor, resolve_home

    spec = load_manifest(manifest)
    result = build(spec, resolve_home(OPTIONS.home), actor=resolve_actor(OPTIONS.actor))
    for step in result.steps:
        detail(f"{step.name:<30} {step.seconds * 1000:8.1f} ms  {step.note}")
    if wants_json(json_):
        emit_json(result.to_dict())
        return
    size = _size(result.size_bytes)
    if result.created:
        show(
            f"packaged [bold]{result.name} {result.version}[/bold]  sha256:{result.digest[:16]}  "
            f"({size}, {result.format}, {len(result.files)} files)"
        )
    else:
        show(
            f"unchanged: [bold]{result.name} {result.version}[/bold] already has this content  "
            f"sha256:{result.digest[:16]}"
        )
    show(f"  {shown_path(result.path)}")
    note = result.runtime_note
    if note:
        warn(note)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.2f} GB"
