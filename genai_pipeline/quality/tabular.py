"""Statistical fidelity of a synthetic table against the real one.

Column shapes follow SDMetrics' definition so scores are comparable with the peers' reports:
1 − Kolmogorov–Smirnov statistic for numeric and temporal columns, 1 − total variation distance for
categorical ones, over non-null values (null rates are checked separately by the GX suite).
"""

from __future__ import annotations

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


def column_shapes(real: pa.Table, synthetic: pa.Table) -> dict[str, float]:
    """Per-column shape scores for the columns both tables have values in."""
    scores = {}
    for name in real.column_names:
        if name in synthetic.column_names:
            score = column_shape(real.column(name), synthetic.column(name))
            if score is not None:
                scores[name] = score
    return scores
