"""Render targets: `docker`, `kubernetes` and `kserve` write what a platform needs to run a
version — cpmai builds no image and talks to no cluster (there may be none here); it writes a
ready build context and the manifests, and says the exact command that applies them.

`renders/NAME/ENV/` holds, for every kind:
- `Dockerfile`, `requirements.txt` (the artifact's pinned packages and cpmai's own), `lib/cpmai/`
  (cpmai's code, so the image needs nothing but PyPI), `state/` (the artifact and the ledger:
  `cpmai serve` in the image verifies the artifact against it, as everywhere else);
- kubernetes: `kubernetes.yaml` — Deployment (replicas, CPU/memory requests and limits, liveness
  and readiness probes on the Open Inference Protocol's health endpoints), Service, and a
  HorizontalPodAutoscaler (between the replica floor and ceiling, on CPU);
- kserve: `kserve.yaml` — an InferenceService with a custom predictor container speaking
  protocol v2, `canaryTrafficPercent` from the rollout's first step when a version replaces
  another, and a concurrency target when `replicas:` is a range;
- `render.json`: what was rendered (version, digest, files, the command).
A new rollout is written beside the old one and swapped in, so the folder is never half written.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpmai.fsutil import read_json_object, write_atomic
from cpmai.home import Home
from cpmai.targets import Progress, RolloutPlan, RolloutResult, TargetStatus

if TYPE_CHECKING:
    from cpmai.artifacts import Artifact
    from cpmai.manifest import Environment

PORT = 8080
RENDER_KINDS = ("docker", "kubernetes", "kserve")


def environment_of(artifact: Artifact) -> dict[str, Any]:
    """The artifact's environment.json: Python and the packages the model was packaged with."""
    data: dict[str, Any] = json.loads((artifact.path / "environment.json").read_text())
    return data


def swap_in(scratch: Path, folder: Path) -> None:
    """Put the fully written `scratch` folder in place of `folder` (the old one goes after)."""
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old.{time.time_ns()}")
        folder.rename(old)
    scratch.rename(folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def files_written(
    step: str, started: float, folder: Path, command: str, previous: str | None
) -> RolloutResult:
    """The rollout of a target that only writes files: the writing, then the command that
    applies them (run by the user, so it takes no time here)."""
    seconds = round(time.perf_counter() - started, 3)
    return RolloutResult(
        url=None,
        previous=previous,
        steps=[
            {"step": step, "seconds": seconds, "note": str(folder)},
            {"step": "apply", "seconds": 0.0, "note": command},
        ],
    )


def render_folder(home: Path, name: str, env: str) -> Path:
    return Home(home).renders(name, env)


def image_for(spec: Environment, name: str, version: str) -> str:
    """The manifest's `image:` (with :VERSION added when it names no tag), else NAME:VERSION."""
    if not spec.image:
        return f"{name}:{version}"
    last = spec.image.rsplit("/", 1)[-1]
    return spec.image if (":" in last or "@" in last) else f"{spec.image}:{version}"


def cpu_quantity(cores: float) -> str:
    return f"{cores:g}" if float(cores).is_integer() else f"{round(cores * 1000)}m"


def memory_quantity(gib: float) -> str:
    return f"{gib:g}Gi" if float(gib).is_integer() else f"{round(gib * 1024)}Mi"


def requirements(artifact: Artifact) -> list[str]:
    """Pinned requirements: the artifact's recorded packages, and cpmai's own dependencies at
    the versions installed here (the ones its tests ran with)."""
    import re
    from importlib import metadata

    pins: dict[str, str] = {}
    for requirement in metadata.requires("cpmai") or []:
        if "extra ==" in requirement:
            continue
        match = re.match(r"[A-Za-z0-9_.-]+", requirement)
        if match is None:
            continue
        package = match.group(0)
        try:
            pins[package.lower()] = f"{package}=={metadata.version(package)}"
        except metadata.PackageNotFoundError:
            continue
    for package, version in sorted(environment_of(artifact).get("packages", {}).items()):
        pins[package.lower()] = f"{package}=={version}"
    return [pins[key] for key in sorted(pins)]


def dockerfile(artifact: Artifact, env: str) -> str:
    python = ".".join(str(environment_of(artifact).get("python", "3.11")).split(".")[:2])
    ref = f"{artifact.name}@{artifact.version}"
    return f"""\
# Rendered by cpmai for {artifact.name} {artifact.version} ({env})
# artifact sha256:{artifact.digest}
FROM python:{python}-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 CPMAI_HOME=/srv/state PYTHONPATH=/srv/lib
WORKDIR /srv
COPY requirements.txt /srv/requirements.txt
RUN pip install --no-cache-dir -r /srv/requirements.txt
COPY lib/ /srv/lib/
COPY state/ /srv/state/
RUN useradd --uid 10001 --no-create-home cpmai && chown -R 10001 /srv/state
USER 10001
EXPOSE {PORT}
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; \\
urllib.request.urlopen('http://127.0.0.1:{PORT}/v2/health/ready')"
CMD ["python", "-m", "cpmai", "serve", "{ref}", "--host", "0.0.0.0", "--port", "{PORT}", \\
"--env", "{env}"]
"""


def _labels(name: str, env: str, version: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/instance": f"{name}-{env}",
        "app.kubernetes.io/version": version,
        "app.kubernetes.io/managed-by": "cpmai",
    }


def _container(image: str, spec: Environment) -> dict[str, Any]:
    resources = {
        "cpu": cpu_quantity(spec.resources.cpu),
        "memory": memory_quantity(spec.resources.memory_gb),
    }
    return {
        "name": "model",
        "image": image,
        "ports": [{"containerPort": PORT, "name": "http", "protocol": "TCP"}],
        "resources": {"requests": resources, "limits": dict(resources)},
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": PORT},
            "initialDelaySeconds": 5,
            "periodSeconds": 10,
        },
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": PORT},
            "initialDelaySeconds": 2,
            "periodSeconds": 5,
        },
    }


