"""Build, verify and open artifacts: immutable, hashed folders under `artifacts/NAME/VERSION/`.

An artifact holds the model (file or MLflow folder) under `model/`, the reference and holdout
data under `data/`, the resolved `manifest.yaml`, `signature.json`, `environment.json`,
`MODEL_CARD.md` and `artifact.json`, which lists every other file's SHA-256 and the digest: the
SHA-256 of those listings in `sha256sum` format (`<sha256>  <path>` lines, sorted by path).
No file inside depends on the version number, so packaging the same content twice gives the
same digest and is recognised.

An artifact is built in `tmp/`, then renamed into place under the ledger lock, in the same
critical section that records the `package` event: it is either fully there and recorded, or
not there at all.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cpmai import __version__, modelcard
from cpmai.errors import IntegrityError, UsageError
from cpmai.fsutil import copy_and_hash, fsync_dir, sha256_file, write_atomic
from cpmai.home import Home
from cpmai.ledger import Ledger
from cpmai.manifest import Manifest
from cpmai.replay import State, VersionRecord, replay
from cpmai.runtime import inspection
from cpmai.runtime.formats import LoadedModel
from cpmai.runtime.signature import SIGNATURE_FILE, Signature
from cpmai.steps import Step, StepLog
from cpmai.versioning import next_version, version_key

if TYPE_CHECKING:
    import pandas as pd

ARTIFACT_FILE = "artifact.json"


@dataclass
class PackageResult:
    name: str
    version: str
    digest: str
    path: Path
    created: bool
    """False when an artifact with the same digest existed: nothing new was written."""
    size_bytes: int
    format: str
    files: dict[str, str] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)

    runtime_note: str | None = None
    """One line when the model runs without its ONNX twin: why, and what that costs."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": [step.to_dict() for step in self.steps],
            "name": self.name,
            "version": self.version,
            "digest": self.digest,
            "path": str(self.path),
            "created": self.created,
            "size_bytes": self.size_bytes,
            "format": self.format,
            "files": self.files,
            "runtime_note": self.runtime_note,
        }


@dataclass
class Artifact:
    """A verified artifact on disk."""

    name: str
    version: str
    digest: str
    path: Path
    meta: dict[str, Any]

    @cached_property
    def signature(self) -> Signature:
        """The model's inputs and outputs (`signature.json`), read once."""
        return Signature.load(self.path)

    @property
    def model_path(self) -> Path:
        return self.path / str(self.meta["model"])

    def manifest(self) -> Manifest:
        from cpmai.manifest_file import load_manifest

        return load_manifest(self.path / "manifest.yaml", check_files=False)

    def load_model(self) -> LoadedModel:
        """Load the model. Only call on an artifact returned by `open_artifact` (verified)."""
        from cpmai.runtime import formats

        return formats.load(
            self.model_path,
            str(self.meta["format"]),
            trusted_types=list(self.meta.get("trusted_types", [])),
        )


# --- layout ----------------------------------------------------------------------------------


def artifact_dir(home: Path, name: str, version: str) -> Path:
    return Home(home).artifact(name, version)


def digest_of(files: dict[str, str]) -> str:
    """The artifact digest: SHA-256 of the `sha256sum`-style listing of its files."""
    import hashlib

    listing = "".join(f"{files[path]}  {path}\n" for path in sorted(files))
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


# --- building --------------------------------------------------------------------------------


