"""The manifest: schema, line numbers in errors, strictness, JSON Schema export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cpmai.errors import ManifestError
from cpmai.manifest_file import json_schema, load_manifest
from cpmai.stats import compare, parse_comparison

ROOT = Path(__file__).resolve().parent.parent

VALID = """\
name: churn
model:
  path: model.joblib
  task: classification
data:
  reference: ref.csv
  holdout: hold.csv
  target: churned
gates:
  metrics: {accuracy: ">= 0.9"}
  approvals: {production: 1}
environments:
  staging: {port: 8081}
  production: {port: 8080}
monitoring:
  triggers: {on: [drift, age], max_age_days: 30}
"""


def write(folder: Path, text: str, files: bool = True) -> Path:
    if files:
        for name in ("model.joblib", "ref.csv", "hold.csv"):
            (folder / name).write_text("x")
    path = folder / "cpmai.yaml"
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    return info.value.problems


def test_valid_manifest_loads_with_defaults(tmp_path: Path) -> None:
    manifest = load_manifest(write(tmp_path, VALID))
    assert manifest.name == "churn"
    assert manifest.environments["production"].replicas == 1
    assert manifest.environments["staging"].host == "127.0.0.1"
    # YAML 1.1 would read `on:` as the boolean True; the manifest must keep it a key
    assert manifest.monitoring.triggers.on == ["drift", "age"]
    assert manifest.resolve("model.joblib") == (tmp_path / "model.joblib").resolve()


def test_the_example_manifest_is_valid_schema_wise() -> None:
    manifest = load_manifest(ROOT / "examples" / "churn" / "cpmai.yaml", check_files=False)
    assert manifest.name == "churn-classifier"
    assert manifest.gates.approvals == {"production": 1}


def test_errors_name_file_line_and_field_path(tmp_path: Path) -> None:
    text = VALID.replace('accuracy: ">= 0.9"', 'accuracy: "0.9"')
    [message] = problems(write(tmp_path, text))
    assert message == (
        f"{tmp_path / 'cpmai.yaml'}:10 gates.metrics.accuracy: "
        'expected a comparison such as ">= 0.9"'
    )


def test_unknown_key_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    text = VALID.replace("  staging: {port: 8081}", "  staging: {port: 8081, replcas: 2}")
    [message] = problems(write(tmp_path, text))
    assert ":13 environments.staging.replcas: unknown key; did you mean 'replicas'?" in message


def test_unknown_top_level_key(tmp_path: Path) -> None:
    [message] = problems(write(tmp_path, VALID + "gate: {}\n"))
    assert ":17 gate: unknown key; did you mean 'gates'?" in message


def test_several_problems_are_all_reported_in_line_order(tmp_path: Path) -> None:
    text = VALID.replace("task: classification", "task: clustering").replace(
        "port: 8080", 'port: "8080"'
    )
    found = problems(write(tmp_path, text))
    assert len(found) == 2
    assert ":4 model.task:" in found[0]
    assert ":14 environments.production.port: input should be a valid integer" in found[1]


def test_types_are_strict(tmp_path: Path) -> None:
    found = problems(write(tmp_path, VALID.replace("port: 8081", "port: 8081.5")))
    assert "environments.staging.port" in found[0]
    found = problems(write(tmp_path, VALID.replace("name: churn", "name: 12")))
    assert ":1 name: input should be a valid string (quote it)" in found[0]


def test_huge_and_non_finite_values_are_refused(tmp_path: Path) -> None:
    found = problems(write(tmp_path, VALID.replace("port: 8081", "port: 1000000000000000000000")))
    assert "environments.staging.port" in found[0]
    found = problems(write(tmp_path, VALID + "slo: {p99_ms: .inf}\n"))
    assert "slo.p99_ms" in found[0]


def test_missing_required_field(tmp_path: Path) -> None:
    found = problems(write(tmp_path, VALID.replace("  task: classification\n", "")))
    assert found == [f"{tmp_path / 'cpmai.yaml'}:2 model.task: required field is missing"]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    found = problems(write(tmp_path, VALID + "slo: {p99_ms: 5\n"))
    assert found[0].startswith(f"{tmp_path / 'cpmai.yaml'}:")
    assert "YAML syntax error" in found[0]


def test_duplicate_keys_are_errors(tmp_path: Path) -> None:
    found = problems(write(tmp_path, VALID + "name: other\n"))
    assert found == [f"{tmp_path / 'cpmai.yaml'}:17: duplicate key 'name' (first at line 1)"]


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just text\n", "null\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    found = problems(write(tmp_path, text))
    assert "expected a mapping" in found[0]


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 8):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    found = problems(write(tmp_path, "\n".join(lines) + "\n"))
    assert "more than" in found[0]


def test_missing_files_are_reported_with_their_field(tmp_path: Path) -> None:
    found = problems(write(tmp_path, VALID, files=False))
    assert [f.split(" ", 1)[1] for f in found] == [
        "model.path: file not found: model.joblib",
        "data.reference: file not found: ref.csv",
        "data.holdout: file not found: hold.csv",
    ]
    assert found[0].startswith(f"{tmp_path / 'cpmai.yaml'}:3 ")


def test_cross_field_checks(tmp_path: Path) -> None:
    text = (
        VALID.replace("approvals: {production: 1}", "approvals: {prod: 1}")
        .replace('accuracy: ">= 0.9"', 'rmse: "<= 3"')
        .replace("port: 8080", "port: 8081")
    )
    found = problems(write(tmp_path, text))
    assert any("gates.metrics.rmse: unknown classification metric" in f for f in found)
    assert any("gates.approvals.prod: no environment 'prod'" in f for f in found)
    assert any("environments.production.port: port 8081 is already used" in f for f in found)


def test_a_bound_a_unit_metric_can_never_meet_is_refused(tmp_path: Path) -> None:
    found = problems(write(tmp_path, VALID.replace('accuracy: ">= 0.9"', 'accuracy: ">= 90"')))
    assert [f.split(" ", 1)[1] for f in found] == [
        "gates.metrics.accuracy: accuracy lies between 0 and 1: '>= 90' would never compare as "
        "meant"
    ]
    text = VALID.replace('accuracy: ">= 0.9"', 'accuracy: "> 0"')
    manifest = load_manifest(write(tmp_path, text))
    assert manifest.gates.metrics == {"accuracy": "> 0"}


def test_signature_list_errors_point_at_the_element(tmp_path: Path) -> None:
    text = VALID + "signature:\n  - {name: a, type: number}\n  - {name: b, type: text}\n"
    found = problems(write(tmp_path, text))
    assert len(found) == 1
    assert ":19 signature[1].type:" in found[0]


def test_comparisons() -> None:
    assert parse_comparison(">= 0.9") == (">=", 0.9)
    assert parse_comparison("<1e-3") == ("<", 0.001)
    assert compare(0.95, ">= 0.9") and not compare(0.85, ">= 0.9")
    with pytest.raises(ValueError, match="expected a comparison"):
        parse_comparison("about 0.9")


def test_committed_json_schema_is_in_sync() -> None:
    committed = json.loads((ROOT / "docs" / "manifest.schema.json").read_text())
    assert committed == json_schema(), "run `cpmai schema -o docs/manifest.schema.json`"


def test_json_schema_forbids_unknown_keys() -> None:
    schema = json_schema()
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["Environment"]["additionalProperties"] is False
    assert "model" in schema["required"] and "name" in schema["required"]


def test_extends_lays_the_manifest_over_shared_defaults(tmp_path: Path) -> None:
    shared = ROOT / "configs" / "team-defaults.yaml"
    text = f"extends: {shared}\n" + VALID + "costs: {cpu_hour: 0.05}\n"
    manifest = load_manifest(write(tmp_path, text))
    assert manifest.costs.cpu_hour == 0.05  # the manifest wins
    assert manifest.costs.memory_gb_hour == 0.0052  # the default fills in
    assert manifest.gates.max_size_mb == 500
    assert manifest.gates.metrics == {"accuracy": ">= 0.9"}  # merged with the defaults' gates
    assert manifest.monitoring.triggers.on == ["drift", "age"]  # lists are replaced, not merged


def test_errors_in_an_extended_file_name_that_file(tmp_path: Path) -> None:
    base = tmp_path / "team.yaml"
    base.write_text("costs:\n  currency: USD\n  cpu_hour: cheap\n")
    found = problems(write(tmp_path, "extends: team.yaml\n" + VALID))
    assert found == [f"{base.resolve()}:3 costs.cpu_hour: input should be a valid number"]


def test_extends_missing_file_and_cycles(tmp_path: Path) -> None:
    found = problems(write(tmp_path, "extends: nowhere.yaml\n" + VALID))
    assert found == [f"{tmp_path / 'cpmai.yaml'}:1 extends: file not found: nowhere.yaml"]
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    found = problems(write(tmp_path, "extends: a.yaml\n" + VALID))
    assert "a cycle" in found[0]


def test_committed_manifest_reference_is_in_sync() -> None:
    from cpmai.schema_docs import render_reference

    committed = (ROOT / "docs" / "manifest.md").read_text()
    assert committed == render_reference(), "run `cpmai schema --markdown -o docs/manifest.md`"
    for field in ("extends", "trusted_types", "approvers", "max_age_days", "budget_per_month"):
        assert f"| `{field}` |" in committed


@pytest.mark.parametrize(
    ("staging", "expected"),
    [
        ("{target: ray, replicas: {min: 1, max: 4, target_ongoing_requests: 8}}", None),
        ("{target: kserve, replicas: {min: 2, max: 2}}", None),
        ("{target: local, replicas: {min: 1, max: 4}}", "replicas as a range needs an autoscaler"),
        ("{target: ray, replicas: {min: 5, max: 2}}", "min (5) is greater than max (2)"),
        ("{target: ray, replicas: {min: 0, max: 2}}", "replicas.min: input should be greater"),
        ("{target: ray, replicas: '3', port: 0}", "replicas: input should be a valid integer"),
        ("{target: ray, replicas: [1]}", "replicas: input should be a valid integer"),
        ("{target: ray, replicas: {min: 1, max: 2, target_ongoing_requests: 0}}", "greater than 0"),
        ("{target: ray, replicas: {min: 1, max: 2, target: 3}}", "target"),
        ("{target: kubernetes, replicas: {min: 1, max: 2}, max_replicas: 3}", "use replicas.max"),
        ("{target: kubernetes, replicas: 3, max_replicas: 2}", "max_replicas (2) is below"),
        ("{target: ray, replicas: {min: .nan, max: 2}}", "replicas"),
    ],
)
def test_replica_ranges(tmp_path: Path, staging: str, expected: str | None) -> None:
    path = write(tmp_path, VALID.replace("staging: {port: 8081}", f"staging: {staging}"))
    if expected is None:
        spec = load_manifest(path).environments["staging"]
        assert spec.autoscaling is not None
        assert spec.min_replicas == spec.autoscaling.min <= spec.max_replicas_allowed
        return
    found = problems(path)
    assert found and all(":13 environments.staging" in p for p in found), found
    assert any(expected in p for p in found), found


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (  # a key with a dash or a capital is a key, not a union's branch name
            "signature: {infer: true, overrides: {Region-X: {categories: 3}}}\n",
            [":17 signature.overrides.Region-X.categories: input should be a valid list",
             ":17 signature.overrides.Region-X.categories: input should be 'open'"],
        ),
        (  # no branch of the union fits: each says what it expected, at the field itself
            "signature: true\n",
            [":17 signature: input should be 'infer'", ":17 signature: input should be a mapping",
             ":17 signature: input should be a valid list"],
        ),
    ],
)  # fmt: skip
def test_union_errors_point_at_the_field(tmp_path: Path, extra: str, expected: list[str]) -> None:
    found = problems(write(tmp_path, VALID + extra))
    assert [p.removeprefix(str(tmp_path / "cpmai.yaml")) for p in found] == expected


def test_an_environment_name_with_a_dash_keeps_its_path(tmp_path: Path) -> None:
    text = VALID.replace(
        "staging: {port: 8081}",
        "eu: {target: ray, replicas: true}\n"
        "  prod-eu: {target: ray, replicas: {min: 1, max: 2, foo: 1}}",
    )
    found = [p.removeprefix(str(tmp_path / "cpmai.yaml")) for p in problems(write(tmp_path, text))]
    assert found[:2] == [":13 environments.eu.replicas: input should be a valid integer",
                         ":13 environments.eu.replicas: input should be a mapping"]  # fmt: skip
    assert found[2].startswith(":14 environments.prod-eu.replicas.foo: unknown key")
    assert len(found) == 3
