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

Free text (a signature input of type "string") is judged by three measures, each against what the
reference text gives by chance, so that a small reference does not cry wolf:

- the length of the text in characters, as a numeric feature (KS or Wasserstein, as above);
- the share of unknown words: tokens (scikit-learn's default token pattern, lower case) that the
  reference text never has, against Good–Turing's estimate of that share for new text from the
  reference's own distribution (the share of reference tokens whose word occurs once); drift when
  the window's share exceeds it by `threshold` or more;
- the Jensen–Shannon distance between the token distributions hashed into `TEXT_BUCKETS` buckets
  (CRC-32 of the token), reference vs window, less the distance that a same-sized sample of the
  reference's own text gives against the rest of it (the mean over `BASELINE_SPLITS` random
  70/30 splits); drift when that excess is `threshold` or more.

A text feature has drifted when any of its measures has; with fewer rows than `min_samples`
none is judged.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SMALL_REFERENCE = 1000
FEW_VALUES = 5
PSI_BINS = 10
PSI_FLOOR = 1e-4
STD_FLOOR = 0.001
TOKEN_PATTERN = re.compile(r"(?u)\b\w\w+\b")
"""scikit-learn's default `token_pattern` (CountVectorizer, TfidfVectorizer), on lower case."""
TEXT_BUCKETS = 64
"""Hash buckets of the token distribution. Few enough that a reference of a few hundred texts
fills them (more buckets make the distance mostly sampling noise), enough that a change of
vocabulary moves mass between them."""
BASELINE_SPLITS = 10
BASELINE_ROWS = 5000
"""Reference texts (a seeded sample of them) that the chance distance is computed from."""


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.name,
            "kind": self.kind,
            "method": self.method,
            "rows": self.rows,
            "reference_rows": self.reference_rows,
            "statistic": _round(self.statistic),
            "p_value": _round(self.p_value),
            "psi": _round(self.psi),
            "threshold": self.threshold,
            "drifted": self.drifted,
            "status": "not enough data"
            if self.drifted is None
            else ("drift" if self.drifted else "ok"),
        }


def _round(value: float | None) -> float | None:
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


# --- free text --------------------------------------------------------------------------------


def tokens(text: Any) -> list[str]:
    """The words of a text as scikit-learn's vectorizers see them by default."""
    return TOKEN_PATTERN.findall(str(text).lower())


def _bucket(token: str) -> int:
    return zlib.crc32(token.encode("utf-8", "surrogatepass")) % TEXT_BUCKETS


@dataclass
class TextProfile:
    """One free-text feature of the reference data, prepared once for many comparisons."""

    name: str
    rows: int
    length: Profile
    """The length of the texts in characters."""
    mean_length: float
    vocabulary: frozenset[str]
    expected_unknown: float
    """Good–Turing: the share of reference tokens whose word occurs once in the reference."""
    buckets: np.ndarray
    """Reference token counts per hash bucket."""
    row_buckets: np.ndarray
    """Per reference text (a seeded sample of at most `BASELINE_ROWS`): its token counts per
    bucket, float32 (what the chance distance is drawn from)."""
    kind: str = "text"


def profile_text(name: str, values: list[Any]) -> TextProfile:
    """The reference texts' lengths, vocabulary, Good–Turing share of new words and hashed token
    counts (missing values left out)."""
    present = [v for v in values if v is not None and v == v]  # NaN != NaN: a missing value
    lengths = np.array([len(str(v)) for v in present], dtype=float)
    words: dict[str, int] = {}
    rng = np.random.default_rng(0)
    chosen = (
        set(rng.choice(len(present), BASELINE_ROWS, replace=False).tolist())
        if len(present) > BASELINE_ROWS
        else None
    )
    row_buckets = np.zeros((min(len(present), BASELINE_ROWS), TEXT_BUCKETS), dtype=np.float32)
    row = 0
    for index, value in enumerate(present):
        found = tokens(value)
        for token in found:
            words[token] = words.get(token, 0) + 1
        if chosen is None or index in chosen:
            for token in found:
                row_buckets[row, _bucket(token)] += 1
            row += 1
    total = sum(words.values())
    buckets = np.zeros(TEXT_BUCKETS, dtype=np.float64)
    for token, count in words.items():
        buckets[_bucket(token)] += count
    once = sum(count for count in words.values() if count == 1)
    return TextProfile(
        name,
        len(present),
        profile_numeric(name, lengths),
        float(lengths.mean()) if len(lengths) else 0.0,
        frozenset(words),
        once / total if total else 1.0,
        buckets,
        row_buckets,
    )


