"""Read YAML with the line of every value, so errors can say `cpmai.yaml:12 gates.metrics.x`.

PyYAML's safe loader with two fixes a manifest needs:
- YAML 1.2 booleans only (`true`/`false`): in YAML 1.1 `on:`, `yes`, `no`, `off` are booleans,
  which turns `triggers: {on: [drift]}` into a key `True`.
- duplicate keys are errors (PyYAML silently keeps the last one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cpmai.errors import ManifestError

Path_ = tuple[str | int, ...]

MAX_BYTES = 1_000_000
MAX_NODES = 100_000


class _Loader(yaml.SafeLoader):
    pass


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


@dataclass
class YamlDocument:
    """The parsed data and, for each path into it, the 1-based line it came from."""

    file: Path
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)
    origins: dict[Path_, Path] = field(default_factory=dict)
    """For values merged in from another file (`extends:`), the file they came from."""

    def locate(self, path: Path_) -> tuple[Path, int]:
        """File and line of the deepest known prefix of `path`."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return self.origins.get(path[:end], self.file), line
        return self.file, 1

    def line_of(self, path: Path_) -> int:
        return self.locate(path)[1]

    def where(self, path: Path_) -> str:
        file, line = self.locate(path)
        return f"{file}:{line}"


def merge_under(base: YamlDocument, doc: YamlDocument) -> YamlDocument:
    """`doc` laid over `base`: mappings merge key by key, anything else in `doc` wins.
    Every value keeps the file and line it came from."""
    origins = {p: base.origins.get(p, base.file) for p in base.lines}
    for p in doc.lines:
        origins.pop(p, None)
    origins.update(doc.origins)
    return YamlDocument(
        file=doc.file,
        data=_deep_merge(base.data, doc.data),
        lines={**base.lines, **doc.lines},
        origins=origins,
    )


def _deep_merge(base: Any, top: Any) -> Any:
    if isinstance(base, dict) and isinstance(top, dict):
        merged = dict(base)
        for key, value in top.items():
            merged[key] = _deep_merge(base[key], value) if key in base else value
        return merged
    return top


def read_yaml(file: Path) -> YamlDocument:
    """Parse `file`; raise ManifestError naming file:line for anything unreadable."""
    from cpmai.fsutil import not_regular

    why = not_regular(file)
    if why is not None and not why.startswith("is a folder"):
        raise ManifestError([f"{file}: {why}"])
    try:
        with file.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)  # never more: the size is checked below
    except FileNotFoundError:
        raise ManifestError([f"{file}: no such file"]) from None
    except IsADirectoryError:
        raise ManifestError([f"{file}: is a folder, expected a YAML file"]) from None
    except OSError as exc:
        raise ManifestError([f"{file}: cannot read: {exc.strerror}"]) from None
    if len(raw) > MAX_BYTES:
        raise ManifestError([f"{file}:1: file is over {MAX_BYTES:,} bytes, the limit"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ManifestError([f"{file}:{line}: not UTF-8 text"]) from None
    return parse_yaml(text, file)


def parse_yaml(text: str, file: Path) -> YamlDocument:
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:
        raise ManifestError([f"{file}:{_line_at(text, exc.position)}: {exc.reason}"]) from None
    try:
        node = loader.get_single_node()
        doc = YamlDocument(file=file, data=None)
        if node is not None:
            doc.data = _Walker(loader, doc).build(node, ())
        return doc
    except yaml.reader.ReaderError as exc:
        raise ManifestError([f"{file}:{_line_at(text, exc.position)}: {exc.reason}"]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        what = exc.problem or exc.context or "invalid YAML"
        raise ManifestError([f"{file}:{line}: YAML syntax error: {what}"]) from None
    except yaml.YAMLError as exc:
        raise ManifestError([f"{file}:1: YAML error: {exc}"]) from None
    except RecursionError:
        raise ManifestError([f"{file}:1: nesting too deep"]) from None
    finally:
        loader.dispose()


def _line_at(text: str, position: int) -> int:
    return text.count("\n", 0, max(position, 0)) + 1


class _Walker:
    def __init__(self, loader: _Loader, doc: YamlDocument) -> None:
        self.loader = loader
        self.doc = doc
        self.count = 0

    def build(self, node: yaml.Node, path: Path_) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise ManifestError(
                [f"{self.doc.where(path)}: more than {MAX_NODES:,} values (an alias bomb?)"]
            )
        self.doc.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self.loader.construct_object(key_node, deep=True)
                if not isinstance(key, str | int | float | bool) and key is not None:
                    raise ManifestError(
                        [
                            f"{self.doc.file}:{key_node.start_mark.line + 1}: "
                            f"keys must be plain strings"
                        ]
                    )
                key = key if isinstance(key, str | int) else str(key)
                if key in out:
                    raise ManifestError(
                        [
                            f"{self.doc.file}:{key_node.start_mark.line + 1}: "
                            f"duplicate key {key!r} (first at line {self.doc.lines[(*path, key)]})"
                        ]
                    )
                self.doc.lines[(*path, key)] = key_node.start_mark.line + 1
                out[key] = self.build(value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.loader.construct_object(node, deep=True)
