"""Privacy of a synthetic table: how close its rows sit to the training rows, against a holdout.

Exact copies are counted by :func:`genai_pipeline.quality.tabular.new_row_share`. Closeness short of
a copy is judged against real rows the model never saw: a synthetic row that is nearer its closest
training row than its closest holdout row leans on the training data. With training and holdout
samples of equal size, a model that learned the distribution (not the rows) puts about half of its
rows closer to each (``dcr_share`` ≈ 0.5); a model that memorised puts nearly all of them closer to
training (→ 1.0). The nearest-neighbour distance ratio (closest / second-closest training row)
tells the same from another side: near 0 a synthetic row is one training row's twin, near 1 it is no
closer to any one row than to its neighbours; the holdout rows' own ratio is the natural reference.

Distances are Euclidean over range-scaled columns: each column contributes at most 1 to the squared
distance (numerics: Δ over the real range; categories: 0 or 1; null against a value: 1), so no column
dominates by its units, and the all-pairs distances run as matrix products.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from genai_pipeline.columns import dense, is_numeric, quantum, to_float
from genai_pipeline.privacy.protection import Protection, protected_range
from genai_pipeline.privacy.roles import ColumnRole
from genai_pipeline.quality.neighbours import nearest
from genai_pipeline.quality.tabular import top_categories

#: categories kept per column; rarer ones share one "other" slot (distance 0 between them)
MAX_CATEGORIES = 64
#: rows compared at most per side: distances are all-pairs, and a few thousand rows settle the shares
MAX_ROWS = 5_000
#: training rows a synthetic row is checked against for memorisation (all of them, up to this)
MAX_TRAIN_ROWS = 50_000
#: memorised: closer to the training rows than this share of the holdout rows are (the baseline)
MEMORISED_QUANTILE = 0.02


@dataclass(frozen=True)
class _NumericAxis:
    name: str
    low: float
    span: float


@dataclass(frozen=True)
class _CategoryAxis:
    name: str
    categories: tuple[str, ...]


@dataclass(frozen=True)
class RowSpace:
    """Rows as points where each column adds at most 1 to the squared Euclidean distance.

    Numerics become ``(value − min) / range`` (clipped to the real range) plus a null indicator;
    categories a one-hot scaled by 1/√2 with "other" and null slots, so a mismatch costs exactly 1.
    """

    axes: tuple[_NumericAxis | _CategoryAxis, ...]

    @classmethod
    def fit(cls, real: pa.Table) -> RowSpace:
        axes: list[_NumericAxis | _CategoryAxis] = []
        for name in real.column_names:
            column = dense(real.column(name))
            if is_numeric(column.type):
                values = to_float(column.drop_null())
                low, high = (float(values.min()), float(values.max())) if len(values) else (0.0, 0.0)
                axes.append(_NumericAxis(name, low, high - low if high > low else 1.0))
            else:
                axes.append(_CategoryAxis(name, tuple(top_categories(column, MAX_CATEGORIES))))
        return cls(tuple(axes))

    def _width(self, axis: _NumericAxis | _CategoryAxis) -> int:
        """Dimensions an axis takes: a number and its null indicator; a slot per category, "other"
        and null."""
        return 2 if isinstance(axis, _NumericAxis) else len(axis.categories) + 2

    def transform(self, table: pa.Table) -> np.ndarray:
        """``(rows, dims)`` float32 points for a table with (at least) the fitted columns, written
        column by column into one matrix (the privacy attacks transform 50k-row samples: no
        float64 or per-column copies beside it)."""
        points = np.zeros((table.num_rows, sum(map(self._width, self.axes))), dtype=np.float32)
        offset = 0
        for axis in self.axes:
            column = dense(table.column(axis.name))
            if isinstance(axis, _NumericAxis):
                values = np.clip((to_float(column) - axis.low) / axis.span, 0.0, 1.0)
                points[:, offset] = np.nan_to_num(values, nan=0.0)
                points[:, offset + 1] = column.is_null().to_numpy(zero_copy_only=False)
            else:
                index = {value: i for i, value in enumerate(axis.categories)}
                other, null_slot = len(axis.categories), len(axis.categories) + 1
                strings = pc.cast(column, pa.string()).to_pylist()
                codes = [null_slot if s is None else index.get(s, other) for s in strings]
                points[np.arange(len(codes)), offset + np.asarray(codes, dtype=np.int64)] = np.sqrt(0.5)
            offset += self._width(axis)
        return points


def nearest_distances(queries: np.ndarray, points: np.ndarray, k: int = 2) -> np.ndarray:
    """``(queries, k)`` distances to the ``k`` nearest points, ascending."""
    distances, _ = nearest(torch.from_numpy(queries), torch.from_numpy(points), min(k, len(points)))
    return distances.numpy()


@dataclass(frozen=True)
class PrivacyScores:
    """Distance-based privacy of a synthetic sample against training and holdout samples."""

    dcr_share: float  # share of synthetic rows closer to training than to holdout (ties count ½)
    memorised_share: float  # share of synthetic rows closer to training than 98% of holdout rows are
    nndr: float  # median nearest/second-nearest training-distance ratio of synthetic rows
    holdout_nndr: float  # the same for real holdout rows: what "not memorised" looks like
    rows: int  # training and holdout rows in the DCR-share comparison (each)


def _ratio(distances: np.ndarray) -> np.ndarray:
    first, second = distances[:, 0], distances[:, -1]
    return np.where(second > 0, first / np.maximum(second, 1e-12), 1.0)


def privacy_scores(
    train: pa.Table, holdout: pa.Table, synthetic: pa.Table, *, seed: int = 0, max_rows: int = MAX_ROWS
) -> PrivacyScores:
    """DCR share on equal-sized training and holdout samples; memorisation and NNDR against up to
    :data:`MAX_TRAIN_ROWS` training rows.

    The DCR share needs equal sizes (only then is 50/50 what an honest model scores), which dilutes
    it: with a 20% holdout, a model that copies its training rows scores only ~0.62, because most
    copied rows are not in the equal-sized training sample. Memorisation therefore compares each
    synthetic row's distance to the whole training set with what real unseen rows show: a row
    closer to training than all but :data:`MEMORISED_QUANTILE` of the holdout rows is memorised
    (a copy always is; an honest model's rows about that share of the time).
    """
    rng = np.random.default_rng(seed)
    size = min(train.num_rows, holdout.num_rows, max_rows)

    def sample(table: pa.Table, count: int) -> pa.Table:
        return table.take(np.sort(rng.choice(table.num_rows, count, replace=False)))

    space = RowSpace.fit(train)
    train_points = space.transform(sample(train, min(train.num_rows, MAX_TRAIN_ROWS)))
    holdout_points = space.transform(sample(holdout, size))
    synthetic_points = space.transform(sample(synthetic, min(synthetic.num_rows, max_rows)))
    equal_train = train_points[rng.choice(len(train_points), size, replace=False)]
    to_equal = nearest_distances(synthetic_points, equal_train, k=1)[:, 0]
    to_holdout = nearest_distances(synthetic_points, holdout_points, k=1)[:, 0]
    closer = np.mean(to_equal < to_holdout) + 0.5 * np.mean(to_equal == to_holdout)
    to_train = nearest_distances(synthetic_points, train_points)
    holdout_to_train = nearest_distances(holdout_points, train_points)
    threshold = float(np.quantile(holdout_to_train[:, 0], MEMORISED_QUANTILE))
    return PrivacyScores(
        dcr_share=float(closer),
        memorised_share=float(np.mean(to_train[:, 0] < threshold)),
        nndr=float(np.median(_ratio(to_train))),
        holdout_nndr=float(np.median(_ratio(holdout_to_train))),
        rows=size,
    )


#: a numeric column with at most this many distinct values is a category (as the encoder has it)
DISCRETE_NUMBERS = 20


def _extreme(values: np.ndarray, keep: int) -> np.ndarray:
    """The ``keep`` smallest of ``values`` (unordered)."""
    return values if len(values) <= keep else np.partition(values, keep - 1)[:keep]


@dataclass
class _RealColumn:
    """One column's real values as :func:`rare_real_values` judges them, taken a part (a row
    group) at a time in memory bounded by the synthetic values checked (``drawn``: the synthetic
    column's distinct values, floats for a number), not by the real rows: how many real rows hold
    each of them; of a number, whether it has more than :data:`DISCRETE_NUMBERS` values, and its
    ``keep`` (2k - 1) smallest and largest, which are all its protected tails depend on
    (:func:`protected_range`)."""

    drawn: pa.Array
    keep: int
    numeric: bool
    held: dict[Any, int] = field(default_factory=dict)
    distinct: set[float] = field(default_factory=set)
    smallest: np.ndarray = field(default_factory=lambda: np.empty(0))
    largest: np.ndarray = field(default_factory=lambda: np.empty(0))
    rows: int = 0  # the numbers' present values

    def add(self, column: pa.Array) -> None:
        if self.numeric:
            values = to_float(column)
            values = values[~np.isnan(values)]
            self.rows += len(values)
            if len(self.distinct) <= DISCRETE_NUMBERS:  # each part's first few: enough to know "more"
                self.distinct.update(np.unique(values)[: DISCRETE_NUMBERS + 1].tolist())
            self.smallest = np.sort(np.concatenate([self.smallest, _extreme(values, self.keep)]))[: self.keep]
            largest = -_extreme(-values, self.keep)
            self.largest = np.sort(np.concatenate([self.largest, largest]))[-self.keep :]
            column = pa.array(values, pa.float64())
        column = column.drop_null()
        inside = column.filter(pc.is_in(column, value_set=self.drawn.cast(column.type)))
        tallied = pc.value_counts(inside)
        for value, count in zip(tallied.field(0).to_pylist(), tallied.field(1).to_pylist(), strict=True):
            self.held[value] = self.held.get(value, 0) + count

    def continuous(self, role: str | None) -> bool:
        """A number learned as one (not value by value): declared so, or of many values."""
        return role == "numeric" or (role != "category" and len(self.distinct) > DISCRETE_NUMBERS)

    def rare(self, threshold: int, tails: float | None) -> pa.Array:
        """The drawn values that are real ones fewer than ``threshold`` rows hold or, with
        ``tails`` (a number learned as one: its decoding quantum), real ones beyond its
        protected tails, or any real one when there are too few to learn any."""
        if tails is None:
            rare = [value for value, count in self.held.items() if count < threshold]
            return pa.array(rare, self.drawn.type if not self.numeric else pa.float64())
        if self.rows < threshold:
            beyond = self.smallest  # all of them: fewer than k, so among the smallest
        else:
            low, high = protected_range(self.smallest, self.largest, self.rows, threshold, tails)
            beyond = np.concatenate([self.smallest[self.smallest < low], self.largest[self.largest > high]])
        return pa.array(np.unique(beyond), pa.float64())


def rare_real_values(
    train: pa.Table,
    holdout: pa.Table | None,
    synthetic: pa.Table,
    *,
    protection: Protection,
    roles: Mapping[str, ColumnRole],
    private: bool = False,
    every: Iterable[pa.Table] | None = None,
) -> tuple[dict[str, int], float]:
    """``({column: count}, share of rows)``: synthetic values that are real ones no model may emit.
    In a learned column, a value fewer than ``min_rows`` training rows hold (a category) or one
    beyond the protected tails (a number); in a column made fresh, a value fewer than ``min_rows``
    real rows hold, holdout included (identifiers: any real one). Zero by construction: this is
    the check that construction held, against the real rows themselves. ``private`` (a model
    trained with differential privacy): learned numbers are not checked, being drawn from a DP
    distribution over DP bounds, where any whole number may come out without revealing a row.
    ``every``: where ``train`` is a sample of a table read a row group at a time, those row
    groups: every real row is counted, a row group at a time."""
    # per column checked: its real values, the synthetic column (floats for a number), k, fresh
    columns: dict[str, tuple[_RealColumn, pa.Array, int, bool]] = {}
    for name in synthetic.column_names:
        role = roles.get(name)
        fresh = role is not None and role.fresh
        threshold = protection.min_rows if fresh else protection.threshold
        if name not in train.column_names or threshold <= 1:
            continue
        numeric = is_numeric(train.schema.field(name).type)
        if private and numeric and not fresh:
            continue
        column = dense(synthetic.column(name))
        column = pa.array(to_float(column)) if numeric else column
        real = _RealColumn(pc.unique(column.drop_null()), 2 * threshold - 1, numeric)
        columns[name] = (real, column, threshold, fresh)
    for part in every if every is not None else (train,):
        for name, (real, *_) in columns.items():
            real.add(dense(part.column(name)))
    found: dict[str, int] = {}
    hit = np.zeros(synthetic.num_rows, dtype=bool)
    for name, (real, column, threshold, fresh) in columns.items():
        if fresh and holdout is not None and name in holdout.column_names:
            real.add(dense(holdout.column(name)).cast(train.schema.field(name).type))
        role = roles.get(name)
        tails = real.numeric and not fresh and real.continuous(role.role if role is not None else None)
        rare = real.rare(threshold, quantum(train.schema.field(name).type) if tails else None)
        mask = pc.fill_null(pc.is_in(column, value_set=rare.cast(column.type)), False).to_numpy(
            zero_copy_only=False
        )
        found[name] = int(mask.sum())
        hit |= mask
    return found, float(hit.mean()) if len(hit) else 0.0
