"""Property-based: malformed manifests always end in exit 2 with a message, never a traceback.

Each example starts from a valid manifest (whose files exist) and breaks it one way: a value of
the wrong type, a huge or non-finite number, a missing required field, an unknown key, or text
that is not valid YAML / not a mapping at all.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BASE: dict[str, Any] = {
    "name": "churn",
    "description": "d",
    "owners": ["a@example.com"],
    "usage": {"mode": "online"},
    "model": {"path": "model.joblib", "task": "classification", "runtime": "auto"},
    "data": {"reference": "ref.csv", "holdout": "hold.csv", "target": "y"},
    "gates": {
        "metrics": {"accuracy": ">= 0.8"},
        "latency": {"p99_ms": 25, "concurrency": 4, "duration_s": 5},
        "max_size_mb": 200,
        "approvals": {"production": 1},
    },
    "slo": {"p99_ms": 50, "error_rate": 0.01},
    "environments": {
        "staging": {"target": "local", "port": 8081},
        "production": {
            "target": "local",
            "port": 8080,
            "replicas": 2,
            "resources": {"cpu": 1, "memory_gb": 1},
            "rollout": {"strategy": "canary", "steps": [10, 50, 100], "auto_rollback": True},
        },
    },
    "monitoring": {"drift": {"threshold": 0.1, "share": 0.5}, "triggers": {"on": ["drift"]}},
    "costs": {"currency": "USD", "cpu_hour": 0.04, "budget_per_month": 300},
    "business": {"value_per_prediction": 0.004, "baseline_cost_per_month": 2500},
}
REQUIRED = [("name",), ("model",), ("model", "path"), ("model", "task")]


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in _leaves(v, (*path, k))]
    return [(path, node)]


def _mappings(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if not isinstance(node, dict):
        return []
    return [path] + [p for k, v in node.items() for p in _mappings(v, (*path, k))]


LEAVES = [leaf for leaf in _leaves(BASE) if leaf[0] != ("description",)]
MAPPINGS = _mappings(BASE)


def _wrong_values(value: Any) -> st.SearchStrategy[Any]:
    """Values that cannot be valid where `value` stands."""
    containers = st.one_of(
        st.lists(st.integers(), min_size=1, max_size=3),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    )
    if isinstance(value, bool):
        return st.one_of(st.sampled_from(["yes", "no", "on", 1, 0, "true"]), containers)
    if isinstance(value, int | float):
        return st.one_of(
            st.sampled_from([10**30, -(10**30), float("inf"), float("nan"), -1e308 * 10, "12"]),
            st.text(min_size=1, max_size=20),
            containers,
        )
    if isinstance(value, str):
        return st.one_of(containers, st.sampled_from([None, True, 3.5, 10**40]))
    if isinstance(value, list):
        return st.one_of(
            st.sampled_from([{"a": 1}, 7, "x" * 5000]),
            st.lists(st.sampled_from([[1], {"k": None}]), min_size=1, max_size=3),
        )
    return containers


def _set(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


@st.composite
def broken_documents(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["wrong_type", "missing", "unknown_key", "raw_text"]))
    doc = copy.deepcopy(BASE)
    if kind == "wrong_type":
        path, value = draw(st.sampled_from(LEAVES))
        _set(doc, path, draw(_wrong_values(value)))
    elif kind == "missing":
        path = draw(st.sampled_from(REQUIRED))
        node = doc
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    elif kind == "unknown_key":
        where = draw(
            st.sampled_from(
                [
                    m
                    for m in MAPPINGS
                    if m[-1:] not in [("environments",), ("metrics",), ("approvals",)]
                ]
            )
        )
        key = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12))
        node = doc
        for part in where:
            node = node[part]
        if key in node:
            key += "_x"
        node[key] = draw(st.one_of(st.integers(), st.text(max_size=10), st.none()))
    else:
        return draw(
            st.one_of(
                st.sampled_from(
                    [
                        "name: [unclosed\n",
                        "model:\n\tpath: x\n",
                        "a: b: c\n",
                        "- just\n- a list\n",
                        "\x00\x01binary",
                        "{" * 500,
                        "[" * 2000 + "]" * 2000,
                        "name: x\nname: y\n",
                        "? [complex, key]\n: value\n",
                        "name: !!python/object:os.system 'echo hi'\n",
                        "",
                        "42\n",
                    ]
                ),
                st.text(max_size=200).filter(lambda t: not t.strip().startswith("name")),
            )
        )
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(text=broken_documents())
def test_malformed_manifests_exit_2_with_a_message(tmp_path: Path, cli: Any, text: str) -> None:
    for name in ("model.joblib", "ref.csv", "hold.csv"):
        (tmp_path / name).write_text("x")
    path = tmp_path / "cpmai.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    result = cli("validate", path)
    assert result.code == 2, (text, result.err)
    assert "error:" in result.err
    assert "Traceback" not in result.err + result.out
    assert result.out == ""


def test_the_unbroken_base_is_valid(tmp_path: Path, cli: Any) -> None:
    for name in ("model.joblib", "ref.csv", "hold.csv"):
        (tmp_path / name).write_text("x")
    path = tmp_path / "cpmai.yaml"
    path.write_text(yaml.safe_dump(BASE))
    result = cli("validate", path)
    assert result.code == 0, result.err
