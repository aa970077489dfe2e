"""The rendered Kubernetes and KServe files, validated against published schemas.

- kubernetes.yaml (Deployment, Service, HorizontalPodAutoscaler): `kubernetes-validate --strict`
  against Kubernetes 1.37's schemas (offline, shipped in the PyPI package; strict = unknown
  fields refused).
- kserve.yaml (InferenceService): KServe's own CRD schema (v1beta1 `openAPIV3Schema`, vendored in
  tests/fixtures/kserve/, see its README), made as strict as `kubectl apply` is (unknown fields
  refused), with `metadata` checked against the same Kubernetes 1.37 ObjectMeta schema.

Each validation is also shown to refuse a broken document, so a pass means something.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from cost_fixture import edit
from referencing import Registry, Resource

from conftest import run_cpmai

NAME = "churn-classifier"
KUBERNETES = "1.37.0"
KSERVE_SCHEMA = (
    Path(__file__).parent / "fixtures" / "kserve" / "inferenceservice-v1beta1.schema.json"
)
OBJECT_META = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
# Knative's rule for the serving container's port name (KServe's serverless mode):
# knative/serving pkg/apis/serving/k8s_validation.go, validPortNames.
KNATIVE_PORT_NAMES = {"", "h2c", "http1"}
RANGE = {"min": 2, "max": 8, "target_ongoing_requests": 3.5}
ENVIRONMENTS: dict[str, dict[str, Any]] = {
    "k8s-fixed": {"target": "kubernetes", "replicas": 2},
    "k8s-range": {
        "target": "kubernetes",
        "replicas": RANGE,
        "namespace": "ml-serving",
        "image": "registry.example.com/ml/churn-classifier",
        "resources": {"cpu": 0.25, "memory_gb": 0.75},
    },
    "k8s-pinned": {
        "target": "kubernetes",
        "replicas": 3,
        "max_replicas": 5,
        "namespace": "ml",
        "image": "registry.example.com:5000/ml/churn-classifier:stable",
        "resources": {"cpu": 1.5, "memory_gb": 2},
    },
    "kserve-fixed": {"target": "kserve", "replicas": 2, "namespace": "ml"},
    "kserve-range": {
        "target": "kserve",
        "replicas": {"min": 1, "max": 4, "target_ongoing_requests": 2.5},
        "image": "registry.example.com/ml/churn-classifier",
        "resources": {"cpu": 0.5, "memory_gb": 1.5},
        "rollout": {"strategy": "canary", "steps": [25, 100]},
    },
}


@pytest.fixture
def manifest(churn: Path) -> Path:
    def change(doc: dict[str, Any]) -> None:
        doc["environments"] = ENVIRONMENTS
        doc["gates"] = {"metrics": {"accuracy": ">= 0.7"}}

    edit(churn, change)
    return churn


def _deploy(manifest: Path, env: str) -> None:
    """Render through the real CLI, as a user would."""
    result = run_cpmai("deploy", str(manifest), "--env", env)
    assert result.code == 0, result.err
    assert "rendered" in result.out


# -- kubernetes-validate ----------------------------------------------------------------------


def kubernetes_validate(*files: Path) -> tuple[int, str]:
    """`kubernetes-validate --strict` against Kubernetes 1.37 (its CLI, in a subprocess).

    Its exit code alone is not enough: a kind it has no schema for is only a warning (exit 0),
    so the caller also checks that every document was reported as passed."""
    proc = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBERNETES, *files],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    return proc.returncode, proc.stdout + proc.stderr


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def assert_valid_kubernetes(path: Path) -> list[dict[str, Any]]:
    docs = _documents(path)
    code, output = kubernetes_validate(path)
    assert code == 0, output
    assert "WARN" not in output and "ERROR" not in output, output
    for doc in docs:
        resource = f"{doc['kind'].lower()}/{doc['metadata']['name']}"
        assert f"passed for resource {resource} against version 1.37" in output, output
    return docs


def _quantities(docs: list[dict[str, Any]]) -> Iterator[str]:
    for doc in docs:
        spec = doc["spec"]
        pod = spec["template"]["spec"] if doc["kind"] == "Deployment" else spec.get("predictor")
        for container in (pod or {}).get("containers", []):
            for part in ("requests", "limits"):
                yield from container["resources"][part].values()


def assert_quantities(docs: list[dict[str, Any]]) -> None:
    """Kubernetes' schemas type a quantity as any string; KServe's CRD carries the API
    server's quantity grammar, so the same pattern checks the core kinds too (and no zero)."""
    limits = _kserve_schema()["properties"]["spec"]["properties"]["predictor"]["properties"][
        "containers"
    ]["items"]["properties"]["resources"]["properties"]["limits"]
    pattern = re.compile(limits["additionalProperties"]["pattern"])
    for quantity in _quantities(docs):
        assert isinstance(quantity, str) and pattern.match(quantity), quantity
        assert re.match(r"^0+[a-zA-Z]*$", quantity) is None, quantity


