"""The edge target: a self-contained bundle for a device — the ONNX model, its signature and a
small runner (`runner.py`) that needs only numpy and onnxruntime, no scikit-learn and no cpmai,
to score a CSV or answer a minimal HTTP endpoint.

`renders/NAME/ENV/` holds `model.onnx` (the artifact's ONNX twin, which agreed with the original
model at package time), `signature.json`, `runner.py`, `requirements.txt` (numpy and
onnxruntime pinned to the versions that made and checked the twin), `README.md` and
`bundle.json` (version, digest, every file's SHA-256). A model with no ONNX twin cannot go to
the edge: the rollout is refused and says why.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpmai.errors import TargetError
from cpmai.fsutil import read_json_object, sha256_file, write_atomic
from cpmai.runtime.signature import SIGNATURE_FILE
from cpmai.targets import Progress, RolloutPlan, RolloutResult, TargetStatus
from cpmai.targets.render import files_written, render_folder, swap_in

if TYPE_CHECKING:
    from cpmai.artifacts import Artifact

RUNNER = Path(__file__).resolve().parent.parent / "templates" / "edge_runner.py"


def bundle_requirements(artifact: Artifact) -> list[str]:
    from importlib import metadata

    packages = json.loads((artifact.path / "environment.json").read_text()).get("packages", {})
    runtime = json.loads((artifact.path / "runtime.json").read_text())
    pins = []
    for package in ("numpy", "onnxruntime"):
        version = packages.get(package) or runtime.get("versions", {}).get(package)
        if version is None:
            try:
                version = metadata.version(package)
            except metadata.PackageNotFoundError:
                version = None
        pins.append(f"{package}=={version}" if version else package)
    return pins


def edge_model(runtime: dict[str, Any], label: str) -> str:
    """The ONNX file an edge bundle may ship: only one the artifact itself runs (`runtime.json`
    says `onnx`), so a twin that disagreed with the model, or was never checked, stays out."""
    twin = runtime.get("onnx_model")
    if runtime.get("runtime") != "onnx" or not twin:
        why = runtime.get("reason") or "it did not convert"
        raise TargetError(
            f"{label} has no ONNX twin it runs on, so it cannot run on the edge ({why})",
            hint="the edge runner needs only onnxruntime: use a model skl2onnx converts and "
            "that agrees with its twin, or give an .onnx model in model.path",
        )
    return str(twin)


class EdgeTarget:
    kind = "edge"

    def __init__(self, home: Path, name: str, env: str) -> None:
        self.home, self.name, self.env = home, name, env
        self.folder = render_folder(home, name, env)
        self.record_path = self.folder / "bundle.json"

    def _record(self) -> dict[str, Any] | None:
        return read_json_object(self.record_path)

    def rollout(self, plan: RolloutPlan, progress: Progress) -> RolloutResult:
        from cpmai.artifacts import open_artifact

        started = time.perf_counter()
        artifact = open_artifact(self.home, plan.name, plan.version)
        runtime = json.loads((artifact.path / "runtime.json").read_text())
        twin = edge_model(runtime, f"{plan.name} {plan.version}")
        if not (artifact.path / twin).is_file():
            raise TargetError(f"{plan.name} {plan.version}: {twin} is missing from the artifact")
        record = self._record() or {}
        previous = None if record.get("stopped") else record.get("version")
        scratch = self.folder.with_name(f".{self.env}.{time.time_ns()}")
        scratch.mkdir(parents=True)
        try:
            shutil.copy2(artifact.path / twin, scratch / "model.onnx")
            # as packaged, byte for byte: the standalone runner reads it without cpmai
            shutil.copy2(artifact.path / SIGNATURE_FILE, scratch / SIGNATURE_FILE)
            shutil.copy2(RUNNER, scratch / "runner.py")
            (scratch / "requirements.txt").write_text(
                "\n".join(bundle_requirements(artifact)) + "\n"
            )
            (scratch / "README.md").write_text(_readme(artifact))
            files = sorted(p.name for p in scratch.iterdir())
            bundle = {
                "name": plan.name,
                "env": self.env,
                "version": plan.version,
                "digest": artifact.digest,
                "input_mode": runtime.get("input_mode", "columns"),
                "graph_inputs": runtime.get("graph_inputs") or {},
                "parity": runtime.get("parity"),
                "files": {f: "sha256:" + sha256_file(scratch / f) for f in files},
                "rendered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            write_atomic(scratch / "bundle.json", json.dumps(bundle, indent=1).encode())
            swap_in(scratch, self.folder)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        command = f"cd {self.folder} && pip install -r requirements.txt && python runner.py serve"
        progress(f"edge bundle for {plan.version} in {self.folder}")
        progress(f"on the device: {command}")
        return files_written("bundle", started, self.folder, command, previous)

    def status(self) -> TargetStatus:
        record = self._record()
        if record is None:
            return TargetStatus(state="stopped", detail="no bundle")
        if record.get("stopped"):
            return TargetStatus(state="stopped", detail=f"bundle kept in {self.folder}")
        return TargetStatus(
            state="rendered", live=record.get("version"), detail=f"edge bundle in {self.folder}"
        )

    def stop(self) -> None:
        record = self._record()
        if record is not None:
            record["stopped"] = True
            write_atomic(self.record_path, json.dumps(record, indent=1).encode())


def _readme(artifact: Artifact) -> str:
    return f"""# {artifact.name} {artifact.version} — edge bundle

Made by `cpmai deploy` from artifact sha256:{artifact.digest}. Needs Python 3.9+ with numpy and
onnxruntime only (`pip install -r requirements.txt`).

    python runner.py score customers.csv --output scored.csv [--probabilities]
    python runner.py serve --host 127.0.0.1 --port 8080
    curl -s -X POST localhost:8080/invocations -H 'Content-Type: application/json' \\
      -d '{{"dataframe_records": [{{...one row of inputs...}}]}}'

`signature.json` lists the inputs, their types, ranges and categories; the runner refuses
input that does not fit it. `bundle.json` holds every file's SHA-256.
"""
