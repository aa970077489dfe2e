"""What a model needs to run: Python, platform and the versions of the packages it is made of."""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterable
from importlib import metadata
from typing import Any

MAX_OBJECTS = 200_000
_ALWAYS = ("numpy", "joblib")


def model_modules(obj: Any) -> set[str]:
    """Top-level modules of every object reachable from `obj` (bounded walk, no code run)."""
    import numpy as np

    found: set[str] = set()
    seen: set[int] = set()
    stack = [obj]
    while stack and len(seen) < MAX_OBJECTS:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        kind = type(item)
        found.add(kind.__module__.split(".", 1)[0])
        if isinstance(item, str | bytes | int | float | bool | type(None)):
            continue
        if isinstance(item, np.ndarray):
            if item.dtype == object:
                stack.extend(item.ravel()[:10_000].tolist())
            continue
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        state = getattr(item, "__dict__", None)
        if isinstance(state, dict):
            stack.extend(state.values())
    return {
        m for m in found if m not in ("builtins", "__main__") and m not in sys.builtin_module_names
    }


def package_versions(modules: Iterable[str]) -> dict[str, str]:
    """Installed distribution versions for top-level module names (e.g. sklearn → scikit-learn)."""
    mapping = metadata.packages_distributions()
    versions: dict[str, str] = {}
    for module in modules:
        for dist in mapping.get(module, []):
            try:
                versions[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
    return dict(sorted(versions.items(), key=lambda kv: kv[0].lower()))


def capture(model_obj: Any, *, extra_modules: Iterable[str] = ()) -> dict[str, Any]:
    """The environment record stored as `environment.json` (deterministic for one machine)."""
    modules = model_modules(model_obj) | set(_ALWAYS) | set(extra_modules)
    stdlib = set(sys.stdlib_module_names)
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": {"system": platform.system(), "machine": platform.machine()},
        "packages": package_versions(m for m in modules if m not in stdlib),
    }
