"""The import rules of docs/architecture.md, checked on the source: every `import` and `from …
import` statement anywhere in a module (inside functions and TYPE_CHECKING blocks too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cpmai"

LEAVES = {
    "cpmai.errors": set(),
    "cpmai.home": set(),
    "cpmai.fsutil": set(),
    "cpmai.clock": {"cpmai.errors"},
    "cpmai.stats": {"cpmai.errors"},
    "cpmai.documents": set(),
}
"""A leaf imports nothing of cpmai's but what is listed."""

TOP = ("cpmai.targets", "cpmai.lifecycle", "cpmai.guards", "cpmai.status", "cpmai.watch")
"""Orchestration: what puts versions live; nothing below it may reach up into it."""

NOT_ABOVE = {
    "cpmai.predlog": ("cpmai.serving", "cpmai.monitor", "cpmai.costs", "cpmai.report",
                      "cpmai.bench", "cpmai.gates", *TOP),
    "cpmai.runtime": ("cpmai.serving", "cpmai.monitor", "cpmai.costs", "cpmai.report",
                      "cpmai.bench", "cpmai.predlog", *TOP),
    "cpmai.serving": ("cpmai.monitor", "cpmai.costs", "cpmai.report", "cpmai.bench",
                      "cpmai.gates", *TOP),
    "cpmai.monitor": ("cpmai.serving", "cpmai.costs", "cpmai.report", "cpmai.gates", *TOP),
    "cpmai.costs": ("cpmai.serving", "cpmai.report", "cpmai.bench", "cpmai.gates", *TOP),
    "cpmai.bench": ("cpmai.monitor", "cpmai.costs", "cpmai.report", *TOP),
}  # fmt: skip
"""What a package may not import: the packages above it or beside it that it has no business
with (it may import anything else, leaves included)."""

FORMATS = {"cpmai.bench.result"}
"""A package's saved format, which packages barred from the rest of it may read (costs reads
saved bench results); it imports only leaves."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every cpmai module `path` imports (a `from cpmai.x import y` counts as `cpmai.x` and, when
    y is a module, `cpmai.x.y`; relative imports are resolved against the module's package)."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("cpmai"))
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            if module.startswith("cpmai"):
                found.add(module)
                found.update(f"{module}.{alias.name}" for alias in node.names)
    return {name for name in found if _exists(name)}


def _exists(name: str) -> bool:
    relative = Path(*name.split("."))
    root = PACKAGE.parent
    return (root / relative).with_suffix(".py").is_file() or (root / relative).is_dir()


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(f"{package}.")


def test_the_rules_see_the_modules() -> None:
    """A guard for the test itself: it reads the real tree and finds real imports."""
    assert "cpmai.serving.app" in MODULES and "cpmai.cli.main" in MODULES
    assert "cpmai.serving.batching" in _imports(MODULES["cpmai.serving.app"])


ENTRY_POINTS = {"cpmai.__main__"}
"""`python -m cpmai`: the CLI's own entry point."""


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if not _within(m, "cpmai.cli") and m not in ENTRY_POINTS)
)
def test_the_core_never_imports_the_cli(module: str) -> None:
    wrong = sorted(i for i in _imports(MODULES[module]) if _within(i, "cpmai.cli"))
    assert not wrong, f"{module} imports {wrong}: the core never imports the CLI"


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_leaves_import_no_one_above_them(leaf: str) -> None:
    allowed = LEAVES[leaf] | {leaf}
    wrong = sorted(i for i in _imports(MODULES[leaf]) if i not in allowed)
    assert not wrong, f"{leaf} is a leaf but imports {wrong}"


@pytest.mark.parametrize("package", sorted(NOT_ABOVE))
def test_packages_import_downward(package: str) -> None:
    wrong = sorted(
        f"{module} → {imported}"
        for module, path in MODULES.items()
        if _within(module, package)
        for imported in _imports(path)
        if imported not in FORMATS and any(_within(imported, other) for other in NOT_ABOVE[package])
    )
    assert not wrong, f"{package} imports what it should not:\n" + "\n".join(wrong)


@pytest.mark.parametrize("module", sorted(FORMATS))
def test_formats_import_only_leaves(module: str) -> None:
    allowed = set(LEAVES)
    wrong = sorted(i for i in _imports(MODULES[module]) if i not in allowed)
    assert not wrong, f"{module} is a format others read but imports {wrong}"


def test_no_module_is_too_long() -> None:
    """Small modules with names that say what they hold (issue #23: ~500 lines at most)."""
    long = {
        module: count
        for module, path in MODULES.items()
        if (count := len(path.read_text().splitlines())) > 560
    }
    assert not long, f"modules over ~500 lines: {long}"


STANDALONE = {"cpmai.templates.edge_runner", "cpmai.__main__", "cpmai.watch.__main__"}
"""Scripts that run on their own (the edge bundle's runner, the watcher process) or are the CLI's
entry point."""


@pytest.mark.parametrize(
    "module",
    sorted(m for m in MODULES if not _within(m, "cpmai.cli") and m not in STANDALONE),
)
def test_the_core_never_prints(module: str) -> None:
    """Results go back to the caller; only the CLI writes to stdout and stderr."""
    tree = ast.parse(MODULES[module].read_text())
    printing = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Name) and node.func.id == "print")
            or (
                isinstance(node.func, ast.Attribute)
                and node.func.attr == "write"
                and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr in ("stdout", "stderr")
            )
        )
    ]
    assert not printing, f"{module} prints (lines {printing})"
