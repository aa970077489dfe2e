"""Semantic version ordering and the next automatic version (no heavy imports: `versions`
uses it on its fast path)."""

from __future__ import annotations

import re

FIRST_VERSION = "1.0.0"
_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?$")


def version_key(version: str) -> tuple[int, int, int, int, str]:
    """Sort key for semantic versions: a pre-release sorts before its release."""
    match = _SEMVER.match(version)
    if not match:
        return (-1, -1, -1, 0, version)
    major, minor, patch, pre = match.groups()
    return (int(major), int(minor), int(patch), 0 if pre else 1, pre or "")


def next_version(existing: list[str]) -> str:
    """The next automatic version: 1.0.0, then the highest one with its minor number raised."""
    releases = [v for v in existing if _SEMVER.match(v)]
    if not releases:
        return FIRST_VERSION
    major, minor, _, _, _ = version_key(max(releases, key=version_key))
    return f"{major}.{minor + 1}.0"