def kubernetes_documents(
    name: str, env: str, version: str, spec: Environment, image: str
) -> list[dict[str, Any]]:
    full = f"{name}-{env}"
    meta = {"name": full, "labels": _labels(name, env, version)}
    if spec.namespace:
        meta["namespace"] = spec.namespace
    select = {"app.kubernetes.io/instance": full}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        # no `replicas`: the HorizontalPodAutoscaler owns the count (from minReplicas), and a
        # count here would be reset by every `kubectl apply` of this file
        "spec": {
            "selector": {"matchLabels": select},
            "template": {
                "metadata": {"labels": _labels(name, env, version)},
                "spec": {"containers": [_container(image, spec)]},
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "selector": select,
            "ports": [{"name": "http", "port": 80, "targetPort": PORT, "protocol": "TCP"}],
        },
    }
    # The HPA scales on CPU: a Deployment's pods expose no in-flight request count to the
    # HPA unless a custom metrics adapter (e.g. prometheus-adapter) serves one, which cpmai
    # cannot assume, so `target_ongoing_requests` has no counterpart here — only the range.
    autoscaler = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": full},
            "minReplicas": spec.min_replicas,
            "maxReplicas": spec.max_replicas_allowed,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 70},
                    },
                }
            ],
        },
    }
    return [deployment, service, autoscaler]


def kserve_document(
    name: str, env: str, version: str, spec: Environment, image: str, canary: int | None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"{name}-{env}", "labels": _labels(name, env, version)}
    if spec.namespace:
        meta["namespace"] = spec.namespace
    container = _container(image, spec)
    container["name"] = "kserve-container"
    # Knative (KServe's serverless mode) accepts only "", "h2c" or "http1" as the port's name:
    # it names the protocol (knative/serving pkg/apis/serving/k8s_validation.go).
    container["ports"][0]["name"] = "http1"
    predictor: dict[str, Any] = {
        "minReplicas": spec.min_replicas,
        "maxReplicas": spec.max_replicas_allowed,
    }
    if spec.autoscaling is not None:
        # requests in flight per replica; KServe's scaleTarget is an integer
        predictor["scaleMetric"] = "concurrency"
        predictor["scaleTarget"] = math.ceil(spec.autoscaling.target_ongoing_requests)
    predictor["containers"] = [container]
    if canary is not None:
        predictor["canaryTrafficPercent"] = canary
    meta["annotations"] = {"serving.kserve.io/protocol-version": "v2"}
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": meta,
        "spec": {"predictor": predictor},
    }


