"""Drift of free text (a signature input of type "string").

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

from cpmai.monitor.drift import (
    FeatureDrift,
    Profile,
    compare,
    jensen_shannon,
    profile_numeric,
    rounded,
)
from cpmai.monitor.result import FeatureDrift as FeatureDriftDoc
from cpmai.monitor.result import TextDrift as TextDriftDoc
from cpmai.monitor.result import TextLength, TokenDistribution, UnknownWords

TOKEN_PATTERN = re.compile(r"(?u)\b\w\w+\b")
"""scikit-learn's default `token_pattern` (CountVectorizer, TfidfVectorizer), on lower case."""
TEXT_BUCKETS = 64
"""Hash buckets of the token distribution. Few enough that a reference of a few hundred texts
fills them (more buckets make the distance mostly sampling noise), enough that a change of
vocabulary moves mass between them."""
BASELINE_SPLITS = 10
BASELINE_ROWS = 5000
"""Reference texts (a seeded sample of them) that the chance distance is computed from."""


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

    @property
    def status(self) -> str:
        return "not enough data" if self.drifted is None else ("drift" if self.drifted else "ok")

    def document(self) -> FeatureDriftDoc:
        """The comparison as `cpmai monitor` reports it: the three measures under `text`."""

        def excess(value: float | None, base: float | None) -> float | None:
            return None if value is None or base is None else rounded(value - base)

        return FeatureDriftDoc(
            feature=self.name,
            kind="text",
            method="text",
            rows=self.rows,
            reference_rows=self.reference_rows,
            statistic=None,
            p_value=None,
            psi=None,
            threshold=self.threshold,
            drifted=self.drifted,
            status=self.status,
            text=TextDriftDoc(
                drifted_by=list(self.drifted_by),
                length=TextLength(
                    **self.length.fields(),
                    unit="characters",
                    mean=rounded(self.mean_length),
                    reference_mean=rounded(self.reference_mean_length),
                ),
                unknown_words=UnknownWords(
                    tokens=self.tokens,
                    share=rounded(self.unknown_share),
                    expected_share=rounded(self.expected_unknown),
                    excess=excess(self.unknown_share, self.expected_unknown),
                    threshold=self.threshold,
                    drifted=self.unknown_drifted,
                ),
                token_distribution=TokenDistribution(
                    method="jensen_shannon_hashed",
                    buckets=TEXT_BUCKETS,
                    statistic=rounded(self.distance),
                    chance=rounded(self.chance_distance),
                    excess=excess(self.distance, self.chance_distance),
                    threshold=self.threshold,
                    drifted=self.distance_drifted,
                ),
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        return self.document().to_json()


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
