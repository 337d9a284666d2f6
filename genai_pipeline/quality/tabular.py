"""Statistical fidelity of a synthetic table against the real one.

Column shapes follow SDMetrics' definition so scores are comparable with the peers' reports:
1 − Kolmogorov–Smirnov statistic for numeric and temporal columns, 1 − total variation distance for
categorical ones, over non-null values (null rates are checked separately by the GX suite).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy.stats import ks_2samp
from scipy.stats.contingency import association

from genai_pipeline.columns import dense, is_numeric, row_hashes, to_float


def _values(column: pa.ChunkedArray) -> pa.Array:
    return dense(column).drop_null()


def top_categories(column: pa.Array, limit: int) -> list[str]:
    """A column's ``limit`` most frequent non-null values as strings, most frequent first: the
    categories a distance or a model keeps (the rest share one "other")."""
    counts = pc.value_counts(pc.cast(column.drop_null(), pa.string())).to_pylist()
    counts.sort(key=lambda item: -item["counts"])
    return [item["values"] for item in counts[:limit]]


def _frequencies(values: pa.Array) -> dict[str, float]:
    counts = pc.value_counts(values)
    return {str(item["values"]): item["counts"] / len(values) for item in counts.to_pylist()}


def column_shape(real: pa.ChunkedArray, synthetic: pa.ChunkedArray) -> float | None:
    """1 − KS (numeric) or 1 − TVD (categorical); None when either side has no values."""
    real_values, synthetic_values = _values(real), _values(synthetic)
    if len(real_values) == 0 or len(synthetic_values) == 0:
        return None
    if is_numeric(real_values.type):
        return float(1 - ks_2samp(to_float(real_values), to_float(synthetic_values)).statistic)
    real_freq, synth_freq = _frequencies(real_values), _frequencies(synthetic_values)
    keys = set(real_freq) | set(synth_freq)
    return float(1 - 0.5 * sum(abs(real_freq.get(k, 0.0) - synth_freq.get(k, 0.0)) for k in keys))


def column_coverage(real: pa.ChunkedArray, synthetic: pa.ChunkedArray) -> dict[str, float]:
    """How much of a real column the synthetic one covers, as SDMetrics defines it.

    ``category_coverage``: the share of the real categories that occur at all; ``range_coverage``
    (numerics): 1 minus the shares of the real range left uncovered below and above; and
    ``null_rate_similarity``: 1 − |Δ share of nulls|. Empty columns have no coverage score.
    """
    scores = {"null_rate_similarity": 1 - abs(_null_share(real) - _null_share(synthetic))}
    real_values, synthetic_values = _values(real), _values(synthetic)
    if len(real_values) == 0:
        return scores
    if is_numeric(real_values.type):
        low, high = float(np.min(to_float(real_values))), float(np.max(to_float(real_values)))
        if high > low:
            fake = to_float(synthetic_values)
            below = max((float(np.min(fake)) - low) / (high - low), 0.0) if len(fake) else 1.0
            above = max((high - float(np.max(fake))) / (high - low), 0.0) if len(fake) else 0.0
            scores["range_coverage"] = max(1 - below - above, 0.0)
    else:
        real_set = set(_frequencies(real_values))
        scores["category_coverage"] = len(real_set & set(_frequencies(synthetic_values))) / len(real_set)
    return scores


def new_row_share(real: pa.Table, synthetic: pa.Table, every: Iterable[pa.Table] | None = None) -> float:
    """SDMetrics' NewRowSynthesis: the share of synthetic rows that are not a copy of a real row
    (all columns equal, nulls included). A model that memorises its training rows scores near 0;
    rows without a compared column (every column made fresh) copy nothing. ``every``: where
    ``real`` is a sample of a table read a row group at a time, those row groups (of its columns
    or more): a copy of any row of theirs is found, not only of the sample's."""
    columns = [name for name in real.column_names if name in synthetic.column_names]
    if synthetic.num_rows == 0 or not columns:
        return 1.0
    drawn = row_hashes(synthetic.cast(real.select(columns).schema), columns)
    copied = np.zeros(len(drawn), dtype=bool)
    for part in every if every is not None else (real,):
        copied |= np.isin(drawn, row_hashes(part, columns))
    return float(1 - copied.mean())