def test_rendered_kubernetes_files_pass_strict_validation(manifest: Path, home: Path) -> None:
    renders = home / "renders" / NAME
    for env in ("k8s-fixed", "k8s-range", "k8s-pinned"):
        _deploy(manifest, env)

    fixed = assert_valid_kubernetes(renders / "k8s-fixed" / "kubernetes.yaml")
    ranged = assert_valid_kubernetes(renders / "k8s-range" / "kubernetes.yaml")
    pinned = assert_valid_kubernetes(renders / "k8s-pinned" / "kubernetes.yaml")
    for docs in (fixed, ranged, pinned):
        assert [d["kind"] for d in docs] == ["Deployment", "Service", "HorizontalPodAutoscaler"]
        assert_quantities(docs)

    deployment, _service, hpa = fixed
    assert "namespace" not in deployment["metadata"]
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)  # 3 × replicas

    deployment, service, hpa = ranged
    assert {d["metadata"]["namespace"] for d in ranged} == {"ml-serving"}
    assert "replicas" not in deployment["spec"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"  # no in-flight metric in a HPA
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.com/ml/churn-classifier:1.0.0"
    assert container["resources"]["requests"] == {"cpu": "250m", "memory": "768Mi"}
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]

    deployment, _service, hpa = pinned
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.com:5000/ml/churn-classifier:stable"
    assert container["resources"]["limits"] == {"cpu": "1500m", "memory": "2Gi"}
    assert "replicas" not in deployment["spec"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 5)


def _in_process_kubernetes_documents() -> list[dict[str, Any]]:
    from cpmai.manifest import Environment
    from cpmai.targets.render import kubernetes_documents

    spec = Environment.model_validate(ENVIRONMENTS["k8s-range"])
    return kubernetes_documents(NAME, "k8s-range", "1.0.0", spec, f"{NAME}:1.0.0")


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("unknown container field", "Additional properties are not allowed ('cpuLimit'"),
        ("HPA without maxReplicas", "'maxReplicas' is a required property"),
        ("replicas as a string", "'2' is not of type 'integer'"),
        ("unknown kind", "Couldn't find schema for kind"),
    ],
)
def test_kubernetes_validation_refuses_a_broken_document(
    tmp_path: Path, breakage: str, message: str
) -> None:
    docs = _in_process_kubernetes_documents()
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    assert_valid_kubernetes(good)  # the same documents, unbroken, pass

    broken = copy.deepcopy(docs)
    deployment, _service, hpa = broken
    if breakage == "unknown container field":
        deployment["spec"]["template"]["spec"]["containers"][0]["cpuLimit"] = "1"
    elif breakage == "HPA without maxReplicas":
        del hpa["spec"]["maxReplicas"]
    elif breakage == "replicas as a string":
        deployment["spec"]["replicas"] = "2"
    else:
        deployment["kind"] = "Deploymnet"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump_all(broken, sort_keys=False))
    code, output = kubernetes_validate(path)
    assert message in output, output
    if breakage == "unknown kind":  # exit 0 with a warning: why the passes are checked by name
        with pytest.raises(AssertionError):
            assert_valid_kubernetes(path)
    else:
        assert code == 1, output
        assert "ERROR" in output


