"""Value protection: no real value that fewer than ``min_rows`` rows hold is learned or published.

A category held by a handful of rows (a rare job title, an e-mail, a customer's own city) or a
numeric outlier (a one-in-a-million salary) identifies its rows. Protection applies where values
are first summarised, so that neither a model file nor anything published can carry them:

- **categories** held by fewer than ``min_rows`` rows are merged into one protected bucket, whose
  raw values are never stored; it decodes to the job's token (``_RARE_``) in text columns, to the
  column's most frequent value in numeric and boolean ones (no token fits there);
- **numeric columns** lose their tails: the lowest and highest values are clipped to the mean of the
  ``min_rows`` values that follow the ``min_rows − 1`` most extreme ones (so an outlier moves nothing),
  and the quantile knots a model decodes through are means of consecutive blocks of at least
  ``min_rows`` sorted values: aggregates of ``min_rows`` rows, never one row's value. A value at
  least ``min_rows`` rows share (a spike of zeros, an age of 40) stays exact, since a block of equal
  values has that value as its mean.

The default ``min_rows`` is 5, the lower end of the range MOSTLY AI's engine uses (5–7). These are
pure functions of the values and the policy, so the table encoder, the Great Expectations suite and
the report, which all derive what they hold from the same rows, hold the same protected values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from genai_pipeline.config import ValueProtectionSpec


@dataclass(frozen=True)
class Protection:
    """The policy: ``min_rows`` (k) and what a protected category of a text column becomes."""

    min_rows: int = 5
    rare_token: str | None = "_RARE_"
    enabled: bool = True

    @classmethod
    def from_spec(cls, spec: ValueProtectionSpec) -> Protection:
        return cls(min_rows=spec.min_rows, rare_token=spec.rare_token, enabled=spec.enabled)

    @property
    def threshold(self) -> int:
        """Rows a value must be held by to be learned (1 when protection is off)."""
        return self.min_rows if self.enabled else 1

    def to_dict(self) -> dict[str, Any]:
        return {"min_rows": self.min_rows, "rare_token": self.rare_token, "enabled": self.enabled}


@dataclass(frozen=True)
class KeptCategories:
    """A column's categories after protection: those held by enough rows (with their counts), and
    how many distinct values and rows were protected (aggregates only)."""

    counts: dict[Any, float]  # whole counts, or noisy ones (a DP release)
    protected_values: int
    protected_rows: int


def keep_categories(counts: Mapping[Any, float], threshold: int) -> KeptCategories:
    """The categories held by at least ``threshold`` rows."""
    kept = {value: float(count) for value, count in counts.items() if count >= threshold}
    dropped = [count for value, count in counts.items() if value not in kept]
    return KeptCategories(kept, len(dropped), int(sum(dropped)))


@dataclass(frozen=True)
class ProtectedNumbers:
    """A numeric column's sorted values after protection, and how many were clipped.

    ``values`` are the real values with their tails clipped to ``[low, high]``; ``knots`` and
    ``probs`` the means of consecutive blocks of at least ``min_rows`` of them and the mid-rank
    cumulative share of each block (equal means merged), from ``low`` to ``high``, which is what a
    model may learn.
    """

    values: np.ndarray
    low: float
    high: float
    clipped: int
    knots: np.ndarray
    probs: np.ndarray


def protected_range(
    smallest: np.ndarray, largest: np.ndarray, n: int, k: int, quantum: float = 0.0
) -> tuple[float, float]:
    """``(low, high)``: the range protection keeps of ``n`` numbers (at least ``k``), each end the
    mean of the ``k`` values next to the ``k - 1`` most extreme (the mean of all of them when they
    are fewer than ``2k``), narrowed to multiples of ``quantum``. It reads only their ``2k - 1``
    smallest and largest (``smallest``, ``largest``: ascending), so a table read a row group at a
    time needs to keep only those."""
    if n < 2 * k:  # too few for two protected tails: one aggregate of all of them (all in smallest)
        low = high = float(smallest.mean())
    else:
        low, high = float(smallest[k - 1 : 2 * k - 1].mean()), float(largest[:k].mean())
    if quantum > 0:
        inner = np.ceil(low / quantum) * quantum, np.floor(high / quantum) * quantum
        low, high = inner if inner[0] <= inner[1] else (np.round(low / quantum) * quantum,) * 2
    return low, high


def protect_numbers(
    values: np.ndarray, threshold: int, max_knots: int, quantum: float = 0.0
) -> ProtectedNumbers | None:
    """Clip the tails and summarise ``values`` (non-null floats, any order) in protected knots;
    None when there are fewer than ``threshold`` values (nothing about them may be learned).

    ``quantum`` is what decoding rounds to (1 for integers and timestamps, 0.01 for a decimal of
    scale 2, 0 for floats): the protected range is narrowed to multiples of it, or an integer
    column's low end of 179.4 would round back to a real 179 beyond the tail."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    n, k = len(ordered), threshold
    if n < k:
        return None
    low, high = protected_range(ordered[: 2 * k - 1], ordered[max(n - 2 * k + 1, 0) :], n, k, quantum)
    clipped = np.clip(ordered, low, high)
    size = max(k, -(-n // max_knots))
    starts = np.arange(0, n - size + 1, size)  # the last block also takes the remainder
    ends = np.append(starts[1:], n)
    sums = np.add.reduceat(clipped, starts)
    knots, probs = sums / (ends - starts), (starts + ends) / (2 * n)
    unique, first, counts = np.unique(knots, return_index=True, return_counts=True)
    merged = (
        np.array([probs[i : i + c].mean() for i, c in zip(first, counts)])
        if len(unique) < len(knots)
        else probs
    )
    # the ends are the protected range's own: the clipped values (at least k rows hold each end)
    # decode to them, and what the suite and the charts allow must be what decoding can emit
    if unique[0] > low:
        unique, merged = np.r_[low, unique], np.r_[0.0, merged]
    if unique[-1] < high:
        unique, merged = np.r_[unique, high], np.r_[merged, 1.0]
    return ProtectedNumbers(clipped, low, high, int(np.sum(clipped != ordered)), unique, merged)