class RenderTarget:
    """docker, kubernetes or kserve: files and a command, nothing started."""

    def __init__(self, kind: str, home: Path, name: str, env: str) -> None:
        self.kind, self.home, self.name, self.env = kind, home, name, env
        self.folder = render_folder(home, name, env)
        self.record_path = self.folder / "render.json"

    def _record(self) -> dict[str, Any] | None:
        return read_json_object(self.record_path)

    def command(self, image: str) -> str:
        build = f"docker build -t {image} {self.folder}"
        if self.kind == "docker":
            return f"{build} && docker run --rm -p {PORT}:{PORT} {image}"
        manifest = "kubernetes.yaml" if self.kind == "kubernetes" else "kserve.yaml"
        return f"{build} && docker push {image} && kubectl apply -f {self.folder / manifest}"

    def rollout(self, plan: RolloutPlan, progress: Progress) -> RolloutResult:
        import yaml

        from cpmai.artifacts import open_artifact

        started = time.perf_counter()
        artifact = open_artifact(self.home, plan.name, plan.version)
        previous = (self._record() or {}).get("version")
        if (self._record() or {}).get("stopped"):
            previous = None
        image = image_for(plan.spec, plan.name, plan.version)
        scratch = self.folder.with_name(f".{self.env}.{time.time_ns()}")
        scratch.mkdir(parents=True)
        try:
            files = self._write_context(scratch, artifact)
            canary = None
            if plan.canary and previous and previous != plan.version:
                canary = plan.spec.rollout.steps[0]
            if self.kind == "kubernetes":
                docs = kubernetes_documents(plan.name, self.env, plan.version, plan.spec, image)
                (scratch / "kubernetes.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
                files.append("kubernetes.yaml")
            elif self.kind == "kserve":
                doc = kserve_document(plan.name, self.env, plan.version, plan.spec, image, canary)
                (scratch / "kserve.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
                files.append("kserve.yaml")
            command = self.command(image)
            record = {
                "kind": self.kind,
                "name": plan.name,
                "env": self.env,
                "version": plan.version,
                "digest": artifact.digest,
                "image": image,
                "canary_percent": canary,
                "files": sorted(files),
                "command": command,
                "rendered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            write_atomic(scratch / "render.json", json.dumps(record, indent=1).encode())
            self._swap(scratch)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        progress(f"rendered {self.kind} files for {plan.version} in {self.folder}")
        progress(f"apply with: {command}")
        return files_written("render", started, self.folder, command, previous)

    def _write_context(self, folder: Path, artifact: Artifact) -> list[str]:
        import cpmai

        (folder / "Dockerfile").write_text(dockerfile(artifact, self.env))
        (folder / "requirements.txt").write_text("\n".join(requirements(artifact)) + "\n")
        (folder / ".dockerignore").write_text("render.json\n*.yaml\n")
        source = Path(cpmai.__file__).parent
        shutil.copytree(
            source, folder / "lib" / "cpmai", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        state = folder / "state"
        shipped, here = Home(state), Home(self.home)
        shutil.copytree(
            artifact.path, shipped.artifact(artifact.name, artifact.version), symlinks=False
        )
        for ledger_file, copy in ((here.ledger, shipped.ledger),
                                  (here.ledger_head, shipped.ledger_head)):  # fmt: skip
            if ledger_file.exists():
                shutil.copy2(ledger_file, copy)
        return ["Dockerfile", "requirements.txt", ".dockerignore", "lib/cpmai/", "state/"]

    def _swap(self, scratch: Path) -> None:
        swap_in(scratch, self.folder)

    def status(self) -> TargetStatus:
        record = self._record()
        if record is None:
            return TargetStatus(state="stopped", detail="nothing rendered")
        if record.get("stopped"):
            return TargetStatus(
                state="stopped",
                detail=f"files kept in {self.folder}; remove what runs with: "
                f"{self._delete_command()}",
            )
        return TargetStatus(
            state="rendered",
            live=record.get("version"),
            detail=f"{self.folder}; apply with: {record.get('command')}",
        )

    def _delete_command(self) -> str:
        if self.kind == "docker":
            return "docker stop <container>"
        manifest = "kubernetes.yaml" if self.kind == "kubernetes" else "kserve.yaml"
        return f"kubectl delete -f {self.folder / manifest}"

    def stop(self) -> None:
        record = self._record()
        if record is None:
            return
        record["stopped"] = True
        record["delete_command"] = self._delete_command()
        write_atomic(self.record_path, json.dumps(record, indent=1).encode())