@dataclass
class TextDrift:
    """The drift of one free-text feature: its length, its unknown words, its token
    distribution."""

    name: str
    rows: int
    reference_rows: int
    length: FeatureDrift
    threshold: float
    mean_length: float | None = None
    reference_mean_length: float = 0.0
    tokens: int = 0
    unknown_share: float | None = None
    expected_unknown: float = 0.0
    unknown_drifted: bool | None = None
    distance: float | None = None
    """Jensen–Shannon distance of the hashed token distributions, reference vs window."""
    chance_distance: float | None = None
    """The distance a same-sized sample of the reference's own text gives (see the module)."""
    distance_drifted: bool | None = None
    drifted: bool | None = None
    drifted_by: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return "text"

    def to_dict(self) -> dict[str, Any]:
        def excess(value: float | None, base: float | None) -> float | None:
            return None if value is None or base is None else _round(value - base)

        return {
            "feature": self.name,
            "kind": "text",
            "method": "text",
            "rows": self.rows,
            "reference_rows": self.reference_rows,
            "statistic": None,
            "p_value": None,
            "psi": None,
            "threshold": self.threshold,
            "drifted": self.drifted,
            "status": "not enough data"
            if self.drifted is None
            else ("drift" if self.drifted else "ok"),
            "text": {
                "drifted_by": list(self.drifted_by),
                "length": {
                    **self.length.to_dict(),
                    "unit": "characters",
                    "mean": _round(self.mean_length),
                    "reference_mean": _round(self.reference_mean_length),
                },
                "unknown_words": {
                    "tokens": self.tokens,
                    "share": _round(self.unknown_share),
                    "expected_share": _round(self.expected_unknown),
                    "excess": excess(self.unknown_share, self.expected_unknown),
                    "threshold": self.threshold,
                    "drifted": self.unknown_drifted,
                },
                "token_distribution": {
                    "method": "jensen_shannon_hashed",
                    "buckets": TEXT_BUCKETS,
                    "statistic": _round(self.distance),
                    "chance": _round(self.chance_distance),
                    "excess": excess(self.distance, self.chance_distance),
                    "threshold": self.threshold,
                    "drifted": self.distance_drifted,
                },
            },
        }


class TextComparison:
    """The distinct texts of a logged column (its vocabulary: the log codes text like a
    category) tokenized once, then any slice of the column's codes compared with the profile."""

    def __init__(self, profile: TextProfile, vocab: list[Any]) -> None:
        self.profile = profile
        self.lengths = np.array([len(str(v)) for v in vocab], dtype=float)
        counts, unknown, entries, buckets = [], [], [], []
        for entry, value in enumerate(vocab):
            found = tokens(value)
            counts.append(len(found))
            unknown.append(sum(1 for t in found if t not in profile.vocabulary))
            entries += [entry] * len(found)
            buckets += [_bucket(t) for t in found]
        self.tokens = np.array(counts, dtype=float)
        self.unknown = np.array(unknown, dtype=float)
        self.entry = np.array(entries, dtype=np.int64)
        self.bucket = np.array(buckets, dtype=np.int64)
        self._chance: dict[int, float | None] = {}
        self._splits: list[tuple[np.ndarray, np.ndarray]] | None = None

    def compare(
        self, codes: np.ndarray, *, threshold: float, p_value: float, min_samples: int
    ) -> TextDrift:
        """`codes`: int32 codes into the vocabulary given at construction (-1 missing)."""
        profile = self.profile
        present = codes[codes >= 0]
        per_entry = np.bincount(present, minlength=len(self.lengths)).astype(float)
        lengths = np.repeat(self.lengths, per_entry.astype(np.int64))
        length = compare(
            profile.length, lengths, threshold=threshold, p_value=p_value, min_samples=min_samples
        )
        rows = len(present)
        result = TextDrift(
            profile.name,
            rows,
            profile.rows,
            length,
            threshold,
            mean_length=float(lengths.mean()) if rows else None,
            reference_mean_length=profile.mean_length,
            expected_unknown=profile.expected_unknown,
        )
        if rows < min_samples or profile.rows == 0:
            return result
        words = float(per_entry @ self.tokens)
        result.tokens = int(words)
        if words:
            result.unknown_share = float(per_entry @ self.unknown) / words
            result.unknown_drifted = result.unknown_share - profile.expected_unknown >= threshold
            current = np.bincount(
                self.bucket, weights=per_entry[self.entry], minlength=TEXT_BUCKETS
            )
            if profile.buckets.sum() > 0:
                result.distance = jensen_shannon(profile.buckets, current)
                result.chance_distance = self.chance(rows)
                if result.chance_distance is not None:
                    result.distance_drifted = result.distance - result.chance_distance >= threshold
        verdicts = {
            "length": length.drifted,
            "unknown_words": result.unknown_drifted,
            "token_distribution": result.distance_drifted,
        }
        result.drifted_by = [name for name, verdict in verdicts.items() if verdict]
        judged = [v for v in verdicts.values() if v is not None]
        result.drifted = any(judged) if judged else None
        return result

    def chance(self, rows: int) -> float | None:
        """The mean distance between 70 % of the reference texts and `rows` texts drawn (with
        replacement) from the other 30 %, over `BASELINE_SPLITS` seeded splits."""
        if rows in self._chance:
            return self._chance[rows]
        matrix = self.profile.row_buckets
        if self._splits is None:
            self._splits = []
            if len(matrix) >= 2:
                rng = np.random.default_rng(0)
                cut = max(1, min(len(matrix) - 1, int(len(matrix) * 0.7)))
                for _ in range(BASELINE_SPLITS):
                    order = rng.permutation(len(matrix))
                    base = matrix[order[:cut]].sum(axis=0, dtype=np.float64)
                    self._splits.append((base, matrix[order[cut:]].astype(np.float64)))
        rng = np.random.default_rng([1, rows])
        distances = []
        for base, rest in self._splits:
            if base.sum() == 0:
                continue
            drawn = rng.multinomial(rows, np.full(len(rest), 1.0 / len(rest))) @ rest
            if drawn.sum() > 0:
                distances.append(jensen_shannon(base, drawn))
        value = float(np.mean(distances)) if distances else None
        self._chance[rows] = value
        return value
