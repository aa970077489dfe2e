"""Data quality of what was served, and model quality once ground truth arrives.

Ground truth comes as a file (`--labels labels.csv`) or from a database query
(`monitoring.labels`): with an `id` column it is joined on the request id the server returned
(`X-Request-Id`, or the OIP body's `id`), and an optional `row` column (0-based) picks a row of
a multi-row request; a query's key columns are joined on the key a batch run logged its rows
under (`cpmai predict --key`); a file without an id follows the scored rows in time order.
The label column is `label`, or the manifest's `data.target`, or the one column left.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cpmai.errors import UsageError
from cpmai.manifest import LABEL_METRICS, InputSpec, LabelsQuery
from cpmai.monitor.drift import category_key
from cpmai.monitor.result import DataQuality
from cpmai.predlog.reader import FeatureSpec, Traffic
from cpmai.stats import LOWER_IS_BETTER, score

if TYPE_CHECKING:
    import pandas as pd


def data_quality(
    traffic: Traffic, specs: list[FeatureSpec], inputs: list[InputSpec]
) -> list[DataQuality]:
    """Per input: missing values, values outside the reference range, unseen categories (refused,
    or served where the input is open: the model encodes them)."""
    bounds = {spec.name: (spec.min, spec.max) for spec in inputs}
    rows = int(traffic.row_time.shape[0])
    out = []
    for spec in specs:
        entry: dict[str, Any] = {"feature": spec.name, "kind": spec.kind, "rows": rows}
        values = traffic.features.get(spec.name)
        if values is None:
            entry.update(missing=None, out_of_range=None, unseen=0)
        else:
            missing = (
                int(np.isnan(values).sum()) if spec.kind == "numeric" else int((values < 0).sum())
            )
            entry["missing"] = missing
            entry["missing_share"] = round(missing / rows, 6) if rows else None
            low, high = bounds.get(spec.name, (None, None))
            if spec.kind == "numeric" and low is not None and high is not None:
                with np.errstate(invalid="ignore"):
                    outside = int(((values < low) | (values > high)).sum())
                entry["out_of_range"] = outside
                entry["out_of_range_share"] = round(outside / rows, 6) if rows else None
            else:
                entry["out_of_range"] = None
        unseen = Counter(traffic.unseen.get(spec.name) or {})
        if values is not None and spec.kind == "categorical" and spec.categories:
            unseen.update(_served_unseen(values, traffic.vocab.get(spec.name, []), spec))
        entry["unseen"] = sum(unseen.values())
        if unseen:
            entry["unseen_values"] = dict(unseen.most_common(5))
        out.append(DataQuality(**entry))
    return out


def _served_unseen(codes: np.ndarray, vocab: list[Any], spec: FeatureSpec) -> Counter[str]:
    """Values of the log's vocabulary the reference never had, and how many rows had each."""
    novel = [
        i for i, value in enumerate(vocab) if value is not None and value not in spec.categories
    ]
    if not novel:
        return Counter()
    counts = np.bincount(codes[codes >= 0], minlength=len(vocab))
    return Counter({str(vocab[i]): int(counts[i]) for i in novel if counts[i]})


@dataclass
class Labels:
    truth: np.ndarray
    """Per focus row: the true label (object), or None where no label matched."""
    matched: int
    given: int
    join: str


def read_labels(source: Path | LabelsQuery, traffic: Traffic, *, target: str | None) -> Labels:
    """Ground truth from a file (`--labels FILE`) or a database query (`monitoring.labels`,
    `--labels URL --labels-query …`), matched to the period's rows."""
    if isinstance(source, Path):
        from cpmai.runtime.data import read_table

        return _match(read_table(source), traffic, target=target, label=None, where=source.name)
    frame = query_labels(source)
    labels = _match(frame, traffic, target=target, label=source.label, where="the labels query")
    if source.key not in ("id", ["id"], ["id", "row"]):
        labels.join = "key"
    return labels


