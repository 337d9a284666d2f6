"""Statistical fidelity of a synthetic table against the real one.

Column shapes follow SDMetrics' definition so scores are comparable with the peers' reports:
1 − Kolmogorov–Smirnov statistic for numeric and temporal columns, 1 − total variation distance for
categorical ones, over non-null values (null rates are checked separately by the GX suite).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy.stats import ks_2samp

from genai_pipeline.encoders.tabular import dense, is_numeric, to_float


def _values(column: pa.ChunkedArray) -> pa.Array:
    return dense(column).drop_null()


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


def _pair_values(table: pa.Table, name: str, edges: np.ndarray | None) -> np.ndarray:
    """A column as numbers (numeric), bin indices (numeric in a mixed pair) or strings."""
    column = dense(table.column(name))
    if is_numeric(column.type):
        values = to_float(column)
        return values if edges is None else np.digitize(values, edges[1:-1]).astype(float)
    return np.array([None if v is None else str(v) for v in column.to_pylist()], dtype=object)


def _contingency_similarity(real: list[np.ndarray], synthetic: list[np.ndarray]) -> float:
    def frequencies(columns: list[np.ndarray]) -> pd.Series:
        frame = pd.DataFrame({"a": columns[0], "b": columns[1]}).dropna()
        return frame.value_counts(normalize=True)

    real_freq, synth_freq = frequencies(real), frequencies(synthetic)
    difference = real_freq.sub(synth_freq, fill_value=0.0).abs().sum()
    return float(1 - 0.5 * difference)


def pair_trends(real: pa.Table, synthetic: pa.Table, bins: int = 10) -> dict[tuple[str, str], float]:
    """SDMetrics' column pair trends: for two numeric columns 1 − |Δ Pearson correlation| / 2,
    otherwise 1 − TVD of their contingency tables (numerics cut into ``bins`` equal-width bins of
    the real range). Rows with a null in either column are left out."""
    names = [name for name in real.column_names if name in synthetic.column_names]
    numeric = {name: is_numeric(dense(real.column(name)).type) for name in names}
    edges = {}
    for name in names:
        if numeric[name]:
            present = to_float(dense(real.column(name)))
            present = present[~np.isnan(present)]
            if len(present):
                edges[name] = np.histogram_bin_edges(present, bins=bins)
    scores = {}
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            if numeric[first] and numeric[second]:
                real_corr = _correlation(
                    to_float(dense(real.column(first))), to_float(dense(real.column(second)))
                )
                synth_corr = _correlation(
                    to_float(dense(synthetic.column(first))), to_float(dense(synthetic.column(second)))
                )
                if real_corr is not None and synth_corr is not None:
                    scores[(first, second)] = 1 - abs(real_corr - synth_corr) / 2
                continue
            mixed = numeric[first] or numeric[second]
            real_cols = [_pair_values(real, n, edges.get(n) if mixed else None) for n in (first, second)]
            synth_cols = [
                _pair_values(synthetic, n, edges.get(n) if mixed else None) for n in (first, second)
            ]
            scores[(first, second)] = _contingency_similarity(real_cols, synth_cols)
    return scores


def _correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    keep = ~(np.isnan(a) | np.isnan(b))
    if keep.sum() < 2 or np.std(a[keep]) == 0 or np.std(b[keep]) == 0:
        return None
    return float(np.corrcoef(a[keep], b[keep])[0, 1])
