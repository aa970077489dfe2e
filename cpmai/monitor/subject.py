"""The version `cpmai monitor` judges (its signature, reference data and settings) and the
reference profiles drift is measured against."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cpmai.errors import UsageError
from cpmai.home import home_of_artifact
from cpmai.ledger import Ledger
from cpmai.monitor import drift as drift_mod
from cpmai.monitor.textdrift import TextProfile, profile_text
from cpmai.predlog.format import log_files
from cpmai.predlog.reader import FeatureSpec
from cpmai.replay import State, replay

if TYPE_CHECKING:
    from cpmai.artifacts import Artifact
    from cpmai.manifest import InputSpec, Manifest


@dataclass
class Subject:
    """The focus version and everything needed to judge its traffic."""

    artifact: Artifact
    manifest: Manifest
    specs: list[FeatureSpec]
    inputs: list[InputSpec]
    task: str
    output_kind: str
    classes: list[Any] | None
    packaged: str
    live_since: str | None


def feature_specs(inputs: list[InputSpec]) -> list[FeatureSpec]:
    from cpmai.predlog.format import feature_kind  # the writer's rule: one place for it

    return [
        FeatureSpec(
            spec.name,
            feature_kind(spec.type),
            frozenset(spec.categories or []),
            keep=True,  # free text too: its drift is judged
        )
        for spec in inputs
    ]


def choose_version(
    home: Path, name: str, env: str, until: float | None
) -> tuple[str | None, str | None, State]:
    """(version, live since, the ledger's state then) for the period ending at `until`."""
    until_iso = None if until is None else datetime.fromtimestamp(until, UTC).isoformat()
    state = replay(Ledger(home).events(), until=until_iso)
    if name not in state.versions:
        known = ", ".join(state.names()) or "none yet"
        raise UsageError(f"no model named {name!r} has been packaged (packaged: {known})")
    env_state = state.env(name, env)
    if env_state.live is not None:
        return env_state.live.version, env_state.live.time, state
    if env_state.history:
        return env_state.history[-1].version, None, state
    return None, None, state


def newest_logged_version(folder: Path) -> str | None:
    """The version in the last complete line of the newest prediction log file."""
    import orjson

    files = sorted(log_files(folder, "predictions", None, None), key=lambda p: p.stat().st_mtime)
    for path in reversed(files):
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            tail = 65536
            while True:  # a block line can be longer than the tail read first
                handle.seek(max(0, size - tail))
                lines = handle.read(tail).split(b"\n")
                whole = lines[1:-1] if size > tail else lines
                for line in reversed(whole):
                    try:
                        return str(orjson.loads(line)["version"])
                    except (ValueError, KeyError, TypeError):
                        continue
                if tail >= size:
                    break
                tail *= 4
    return None


def load_subject(
    home: Path,
    name: str,
    version: str,
    manifest: Manifest | None,
    live_since: str | None,
    state: State | None = None,
) -> Subject:
    from cpmai.artifacts import open_artifact

    artifact = open_artifact(home, name, version)
    signature = artifact.signature
    inputs = list(signature.inputs)
    own = artifact.manifest()
    task = own.model.task
    record = (state.versions if state else {}).get(name, {}).get(artifact.version)
    if record is None:  # packaged after the period the state was replayed to
        record = replay(Ledger(home).events()).versions[name][artifact.version]
    return Subject(
        artifact=artifact,
        manifest=manifest or own,
        specs=feature_specs(inputs),
        inputs=inputs,
        task=task,
        output_kind="numeric" if task == "regression" else "categorical",
        classes=signature.classes,
        packaged=record.time,
        live_since=live_since,
    )


PROFILE_CACHE_FORMAT = 3
Profiles = dict[str, drift_mod.Profile | TextProfile]


def reference_profiles(subject: Subject) -> tuple[Profiles, drift_mod.Profile | None, int]:
    """Profiles of the reference data's features and of the model's predictions on it.

    Computed once per artifact (it means reading the reference file and running the model) and
    kept in `cache/monitor/`; a cache that cannot be read is rebuilt, never trusted."""
    import pickle

    from cpmai import __version__
    from cpmai.fsutil import write_atomic

    artifact = subject.artifact
    cache = home_of_artifact(artifact.path).cache(
        "monitor", f"{artifact.name}-{artifact.digest[:16]}.pickle"
    )
    key = (PROFILE_CACHE_FORMAT, __version__, artifact.digest)
    try:
        stored = pickle.loads(cache.read_bytes())
        if stored[0] == key:
            return stored[1]  # type: ignore[no-any-return]
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, IndexError, TypeError):
        pass
    result = _profiles(subject)
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cache, pickle.dumps((key, result)))
    return result


def _profiles(subject: Subject) -> tuple[Profiles, drift_mod.Profile | None, int]:
    from cpmai.runtime.data import read_table

    files = sorted((subject.artifact.path / "data").glob("reference.*"))
    if not files:
        return {}, None, 0
    frame = read_table(files[0])
    target = subject.artifact.manifest().data.target
    if target and target in frame.columns:
        frame = frame.drop(columns=[target])
    profiles: Profiles = {}
    for spec in subject.specs:
        if spec.name not in frame.columns:
            continue
        column = frame[spec.name]
        if spec.kind == "numeric":
            profiles[spec.name] = drift_mod.profile_numeric(
                spec.name, column.to_numpy(dtype=float, na_value=np.nan)
            )
        elif spec.kind == "categorical":
            profiles[spec.name] = drift_mod.profile_categorical(spec.name, column.tolist())
        else:
            profiles[spec.name] = profile_text(spec.name, column.tolist())
    from cpmai.runtime.predictor import Predictor

    predictor = Predictor.from_artifact(subject.artifact)
    columns = {name: frame[name].tolist() for name in predictor.signature.names}
    labels, _ = predictor.run(columns, False)
    if subject.output_kind == "numeric":
        output = drift_mod.profile_numeric("prediction", np.asarray(labels, dtype=float))
    else:
        output = drift_mod.profile_categorical("prediction", labels.tolist())
    return profiles, output, len(frame)