def query_labels(source: LabelsQuery) -> pd.DataFrame:
    """The labels query's rows, with the key column(s) made the `id` a batch row is logged
    under (`cpmai.predlog.entry.key_id`)."""
    from cpmai.batch.locations import SqlLocation, location
    from cpmai.batch.sql import read_query

    where = location(source.url, option="monitoring.labels.url")
    if not isinstance(where, SqlLocation):
        raise UsageError("monitoring.labels.url: not a database URL (a file goes in --labels)")
    frame = read_query(where, source.query)
    keys = [source.key] if isinstance(source.key, str) else list(source.key)
    missing = [k for k in keys if k not in frame.columns]
    if missing:
        raise UsageError(
            f"the labels query gives no column {', '.join(missing)} (its columns: "
            f"{', '.join(map(str, frame.columns))}; monitoring.labels.key names the key)"
        )
    frame = frame[frame[keys].notna().all(axis=1)]  # a label for no row is none at all
    if keys == ["id"] or keys == ["id", "row"]:
        return frame
    from cpmai.predlog.entry import key_id

    columns = [frame[k].tolist() for k in keys]
    ids = [key_id(list(values)) for values in zip(*columns, strict=True)]
    return frame.drop(columns=keys).assign(id=ids)


def _match(
    frame: pd.DataFrame, traffic: Traffic, *, target: str | None, label: str | None, where: str
) -> Labels:
    if label is not None and label not in frame.columns:
        raise UsageError(f"{where}: no column {label!r} (columns: {list(frame.columns)})")
    column = label or _label_column(frame.columns.tolist(), target, where)
    rows = int(traffic.row_time.shape[0])
    truth = np.full(rows, None, dtype=object)
    values = frame[column].tolist()
    matched: int
    if "id" in frame.columns:
        if traffic.ids is None:
            raise UsageError("internal: request ids were not read")
        where_rows: dict[tuple[str, int], list[int]] = {}
        for position, (rid, row) in enumerate(traffic.ids):
            where_rows.setdefault((str(rid), row), []).append(position)
        row_numbers = frame["row"].tolist() if "row" in frame.columns else [0] * len(frame)
        matched = 0
        for rid, row, value in zip(frame["id"].tolist(), row_numbers, values, strict=True):
            found = where_rows.get((str(rid), int(row)))
            if found and _present(value):
                truth[found] = value  # a row scored in several runs: each prediction is judged
                matched += 1
        return Labels(truth, matched, len(frame), "id")
    if len(frame) != rows:
        raise UsageError(
            f"{where}: {len(frame)} labels but {rows} scored rows in the period; with no "
            "`id` column labels follow the rows in order, so the counts must match "
            "(add an id column, or choose the period with --since/--until)"
        )
    order = np.argsort(traffic.row_time, kind="stable")
    truth[order] = np.array(values, dtype=object)
    matched = sum(1 for v in values if _present(v))
    return Labels(truth, matched, len(frame), "row order")


def _present(value: Any) -> bool:
    return value is not None and value == value


def _label_column(columns: list[str], target: str | None, where: str) -> str:
    if "label" in columns:
        return "label"
    if target and target in columns:
        return target
    rest = [c for c in columns if c not in ("id", "row")]
    if len(rest) == 1:
        return rest[0]
    wanted = "`label`" + (f" or `{target}`" if target else "")
    raise UsageError(f"{where}: no label column (expected {wanted}; columns: {columns})")


def model_quality(
    task: str,
    truth: np.ndarray,
    predicted: np.ndarray,
    vocab: list[Any] | None,
    classes: list[Any] | None = None,
) -> dict[str, float]:
    """The task's label metrics on the rows that have a label (predictions decoded from codes);
    `classes` in the model's order (the last is the positive class of a binary task)."""
    has = np.array([_present(v) for v in truth.tolist()], dtype=bool) if len(truth) else truth
    if not has.any():
        return {}
    if task == "regression":
        y = np.asarray(truth[has], dtype=float)
        p = np.asarray(predicted[has], dtype=float)
        return {m: score(m, y, p, None, None) for m in LABEL_METRICS[task]}
    assert vocab is not None
    decoded = np.array([category_key(v) for v in vocab] + [""], dtype=object)
    said = decoded[predicted[has]]
    actual = np.array([category_key(v) for v in truth[has].tolist()], dtype=object)
    seen = set(actual.tolist()) | set(said.tolist())
    known = [category_key(c) for c in classes or []]
    ordered = known + sorted(seen - set(known))
    return {m: score(m, actual, said, None, ordered) for m in LABEL_METRICS[task]}


def below_bound(metric: str, value: float, bound: float) -> bool:
    """Whether `value` breaks the quality bound (a floor, or a ceiling for error metrics)."""
    return value > bound if metric in LOWER_IS_BETTER else value < bound
