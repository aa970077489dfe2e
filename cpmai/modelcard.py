"""The model card written into every artifact (Markdown, generated, deterministic)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cpmai.manifest import Manifest

if TYPE_CHECKING:
    from cpmai.runtime.signature import Signature


def render(manifest: Manifest, signature: Signature, environment: dict[str, Any]) -> str:
    """A model card from what the artifact holds. No version or time: they are not content."""
    lines = [f"# Model card: {manifest.name}", ""]
    if manifest.description:
        lines += [manifest.description, ""]
    lines += [
        "## Overview",
        "",
        "| | |",
        "| --- | --- |",
        f"| Task | {manifest.model.task} |",
        f"| Usage | {manifest.usage.mode} |",
        f"| Format | {signature.format or '?'} |",
        f"| Owners | {', '.join(manifest.owners) or '—'} |",
        "",
        "## Inputs",
        "",
        "| name | type | range / categories | nullable |",
        "| --- | --- | --- | --- |",
    ]
    for spec in signature.inputs:
        if spec.categories:
            values = ", ".join(str(c) for c in spec.categories[:12])
            more = len(spec.categories) - 12
            domain = values + (f" (+{more} more)" if more > 0 else "")
        elif spec.min is not None:
            domain = f"{spec.min:g} … {spec.max:g}"
        else:
            domain = "—"
        nullable = "yes" if spec.nullable else "no"
        lines.append(f"| {spec.name} | {spec.type} | {domain} | {nullable} |")
    lines += ["", "## Outputs", ""]
    for out in signature.outputs:
        extra = f": {', '.join(str(c) for c in out.categories)}" if out.categories else ""
        lines.append(f"- `{out.name}` ({out.type}){extra}")
    lines += ["", "## Data", ""]
    data = manifest.data
    lines.append(f"- Reference: {data.reference or '—'}" + _rows(signature, "reference"))
    lines.append(f"- Holdout: {data.holdout or '—'}" + _rows(signature, "holdout"))
    lines.append(f"- Target: {data.target or '—'}")
    lines += ["", "## Performance requirements", ""]
    if manifest.gates.metrics:
        lines += [f"- {metric} {rule}" for metric, rule in manifest.gates.metrics.items()]
    slo = manifest.slo.model_dump(exclude_none=True)
    if slo:
        lines.append("- SLO: " + ", ".join(f"{k} {v}" for k, v in slo.items()))
    if not manifest.gates.metrics and not slo:
        lines.append("- none declared")
    lines += ["", "## Environment", ""]
    lines.append(f"- Python {environment['python']} ({environment['implementation']})")
    lines += [f"- {pkg} {ver}" for pkg, ver in environment["packages"].items()]
    lines += [
        "",
        "## Caveats",
        "",
        "Pickle-based formats run code when loaded: cpmai loads this artifact only while its "
        "files match the digest recorded in the ledger.",
        "",
    ]
    return "\n".join(lines)


def _rows(signature: Signature, key: str) -> str:
    rows = signature.data_rows.get(key)
    return f" ({rows:,} rows)" if rows is not None else ""
