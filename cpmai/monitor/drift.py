"""Data drift: is a feature's live distribution still the reference data's?

The method follows Evidently's defaults (../shared/REFERENCE.md), chosen per feature by type and
reference size: numeric features with more than 5 distinct reference values use the two-sample
Kolmogorov–Smirnov test (drift when p < p_value) up to 1,000 reference rows and the Wasserstein
distance divided by the reference standard deviation (drift when ≥ threshold) above;
categorical features, and numeric ones with at most 5 distinct values, use the chi-square test
of homogeneity up to 1,000 reference rows and the Jensen–Shannon distance (natural log, as
scipy computes it) above. Large samples make p-values tiny for trivial shifts, hence distances
there. PSI is reported for every feature (10 reference-quantile bins, empty bins floored at
1e-4). Fewer current rows than `min_samples`: "not enough data", never a verdict.

The tests are scipy's (imported only when a small reference needs them); distances are
computed here with numpy, in O(n log n) with a single sort of the current sample.

Free text is judged in `cpmai.monitor.textdrift`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cpmai.monitor.result import FeatureDrift as FeatureDriftDoc

SMALL_REFERENCE = 1000
FEW_VALUES = 5
PSI_BINS = 10
PSI_FLOOR = 1e-4
STD_FLOOR = 0.001


@dataclass
class Profile:
    """One feature of the reference data, prepared once for many comparisons."""

    name: str
    kind: str
    """"numeric" or "categorical" (after the few-distinct-values rule)."""
    rows: int
    sorted_values: np.ndarray | None = None
    std: float = 0.0
    edges: np.ndarray | None = None
    """Inner PSI bin edges (reference quantiles)."""
    bin_share: np.ndarray | None = None
    categories: list[Any] | None = None
    """Categorical: the reference's values, in order; `counts` are theirs."""
    counts: np.ndarray | None = None


@dataclass
class FeatureDrift:
    name: str
    kind: str
    method: str
    """"ks", "wasserstein", "chi2" or "jensen_shannon"."""
    rows: int
    reference_rows: int
    statistic: float | None = None
    """The method's statistic: KS D, chi-square, or the distance."""
    p_value: float | None = None
    psi: float | None = None
    drifted: bool | None = None
    """None: not enough data to say."""
    threshold: float = 0.0
    """The p-value bound (tests) or the distance bound (distances)."""

    @property
    def status(self) -> str:
        return "not enough data" if self.drifted is None else ("drift" if self.drifted else "ok")

    def document(self) -> FeatureDriftDoc:
        """The comparison as `cpmai monitor` reports it (statistics to 6 significant digits)."""
        return FeatureDriftDoc(**self.fields())

    def fields(self) -> dict[str, Any]:
        """The fields every drift verdict shares (a text input's length has them too)."""
        return {
            "feature": self.name,
            "kind": self.kind,
            "method": self.method,
            "rows": self.rows,
            "reference_rows": self.reference_rows,
            "statistic": rounded(self.statistic),
            "p_value": rounded(self.p_value),
            "psi": rounded(self.psi),
            "threshold": self.threshold,
            "drifted": self.drifted,
            "status": self.status,
        }

    def to_dict(self) -> dict[str, Any]:
        return self.document().to_json()


def rounded(value: float | None) -> float | None:
    """A statistic as reported: 6 significant digits."""
    return None if value is None else float(f"{value:.6g}")


def profile_numeric(name: str, values: np.ndarray) -> Profile:
    present = np.sort(values[~np.isnan(values)])
    distinct = np.unique(present)
    if len(distinct) <= FEW_VALUES:
        return Profile(
            name,
            "categorical",
            len(present),
            categories=distinct.tolist(),
            counts=np.array([np.sum(present == v) for v in distinct], dtype=np.int64),
        )
    quantiles = np.quantile(present, np.linspace(0, 1, PSI_BINS + 1)[1:-1])
    edges = np.unique(quantiles)
    share = np.bincount(np.searchsorted(edges, present, side="right"), minlength=len(edges) + 1)
    return Profile(
        name,
        "numeric",
        len(present),
        sorted_values=present,
        std=float(np.std(present)),
        edges=edges,
        bin_share=share / max(len(present), 1),
    )


def profile_categorical(name: str, values: list[Any]) -> Profile:
    counts: dict[Any, int] = {}
    for value in values:
        if value is not None and value == value:  # NaN != NaN: a missing value
            counts[value] = counts.get(value, 0) + 1
    categories = sorted(counts, key=str)
    return Profile(
        name,
        "categorical",
        sum(counts.values()),
        categories=categories,
        counts=np.array([counts[c] for c in categories], dtype=np.int64),
    )