def package(manifest: Manifest, home: Path, *, actor: str) -> PackageResult:
    """Build the artifact for `manifest` and record it; reuse an identical one if it exists."""
    from cpmai.runtime import formats

    source = manifest.resolve(manifest.model.path)
    log = StepLog()
    with log.step("fingerprint sources") as step:
        fingerprint = source_fingerprint(manifest, source)
        reused = _reuse(home, manifest.name, fingerprint)
        step.note = f"sha256:{fingerprint[:12]}" + (f", same as {reused.version}" if reused else "")
    if reused is not None:
        reused.steps = log.steps
        reused.runtime_note = _runtime_note_of(home, reused.path, reused.digest)
        return reused
    fmt = formats.detect_format(source, manifest.model.format)
    _remove_abandoned_builds(Home(home).tmp)
    build = Home(home).tmp / f"build-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    (build / "model").mkdir(parents=True)
    try:
        with log.step("copy and hash") as step:
            files = _copy_inputs(manifest, source, build)
            step.note = f"{len(files)} files"
        model_rel = f"model/{source.name}" if fmt != "mlflow" else "model"
        with log.step("load model") as step:
            loaded = formats.load(
                build / model_rel, fmt, trusted_types=list(manifest.model.trusted_types)
            )
            step.note = f"{fmt}, {type(loaded.obj).__name__}"
        with log.step("signature") as step:
            data = _read_data(manifest, build)
            inspected = inspection.signature_of(manifest, loaded, data, fmt)
            signature, call, probes = inspected.signature, inspected.call, inspected.probes
            step.note = f"{len(signature.inputs)} inputs, {signature.origin}"
        with log.step("runtime") as step:
            timings: dict[str, float | None] = {}
            checked = {**data, "probes": probes} if probes is not None else data
            runtime = inspection.choose_runtime(
                manifest, loaded, signature, model_rel, checked, build, files, call, timings
            )
            step.note = f"{runtime['runtime']}: {runtime['reason']}"
        with log.step("environment") as step:
            environment = _environment(loaded, runtime)
            step.note = ", ".join(f"{k} {v}" for k, v in environment["packages"].items())
        with log.step("manifest, model card, digest"):
            resolved = _resolved_manifest(manifest, model_rel, files)
            generated = {
                "manifest.yaml": yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True),
                SIGNATURE_FILE: signature.dumps(),
                "runtime.json": _json(runtime),
                "environment.json": _json(environment),
                "MODEL_CARD.md": modelcard.render(manifest, signature, environment),
            }
            for rel, text in generated.items():
                write_atomic(build / rel, text.encode("utf-8"))
                files[rel] = sha256_file(build / rel)
            digest = digest_of(files)
            size = sum(p.stat().st_size for p in build.rglob("*") if p.is_file())
        with log.step("record") as step:
            result = _commit(manifest, home, build, fmt, model_rel, files, digest, size, actor)
            _remember(home, SOURCES_CACHE, fingerprint, result.version)
            _remember(home, TIMINGS_CACHE, digest, timings)
            step.note = "new version" if result.created else "identical content exists"
        result.steps = log.steps
        result.runtime_note = runtime_note(runtime, timings)
        return result
    finally:
        shutil.rmtree(build, ignore_errors=True)


def runtime_note(runtime: dict[str, Any], timings: dict[str, Any] | None = None) -> str | None:
    """`runtime: sklearn — <why>; in-process predict X ms/row vs Y ms with the twin` for a model
    that runs without an ONNX twin (not when the manifest asked for that); else None."""
    if runtime.get("runtime") != "sklearn" or runtime.get("reason", "").startswith("runtime:"):
        return None
    reason = str(runtime.get("reason", ""))
    if len(reason) > 240:
        reason = reason[:237] + "... (every attempt is in runtime.json)"
    text = f"runtime: sklearn — {reason}"
    own, twin = (timings or {}).get("sklearn_ms_per_row"), (timings or {}).get("onnx_ms_per_row")
    if own is not None:
        text += f"; in-process predict {own:.3g} ms/row"
        if twin is not None:
            text += f" vs {twin:.3g} ms with the twin"
    return text