def _null_share(column: pa.ChunkedArray) -> float:
    return column.null_count / len(column) if len(column) else 0.0


def rows_meeting(table: pa.Table, conditions: Mapping[str, Any]) -> pa.Table:
    """The rows whose columns hold the given values (``None``: null), compared in each column's type."""
    meets = pa.array(np.ones(table.num_rows, dtype=bool))
    for key, value in conditions.items():
        column = dense(table.column(key))
        match = (
            column.is_null() if value is None else pc.equal(column, pa.array([value]).cast(column.type)[0])
        )
        meets = pc.and_(meets, pc.fill_null(match, False))
    return table.filter(meets)


def column_shapes(real: pa.Table, synthetic: pa.Table) -> dict[str, float]:
    """Per-column shape scores for the columns both tables have values in."""
    scores = {}
    for name in real.column_names:
        if name in synthetic.column_names:
            score = column_shape(real.column(name), synthetic.column(name))
            if score is not None:
                scores[name] = score
    return scores


#: SDMetrics' QualityReport averages pair trends over the pairs that are related in the real data:
#: two numerics whose |Pearson correlation| exceeds this …
REAL_CORRELATION_THRESHOLD = 0.5
#: … or, for the other pairs, whose contingency table's Cramér's V exceeds this.
REAL_ASSOCIATION_THRESHOLD = 0.3


@dataclass(frozen=True)
class PairTrend:
    """How well a synthetic table keeps one pair of columns' relationship."""

    score: float  # 1 − |Δ correlation| / 2, or 1 − TVD of the contingency tables
    real_strength: float  # |correlation| or Cramér's V in the real table
    related: bool  # strong enough in the real table to count in :func:`pair_trends_score`


def _pair_values(table: pa.Table, name: str, discretise: bool, bins: int) -> np.ndarray:
    """A column as categories: strings, or (``discretise``) the equal-width bin of a numeric in the
    table's own range, as SDMetrics cuts it; null is a category of its own."""
    column = dense(table.column(name))
    if not (discretise and is_numeric(column.type)):
        return np.array(["null" if v is None else str(v) for v in column.to_pylist()], dtype=object)
    values = to_float(column)
    nulls = np.isnan(values)
    edges = np.histogram_bin_edges(values[~nulls], bins=bins) if (~nulls).any() else np.zeros(1)
    binned = np.digitize(values, edges).astype(str).astype(object)  # strings, like the categories
    binned[nulls] = "null"
    return binned


def _contingency(real: list[np.ndarray], synthetic: list[np.ndarray]) -> tuple[float, float]:
    """``(score, Cramér's V of the real table)``: 1 − TVD of the two joint frequency tables."""
    real_counts = pd.DataFrame({"a": real[0], "b": real[1]}).value_counts()
    synth_counts = pd.DataFrame({"a": synthetic[0], "b": synthetic[1]}).value_counts()
    difference = (real_counts / real_counts.sum()).sub(synth_counts / synth_counts.sum(), fill_value=0.0)
    table = real_counts.unstack(fill_value=0).to_numpy()
    strength = float(association(table, method="cramer")) if min(table.shape) > 1 else 0.0
    return float(1 - 0.5 * difference.abs().sum()), strength


def column_pairs(real: pa.Table, synthetic: pa.Table) -> list[tuple[str, str]]:
    """Every pair of the columns the two tables share, in the real table's order."""
    names = [name for name in real.column_names if name in synthetic.column_names]
    return [(first, second) for i, first in enumerate(names) for second in names[i + 1 :]]