def compare(
    profile: Profile,
    current: np.ndarray,
    *,
    threshold: float,
    p_value: float,
    min_samples: int,
    vocab: list[Any] | None = None,
) -> FeatureDrift:
    """`current`: float64 values (NaN missing), or int32 codes into `vocab` (-1 missing)."""
    small = profile.rows <= SMALL_REFERENCE
    if profile.kind == "numeric":
        method, bound = ("ks", p_value) if small else ("wasserstein", threshold)
    else:
        method, bound = ("chi2", p_value) if small else ("jensen_shannon", threshold)
    present = current[~np.isnan(current)] if vocab is None else current[current >= 0]
    result = FeatureDrift(
        profile.name, profile.kind, method, len(present), profile.rows, threshold=bound
    )
    if len(present) < min_samples or profile.rows == 0:
        return result
    if profile.kind == "numeric":
        assert profile.sorted_values is not None and profile.edges is not None
        values = present if vocab is None else np.asarray(vocab, dtype=float)[present]
        ordered = np.sort(values)
        cur_share = _bin_share(ordered, profile.edges)
        result.psi = psi(profile.bin_share, cur_share)
        if small:
            from scipy.stats import ks_2samp

            test = ks_2samp(profile.sorted_values, ordered)
            result.statistic, result.p_value = float(test.statistic), float(test.pvalue)
            result.drifted = result.p_value < p_value
        else:
            distance = wasserstein(profile.sorted_values, ordered) / max(profile.std, STD_FLOOR)
            result.statistic = distance
            result.drifted = distance >= threshold
        return result
    ref_counts, cur_counts = _aligned_counts(profile, present, vocab)
    result.psi = psi(ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum())
    if small:
        result.statistic, result.p_value = chi_square(ref_counts, cur_counts)
        result.drifted = result.p_value < p_value
    else:
        result.statistic = jensen_shannon(ref_counts, cur_counts)
        result.drifted = result.statistic >= threshold
    return result


def _aligned_counts(
    profile: Profile, present: np.ndarray, vocab: list[Any] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Reference and current counts over the union of their categories."""
    assert profile.categories is not None and profile.counts is not None
    categories = list(profile.categories)
    position = {category_key(c): i for i, c in enumerate(categories)}
    if vocab is None:  # a numeric feature with few distinct values, compared as categories
        values, counts = np.unique(present, return_counts=True)
        pairs = list(zip(values.tolist(), counts.tolist(), strict=True))
    else:
        counts = np.bincount(present, minlength=len(vocab))
        pairs = [(vocab[i], int(n)) for i, n in enumerate(counts.tolist()) if n]
    current = np.zeros(len(categories), dtype=np.int64)
    extra: list[int] = []
    for value, count in pairs:
        index = position.get(category_key(value))
        if index is None:
            extra.append(count)
        else:
            current[index] += count
    reference = np.concatenate([profile.counts, np.zeros(len(extra), dtype=np.int64)])
    return reference, np.concatenate([current, np.array(extra, dtype=np.int64)])


def category_key(value: Any) -> Any:
    """Compare 1 and 1.0 and "1" as the same category: the log keeps JSON's types."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _bin_share(ordered: np.ndarray, edges: np.ndarray) -> np.ndarray:
    bounds = np.searchsorted(ordered, edges, side="left")
    counts = np.diff(np.concatenate([[0], bounds, [len(ordered)]]))
    return counts / max(len(ordered), 1)


def psi(reference_share: Any, current_share: Any) -> float:
    """Population stability index: Σ (c − r) · ln(c / r), shares floored at 1e-4."""
    r = np.maximum(np.asarray(reference_share, dtype=float), PSI_FLOOR)
    c = np.maximum(np.asarray(current_share, dtype=float), PSI_FLOOR)
    return float(np.sum((c - r) * np.log(c / r)))


def wasserstein(u_sorted: np.ndarray, v_sorted: np.ndarray) -> float:
    """The 1-Wasserstein distance between two samples (both sorted): ∫ |F_u − F_v| dx.

    Equal to scipy.stats.wasserstein_distance, without its argsort of the joined samples: the
    smaller sample's points are inserted into the larger one at their ranks."""
    if len(u_sorted) > len(v_sorted):
        u_sorted, v_sorted = v_sorted, u_sorted
    n_u, n_v = len(u_sorted), len(v_sorted)
    positions = np.searchsorted(v_sorted, u_sorted, side="right")
    merged = np.insert(v_sorted, positions, u_sorted)
    from_u = np.zeros(len(merged), dtype=bool)
    from_u[positions + np.arange(n_u)] = True
    cdf_u = np.cumsum(from_u)[:-1] / n_u
    cdf_v = np.cumsum(~from_u)[:-1] / n_v
    return float(np.sum(np.abs(cdf_u - cdf_v) * np.diff(merged)))


def jensen_shannon(reference_counts: Any, current_counts: Any) -> float:
    """Jensen–Shannon distance (natural log) between two count vectors, as
    scipy.spatial.distance.jensenshannon computes it."""
    p = np.asarray(reference_counts, dtype=float)
    q = np.asarray(current_counts, dtype=float)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.where(p > 0, p * np.log(p / m), 0.0)
        right = np.where(q > 0, q * np.log(q / m), 0.0)
    return float(np.sqrt(max((left.sum() + right.sum()) / 2, 0.0)))


def chi_square(reference_counts: Any, current_counts: Any) -> tuple[float, float]:
    """Chi-square test of homogeneity (no continuity correction) on the 2 × k table."""
    from scipy.stats import chi2_contingency

    table = np.array([reference_counts, current_counts], dtype=float)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 0.0, 1.0  # one category on both sides: nothing can differ
    test = chi2_contingency(table, correction=False)
    return float(test.statistic), float(test.pvalue)