def source_fingerprint(manifest: Manifest, source: Path) -> str:
    """SHA-256 over everything a build depends on: the manifest's content, the bytes of the
    model and data files, and the Python environment (every installed distribution's version).
    Equal fingerprints build equal artifacts, so a repeated `package`/`deploy` skips the build."""
    import hashlib
    import platform
    from importlib import metadata

    parts = [f"cpmai {__version__}", f"python {platform.python_version()}"]
    dump = manifest.model_dump(mode="json", by_alias=True)
    dump.pop("version", None)
    dump.pop("extends", None)
    parts.append(json.dumps(dump, sort_keys=True))
    sources = [p for p in sorted(source.rglob("*")) if p.is_file()] if source.is_dir() else [source]
    for item in sources:
        parts.append(
            f"model {item.relative_to(source) if source.is_dir() else ''} {sha256_file(item)}"
        )
    for role in ("reference", "holdout"):
        rel = getattr(manifest.data, role)
        if rel is not None:
            parts.append(f"{role} {sha256_file(manifest.resolve(rel))}")
    dists = sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions())
    parts.extend(dists)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


SOURCES_CACHE = "sources.json"
TIMINGS_CACHE = "timings.json"
"""Per artifact digest, the one-row predict times measured at packaging (under scikit-learn
and the twin). Kept out of the artifact: a timing differs on every build, the digest must not."""


def _runtime_note_of(home: Path, path: Path, digest: str) -> str | None:
    """The runtime note of an artifact packaged earlier (its timings, if still cached)."""
    try:
        runtime = json.loads((path / "runtime.json").read_text())
    except (OSError, ValueError):
        return None
    try:
        found = json.loads(Home(home).cache(TIMINGS_CACHE).read_text()).get(digest)
    except (OSError, ValueError, AttributeError):
        found = None  # a cache: without it the note only lacks the figures
    return runtime_note(runtime, found if isinstance(found, dict) else None)


def _remember(home: Path, cache: str, key: str, value: Any) -> None:
    """Set `key` in one of the JSON caches under the home (`SOURCES_CACHE`: which version these
    sources built; `TIMINGS_CACHE`). Losing a cache only costs a rebuild or a figure."""
    path = Home(home).cache(cache)
    try:
        known = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    known[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(known).encode())


def _reuse(home: Path, name: str, fingerprint: str) -> PackageResult | None:
    """The packaged version built from exactly these sources, if it is recorded and intact."""
    try:
        version = json.loads(Home(home).cache(SOURCES_CACHE).read_text()).get(fingerprint)
    except (FileNotFoundError, ValueError, AttributeError):
        return None
    record = replay(Ledger(home).events()).versions.get(name, {}).get(str(version))
    if record is None or verify(home, record):
        return None  # not recorded, damaged or missing: build again (and restore it)
    path = artifact_dir(home, name, record.version)
    meta = json.loads((path / ARTIFACT_FILE).read_text())
    return PackageResult(
        name,
        record.version,
        record.digest,
        path,
        False,
        int(meta["size_bytes"]),
        str(meta["format"]),
        dict(meta["files"]),
    )