def pair_trend_details(
    real: pa.Table, synthetic: pa.Table, bins: int = 10, pairs: list[tuple[str, str]] | None = None
) -> dict[tuple[str, str], PairTrend]:
    """SDMetrics' column pair trends: for two numeric columns 1 − |Δ Pearson correlation| / 2 (rows
    with a null left out), otherwise 1 − TVD of their contingency tables (null a category of its
    own; a numeric in a mixed pair cut into ``bins`` equal-width bins of each table's own range,
    as SDMetrics does: its scores are what analysts compare ours with). ``pairs``: only these
    (default: every one of :func:`column_pairs`)."""
    pairs = column_pairs(real, synthetic) if pairs is None else pairs
    numeric = {name: is_numeric(dense(real.column(name)).type) for pair in pairs for name in pair}
    details = {}
    for first, second in pairs:
        if numeric[first] and numeric[second]:
            real_corr = pearson(to_float(dense(real.column(first))), to_float(dense(real.column(second))))
            synth_corr = pearson(
                to_float(dense(synthetic.column(first))), to_float(dense(synthetic.column(second)))
            )
            if real_corr is not None and synth_corr is not None:
                strength = abs(real_corr)
                details[(first, second)] = PairTrend(
                    1 - abs(real_corr - synth_corr) / 2, strength, strength > REAL_CORRELATION_THRESHOLD
                )
            continue
        mixed = numeric[first] or numeric[second]
        real_cols = [_pair_values(real, n, mixed, bins) for n in (first, second)]
        synth_cols = [_pair_values(synthetic, n, mixed, bins) for n in (first, second)]
        score, strength = _contingency(real_cols, synth_cols)
        details[(first, second)] = PairTrend(score, strength, strength > REAL_ASSOCIATION_THRESHOLD)
    return details


def pair_trends(real: pa.Table, synthetic: pa.Table, bins: int = 10) -> dict[tuple[str, str], float]:
    """Each pair's score (see :func:`pair_trend_details`)."""
    return {pair: trend.score for pair, trend in pair_trend_details(real, synthetic, bins).items()}


def overall_pair_trend(details: Mapping[tuple[str, str], PairTrend]) -> float:
    """The overall pair-trend score as SDMetrics' QualityReport computes it: the mean over the pairs
    related in the real table (all pairs when none is), since an unrelated pair is kept by chance."""
    related = [trend.score for trend in details.values() if trend.related]
    scores = related or [trend.score for trend in details.values()]
    return float(np.mean(scores)) if scores else float("nan")


def pair_trends_score(real: pa.Table, synthetic: pa.Table) -> float:
    """:func:`overall_pair_trend` of two tables."""
    return overall_pair_trend(pair_trend_details(real, synthetic))


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson's correlation over the rows where neither is NaN; None with fewer than two such
    rows or a constant side (no correlation to compare)."""
    keep = ~(np.isnan(a) | np.isnan(b))
    if keep.sum() < 2 or np.std(a[keep]) == 0 or np.std(b[keep]) == 0:
        return None
    return float(np.corrcoef(a[keep], b[keep])[0, 1])


#: a sensitive group enters the parity gap with at least this many rows (smaller ones are noise)
MIN_GROUP_ROWS = 30


def parity_gap(table: pa.Table, target: str, sensitive: Sequence[str]) -> float:
    """Statistical parity: over the target's values, the largest difference between two sensitive
    groups (of :data:`MIN_GROUP_ROWS` rows or more) in the share of their rows holding that value.
    0: the target's distribution is the same in every group."""
    columns = [target, *sensitive]
    frame = pa.table({name: pc.cast(dense(table.column(name)), pa.string()) for name in columns}).to_pandas()
    frame = frame.fillna("\x00null")  # a null is a value of its own
    sizes = frame.groupby(list(sensitive)).size()
    groups = sizes[sizes >= MIN_GROUP_ROWS].index
    if len(groups) < 2:
        return 0.0
    shares = frame.groupby(list(sensitive))[target].value_counts(normalize=True).unstack(fill_value=0.0)
    shares = shares.loc[groups]
    return float((shares.max() - shares.min()).max())