# -- KServe's CRD schema ----------------------------------------------------------------------


@functools.cache
def _kserve_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(KSERVE_SCHEMA.read_text())
    return schema


def strict(schema: Any) -> Any:
    """The CRD schema as `kubectl apply` (server-side strict field validation) applies it:
    an object that declares `properties` and neither `additionalProperties` nor
    `x-kubernetes-preserve-unknown-fields` refuses any other field (the API server would prune
    it, and strict validation turns the pruning into an error)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {
        key: (
            {name: strict(sub) for name, sub in value.items()}
            if key == "properties"
            else strict(value)
            if key in ("items", "additionalProperties", "anyOf", "allOf", "oneOf", "not")
            else value
        )
        for key, value in schema.items()
    }
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def kserve_validator() -> jsonschema.Draft202012Validator:
    """The vendored InferenceService schema, strict, its `metadata` (a bare `type: object` in
    every CRD: the API server checks ObjectMeta itself) checked against Kubernetes 1.37's
    strict ObjectMeta — the definitions kubernetes-validate ships."""
    schema = strict(_kserve_schema())
    schema["properties"]["metadata"] = {"$ref": OBJECT_META}
    schema["properties"]["apiVersion"]["const"] = "serving.kserve.io/v1beta1"
    schema["properties"]["kind"]["const"] = "InferenceService"
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    files = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    definitions = json.loads(
        (files / f"v{KUBERNETES}-local-strict" / "_definitions.json").read_text()
    )
    registry: Registry[Any] = Resource.from_contents(definitions) @ Registry()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def kserve_errors(doc: dict[str, Any]) -> list[str]:
    return sorted(
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in kserve_validator().iter_errors(doc)
    )


def assert_valid_kserve(doc: dict[str, Any]) -> dict[str, Any]:
    assert kserve_errors(doc) == []
    predictor = doc["spec"]["predictor"]
    for container in predictor["containers"]:
        for port in container.get("ports", []):
            assert port.get("name", "") in KNATIVE_PORT_NAMES, port
    assert_quantities([doc])
    return doc


def test_rendered_inference_service_matches_kserves_crd(manifest: Path, home: Path) -> None:
    renders = home / "renders" / NAME
    for env in ("kserve-fixed", "kserve-range"):
        _deploy(manifest, env)
    fixed = assert_valid_kserve(
        yaml.safe_load((renders / "kserve-fixed" / "kserve.yaml").read_text())
    )
    ranged = assert_valid_kserve(
        yaml.safe_load((renders / "kserve-range" / "kserve.yaml").read_text())
    )

    predictor = fixed["spec"]["predictor"]
    assert fixed["metadata"]["namespace"] == "ml"
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 6)
    assert "scaleMetric" not in predictor and "scaleTarget" not in predictor
    assert "canaryTrafficPercent" not in predictor

    predictor = ranged["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 4)
    assert predictor["scaleMetric"] == "concurrency"
    assert predictor["scaleTarget"] == math.ceil(2.5) == 3
    container = predictor["containers"][0]
    assert container["image"] == "registry.example.com/ml/churn-classifier:1.0.0"
    assert container["resources"]["requests"] == {"cpu": "500m", "memory": "1536Mi"}

    # a second version replaces the first: a canary at the rollout's first step, still valid
    edit(manifest, lambda doc: doc.update(description="Retrained."))
    _deploy(manifest, "kserve-range")
    canary = assert_valid_kserve(
        yaml.safe_load((renders / "kserve-range" / "kserve.yaml").read_text())
    )
    assert canary["spec"]["predictor"]["canaryTrafficPercent"] == 25
    assert canary["metadata"]["labels"]["app.kubernetes.io/version"] == "1.1.0"
    assert canary["spec"]["predictor"]["scaleTarget"] == 3


def _in_process_inference_service() -> dict[str, Any]:
    from cpmai.manifest import Environment
    from cpmai.targets.render import kserve_document

    spec = Environment.model_validate(ENVIRONMENTS["kserve-range"])
    return kserve_document(NAME, "kserve-range", "1.1.0", spec, f"{NAME}:1.1.0", 25)


def _break(doc: dict[str, Any], breakage: str) -> None:
    predictor = doc["spec"]["predictor"]
    if breakage == "unknown predictor field":
        predictor["replicas"] = 2
    elif breakage == "unknown container field":
        predictor["containers"][0]["cpuLimit"] = "1"
    elif breakage == "unknown metadata field":
        doc["metadata"]["label"] = {"a": "b"}
    elif breakage == "scale metric outside the enum":
        predictor["scaleMetric"] = "ongoing_requests"
    elif breakage == "scale target not an integer":
        predictor["scaleTarget"] = 2.5
    elif breakage == "malformed quantity":
        predictor["containers"][0]["resources"]["limits"]["memory"] = "1.5 GiB"
    elif breakage == "wrong apiVersion":
        doc["apiVersion"] = "serving.kserve.io/v1alpha1"
    else:
        del doc["spec"]["predictor"]


@pytest.mark.parametrize(
    ("breakage", "where"),
    [
        ("unknown predictor field", "spec.predictor: Additional properties"),
        ("unknown container field", "spec.predictor.containers.0: Additional properties"),
        ("unknown metadata field", "metadata: Additional properties"),
        ("scale metric outside the enum", "spec.predictor.scaleMetric: 'ongoing_requests' is not"),
        ("scale target not an integer", "spec.predictor.scaleTarget: 2.5 is not of type"),
        ("malformed quantity", "spec.predictor.containers.0.resources.limits.memory: '1.5 GiB'"),
        ("wrong apiVersion", "apiVersion: 'serving.kserve.io/v1beta1' was expected"),
        ("no predictor", "spec: 'predictor' is a required property"),
    ],
)
def test_kserve_validation_refuses_a_broken_document(breakage: str, where: str) -> None:
    doc = _in_process_inference_service()
    assert_valid_kserve(doc)
    broken = copy.deepcopy(doc)
    _break(broken, breakage)
    errors = kserve_errors(broken)
    assert any(error.startswith(where) for error in errors), errors


def test_the_autoscaling_fields_are_kserves() -> None:
    """The names and values render.py writes are the CRD's (a typo would be refused above, but
    this says which fields the mapping relies on)."""
    predictor = _kserve_schema()["properties"]["spec"]["properties"]["predictor"]["properties"]
    assert predictor["minReplicas"]["type"] == predictor["maxReplicas"]["type"] == "integer"
    assert "concurrency" in predictor["scaleMetric"]["enum"]
    assert predictor["scaleTarget"]["type"] == "integer"
    assert predictor["canaryTrafficPercent"]["type"] == "integer"


def test_without_strictness_the_crd_schema_lets_unknown_fields_through() -> None:
    """Why `strict`: the CRD's schema as published declares no `additionalProperties`, so a
    plain JSON Schema validator accepts a misspelt field the API server would drop."""
    doc = _in_process_inference_service()
    doc["spec"]["predictor"]["minReplica"] = 2
    assert list(jsonschema.Draft202012Validator(_kserve_schema()).iter_errors(doc)) == []
    assert any(e.startswith("spec.predictor: Additional properties") for e in kserve_errors(doc))


def test_knatives_port_name_rule_refuses_http() -> None:
    doc = _in_process_inference_service()
    doc["spec"]["predictor"]["containers"][0]["ports"][0]["name"] = "http"
    assert kserve_errors(doc) == []  # the CRD allows any name ...
    with pytest.raises(AssertionError, match="'name': 'http'"):
        assert_valid_kserve(doc)  # ... Knative does not