def _remove_abandoned_builds(tmp: Path) -> None:
    """Build folders left by a packaging process that was killed (its pid is gone)."""
    if not tmp.is_dir():
        return
    for folder in tmp.glob("build-*"):
        pid = folder.name.split("-")[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _copy_inputs(manifest: Manifest, source: Path, build: Path) -> dict[str, str]:
    files: dict[str, str] = {}
    sources = [p for p in sorted(source.rglob("*")) if p.is_file()] if source.is_dir() else [source]
    for item in sources:
        rel = f"model/{item.relative_to(source)}" if source.is_dir() else f"model/{source.name}"
        dest = build / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        files[rel], _ = copy_and_hash(item, dest)
    for role in ("reference", "holdout"):
        rel_source = getattr(manifest.data, role)
        if rel_source is None:
            continue
        src = manifest.resolve(rel_source)
        rel = f"data/{role}{src.suffix.lower()}"
        (build / "data").mkdir(exist_ok=True)
        files[rel], _ = copy_and_hash(src, build / rel)
    return files


def _read_data(manifest: Manifest, build: Path) -> dict[str, pd.DataFrame]:
    """The copied reference/holdout files, feature columns only (the target dropped)."""
    from cpmai.runtime.data import read_table

    frames = {}
    for path in sorted((build / "data").glob("*")) if (build / "data").exists() else []:
        given = getattr(manifest.data, path.stem)
        try:
            frame = read_table(path)
        except UsageError as exc:  # named as the user knows it, not as the build's copy
            reason = exc.message.removeprefix(f"{path.name}: ")
            raise UsageError(f"data.{path.stem} ({given}): {reason}") from None
        if frame.empty:
            raise UsageError(f"data.{path.stem} ({given}): no rows (only a header?)")
        target = manifest.data.target
        if target and target not in frame.columns:
            raise UsageError(
                f"data.{path.stem}: no column {target!r} (data.target) in "
                f"{getattr(manifest.data, path.stem)}"
            )
        frames[path.stem] = frame.drop(columns=[target]) if target else frame
    return frames


def _environment(loaded: LoadedModel, runtime: dict[str, Any]) -> dict[str, Any]:
    from cpmai.runtime import environment

    extra = {"onnx": ["onnxruntime"], "skops": ["skops"]}.get(loaded.format, [])
    if runtime.get("onnx_model"):
        extra = [*extra, "onnxruntime"]
    if loaded.flavor == "onnx":
        return environment.capture(None, extra_modules=["onnxruntime"])
    return environment.capture(loaded.obj, extra_modules=extra)


def _resolved_manifest(manifest: Manifest, model_rel: str, files: dict[str, str]) -> dict[str, Any]:
    """The manifest with defaults filled in and paths pointing inside the artifact. The version
    is left out: it is assigned after the digest and lives in artifact.json."""
    data = manifest.model_dump(mode="json", by_alias=True)
    data.pop("version", None)
    data.pop("extends", None)  # merged in already: the artifact stands alone
    data["model"]["path"] = model_rel
    for role in ("reference", "holdout"):
        inside = [rel for rel in files if rel.startswith(f"data/{role}.")]
        data["data"][role] = inside[0] if inside else None
    return data


def _commit(
    manifest: Manifest,
    home: Path,
    build: Path,
    fmt: str,
    model_rel: str,
    files: dict[str, str],
    digest: str,
    size: int,
    actor: str,
) -> PackageResult:
    name = manifest.name
    ledger = Ledger(home)
    with ledger.transaction() as tx:
        state = replay(tx.events())
        existing = state.find_digest(name, digest)
        if existing is not None:
            dest = artifact_dir(home, name, existing.version)
            if dest.exists():
                return PackageResult(name, existing.version, digest, dest, False, size, fmt, files)
            # recorded but deleted from disk: the same bytes restore it under its own version
            _place(
                build, dest, _meta(manifest, existing.version, digest, fmt, model_rel, files, size)
            )
            tx.append(
                "restore",
                actor=actor,
                name=name,
                version=existing.version,
                details={"digest": digest},
            )
            return PackageResult(name, existing.version, digest, dest, True, size, fmt, files)
        version = manifest.version or next_version(list(state.versions.get(name, {})))
        if version in state.versions.get(name, {}):
            raise UsageError(
                f"{name} {version} is already packaged with different content "
                f"(digest {state.versions[name][version].digest[:12]}); artifacts are immutable",
                hint="raise `version:` in the manifest, or remove it to number versions for you",
            )
        dest = artifact_dir(home, name, version)
        if dest.exists():  # left by a crash after the rename, before the ledger event
            shutil.rmtree(dest)
        _place(build, dest, _meta(manifest, version, digest, fmt, model_rel, files, size))
        tx.append(
            "package",
            actor=actor,
            name=name,
            version=version,
            details={
                "digest": digest,
                "format": fmt,
                "size_bytes": size,
                "files": len(files),
                "source": str(manifest.file) if manifest.file else None,
            },
        )
    return PackageResult(name, version, digest, dest, True, size, fmt, files)


def _meta(
    manifest: Manifest,
    version: str,
    digest: str,
    fmt: str,
    model_rel: str,
    files: dict[str, str],
    size: int,
) -> dict[str, Any]:
    return {
        "name": manifest.name,
        "version": version,
        "digest": digest,
        "format": fmt,
        "model": model_rel,
        "trusted_types": list(manifest.model.trusted_types),
        "size_bytes": size,
        "packaged_by": f"cpmai {__version__}",
        "files": dict(sorted(files.items())),
    }


def _place(build: Path, dest: Path, meta: dict[str, Any]) -> None:
    """Write artifact.json, make every file read-only and rename the build into place."""
    write_atomic(build / ARTIFACT_FILE, _json(meta).encode("utf-8"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    for item in build.rglob("*"):
        if item.is_file():
            item.chmod(0o444)
    build.rename(dest)
    fsync_dir(dest.parent)


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


# --- verifying and opening -------------------------------------------------------------------


def verify(home: Path, record: VersionRecord) -> list[str]:
    """Every way the artifact on disk differs from what the ledger recorded (empty: intact)."""
    path = artifact_dir(home, record.name, record.version)
    where = f"artifacts/{record.name}/{record.version}"
    try:
        meta = json.loads((path / ARTIFACT_FILE).read_text())
        listed: dict[str, str] = dict(meta["files"])
    except FileNotFoundError:
        return [f"{where}: missing (the ledger recorded it at seq {record.seq})"]
    except (ValueError, KeyError, TypeError):
        return [f"{where}/{ARTIFACT_FILE}: unreadable"]
    problems = []
    if meta.get("digest") != record.digest or digest_of(listed) != record.digest:
        problems.append(f"{where}/{ARTIFACT_FILE}: file list does not match the recorded digest")
    if meta.get("version") != record.version or meta.get("name") != record.name:
        problems.append(f"{where}/{ARTIFACT_FILE}: names another version")
    on_disk = {
        str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and p.name != ARTIFACT_FILE
    }
    for rel in sorted(set(listed) | on_disk):
        if rel not in on_disk:
            problems.append(f"{where}/{rel}: missing")
        elif rel not in listed:
            problems.append(f"{where}/{rel}: not part of the artifact (added later?)")
        elif sha256_file(path / rel) != listed[rel]:
            problems.append(f"{where}/{rel}: content changed (SHA-256 differs)")
    return problems


def resolve_version(state: State, name: str, version: str | None) -> VersionRecord:
    """The named version, or the latest packaged one. UsageError naming what exists."""
    known = state.versions.get(name)
    if not known:
        names = ", ".join(state.names()) or "none yet"
        raise UsageError(f"no model named {name!r} has been packaged (packaged: {names})")
    if version is None:
        return max(known.values(), key=lambda r: version_key(r.version))
    if version not in known:
        listing = ", ".join(sorted(known, key=version_key))
        raise UsageError(f"{name} has no version {version} (versions: {listing})")
    return known[version]


def open_artifact(home: Path, name: str, version: str | None = None) -> Artifact:
    """The artifact, after checking its bytes against the ledger. Raises IntegrityError (exit 5)
    before anything in it is loaded if a byte differs."""
    record = resolve_version(replay(Ledger(home).events()), name, version)
    problems = verify(home, record)
    if problems:
        raise IntegrityError(
            f"refusing to load {name} {record.version}: it does not match the ledger:\n"
            + "\n".join(f"  {p}" for p in problems)
        )
    path = artifact_dir(home, name, record.version)
    meta = json.loads((path / ARTIFACT_FILE).read_text())
    return Artifact(name=name, version=record.version, digest=record.digest, path=path, meta=meta)
