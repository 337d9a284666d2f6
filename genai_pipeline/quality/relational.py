"""Fidelity across tables joined by keys, and of the event sequences within an entity.

Per table the single-table metrics apply; these are what only a relational dataset has, each for
one foreign key (a child table, the column, the parent it references) of a
:class:`~genai_pipeline.relational.Relations` schema:

- **referential integrity**: the share of child rows whose key is a row of the parent table (a
  matched key may be null; the context key may not). Synthetic keys are made, so anything below
  1.0 is a defect, and the gate requires 1.0.
- **cardinality shape**: SDMetrics' CardinalityShapeSimilarity, 1 − KS statistic between the real
  and synthetic distributions of children per parent row (parents without children count as 0).
- **parent–child pair trends**: SDMetrics' inter-table trends: each child column against each
  parent column through the join, scored as single-table pair trends are
  (:func:`~genai_pipeline.quality.tabular.pair_trend_details`); the key columns left out.

and for a child ordered within its context parent (``order_by``), the sequence metrics:

- **order**: the share of consecutive events of an entity that are in order in the published row
  order (a reader who groups by the key and reads down must see time go forwards; 1.0 expected);
- **gaps**: 1 − KS between the real and synthetic gaps between consecutive events of an entity;
- **autocorrelation**: for each numeric column, 1 − |Δ lag-1 autocorrelation| / 2 within entities
  (does a high value follow a high value as often as in the real sequences).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.stats import ks_2samp

from genai_pipeline.columns import dense, is_numeric, to_float
from genai_pipeline.quality.tabular import PairTrend, pair_trend_details, pearson
from genai_pipeline.relational import ForeignKey, Relations, matched, parent_rows


@dataclass
class RelationScores:
    """The scores of one foreign key: ``child.column → parent``."""

    child: str
    column: str
    parent: str
    integrity: float
    cardinality: float | None
    pair_trends: dict[tuple[str, str], PairTrend] = field(default_factory=dict)
    #: with order_by on the context key: order, gaps and per numeric column the autocorrelation
    order: float | None = None
    gaps: float | None = None
    autocorrelation: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.child}.{self.column} → {self.parent}"


def relation_scores(
    real: dict[str, pa.Table], synthetic: dict[str, pa.Table], relations: Relations, bins: int = 10
) -> list[RelationScores]:
    """Every foreign key's scores, parents first."""
    scores = []
    for child in relations.order:
        spec = relations.tables[child]
        keys = _key_columns(relations, child)
        for key in spec.foreign_keys:
            primary = relations.tables[key.references].primary_key or ""
            context = relations.context[child] is key
            sides = [
                (tables[key.references].column(primary), tables[child].column(key.column))
                for tables in (real, synthetic)
            ]
            score = RelationScores(
                child,
                key.column,
                key.references,
                integrity=referential_integrity(sides[1][1], sides[1][0], optional=not context),
                cardinality=cardinality_shape(sides[0], sides[1]),
                pair_trends=_parent_child_trends(real, synthetic, relations, child, key, keys, bins),
            )
            if context and spec.order_by is not None:
                score.order, score.gaps, score.autocorrelation = _sequence_scores(
                    real[child], synthetic[child], key.column, spec.order_by, keys
                )
            scores.append(score)
    return scores


def referential_integrity(children: pa.ChunkedArray, parents: pa.ChunkedArray, *, optional: bool) -> float:
    """The share of ``children`` keys that are one of ``parents`` (a null: resolved when
    ``optional``); 1.0 for no children."""
    return matched(children, parents, optional) / len(children) if len(children) else 1.0


def children_per_parent(parents: pa.ChunkedArray, children: pa.ChunkedArray) -> np.ndarray:
    """How many of ``children`` reference each of ``parents`` (0 for a parent without any; a
    child whose key is no parent is not counted)."""
    index = parent_rows(children, parents).drop_null().to_numpy()
    return np.bincount(index.astype(np.int64), minlength=len(parents))


def cardinality_shape(
    real: tuple[pa.ChunkedArray, pa.ChunkedArray], synthetic: tuple[pa.ChunkedArray, pa.ChunkedArray]
) -> float | None:
    """1 − KS between the real and synthetic children per parent; None when a side has no parents.
    Each side is ``(parent keys, children's foreign keys)``."""
    return count_shape(children_per_parent(*real), children_per_parent(*synthetic))


def count_shape(real_counts: np.ndarray, synthetic_counts: np.ndarray) -> float | None:
    """1 − KS between the real and synthetic children per parent row (None: a side has no parents)."""
    if len(real_counts) == 0 or len(synthetic_counts) == 0:
        return None
    return float(1 - ks_2samp(real_counts, synthetic_counts).statistic)


def _key_columns(relations: Relations, table: str) -> set[str]:
    """A table's key columns: its primary key and foreign keys, which no trend compares."""
    spec = relations.tables[table]
    return {key.column for key in spec.foreign_keys} | ({spec.primary_key} if spec.primary_key else set())


def _parent_child_trends(
    real: dict[str, pa.Table],
    synthetic: dict[str, pa.Table],
    relations: Relations,
    child: str,
    key: ForeignKey,
    child_keys: set[str],
    bins: int,
) -> dict[tuple[str, str], PairTrend]:
    """Each (parent column, child column) pair through the join on ``key``, named
    ``parent.column`` and ``child.column``."""
    parent_keys = _key_columns(relations, key.references)
    primary = relations.tables[key.references].primary_key or ""
    joined = [_joined(tables, child, key, primary) for tables in (real, synthetic)]
    parent_columns = [c for c in real[key.references].column_names if c not in parent_keys]
    child_columns = [c for c in real[child].column_names if c not in child_keys]
    pairs = [
        (f"{key.references}.{p}", f"{child}.{c}")
        for p in parent_columns
        for c in child_columns
        if f"{key.references}.{p}" in joined[1].column_names and f"{child}.{c}" in joined[1].column_names
    ]
    return pair_trend_details(joined[0], joined[1], bins, pairs) if pairs else {}


def joined_rows(tables: dict[str, pa.Table], relations: Relations, child: str) -> pa.Table:
    """``child``'s rows with their context parent's columns (``parent.column``, ``child.column``),
    the keys left out: what the privacy metrics compare on the joined rows (a child row that is
    new on its own may copy a real row together with its parent's)."""
    key = relations.context[child]
    assert key is not None, f"{child} has a context parent"
    primary = relations.tables[key.references].primary_key or ""
    keys = {f"{child}.{c}" for c in _key_columns(relations, child)}
    keys |= {f"{key.references}.{c}" for c in _key_columns(relations, key.references)}
    joined = _joined(tables, child, key, primary)
    return joined.drop_columns([c for c in joined.column_names if c in keys])


def _joined(tables: dict[str, pa.Table], child: str, key: ForeignKey, primary: str) -> pa.Table:
    """The child rows with their parent row's columns (inner join), every column prefixed with its
    table's name so that a name both tables use stays two columns."""
    parent = tables[key.references]
    left = tables[child].rename_columns([f"{child}.{c}" for c in tables[child].column_names])
    right = parent.rename_columns([f"{key.references}.{c}" for c in parent.column_names])
    left_key, right_key = f"{child}.{key.column}", f"{key.references}.{primary}"
    right = right.set_column(
        right.schema.get_field_index(right_key),
        right_key,
        dense(right.column(right_key)).cast(left.schema.field(left_key).type),
    )
    return left.join(right, left_key, right_key, join_type="inner")


def _sequence_scores(
    real: pa.Table, synthetic: pa.Table, entity: str, order_by: str, keys: set[str]
) -> tuple[float | None, float | None, dict[str, float]]:
    """``(order, gaps, autocorrelation)`` of the events of each entity (see the module's doc)."""
    real_events, synthetic_events = _events(real, entity, order_by), _events(synthetic, entity, order_by)
    real_gaps = _gaps(real_events, entity, order_by)
    synthetic_gaps = _gaps(synthetic_events, entity, order_by)
    gaps = (
        float(1 - ks_2samp(real_gaps, synthetic_gaps).statistic)
        if len(real_gaps) and len(synthetic_gaps)
        else None
    )
    autocorrelation = {}
    for name in real.column_names:
        if name in keys | {order_by} or name not in synthetic.column_names:
            continue
        if not is_numeric(dense(real.column(name)).type):
            continue
        real_r, synthetic_r = _lag_one(real_events, entity, name), _lag_one(synthetic_events, entity, name)
        if real_r is not None and synthetic_r is not None:
            autocorrelation[name] = 1 - abs(real_r - synthetic_r) / 2
    return in_order_share(synthetic, entity, order_by), gaps, autocorrelation


def _events(table: pa.Table, entity: str, order_by: str) -> pa.Table:
    """The rows with a parent, sorted by entity, then time (a stable sort: ties keep their order)."""
    table = table.filter(pc.is_valid(table.column(entity)))
    return table.sort_by([(entity, "ascending"), (order_by, "ascending")])


def _same_entity(events: pa.Table, entity: str) -> np.ndarray:
    """For each consecutive pair of sorted events, whether both belong to the same entity."""
    keys = dense(events.column(entity))
    if len(keys) < 2:
        return np.zeros(0, dtype=bool)
    return pc.equal(keys[1:], keys[:-1]).fill_null(False).to_numpy(zero_copy_only=False)


def _gaps(events: pa.Table, entity: str, order_by: str) -> np.ndarray:
    """Gaps between consecutive events of the same entity (in the order_by column's units: days
    for dates, the timestamp's unit for timestamps)."""
    gaps = np.diff(to_float(dense(events.column(order_by))))[_same_entity(events, entity)]
    return gaps[~np.isnan(gaps)]


def in_order_share(table: pa.Table, entity: str, order_by: str) -> float | None:
    """The share of consecutive events of an entity, in the table's own row order, whose
    ``order_by`` does not go backwards; None when no entity has two events. (Arrow's sort is
    stable, so sorting by the entity alone keeps each entity's rows in file order.)"""
    rows = table.filter(pc.is_valid(table.column(entity))).sort_by([(entity, "ascending")])
    steps = _gaps(rows, entity, order_by)
    return float(np.mean(steps >= 0)) if len(steps) else None


def _lag_one(events: pa.Table, entity: str, name: str) -> float | None:
    """The correlation of a column's value with the next event's, within entities: each value less
    its entity's mean, pooled (else entities that differ in level would look autocorrelated)."""
    values = to_float(dense(events.column(name)))
    codes = dense(events.column(entity)).dictionary_encode().indices.to_numpy()
    known = ~np.isnan(values)
    sums = np.bincount(codes[known], weights=values[known], minlength=codes.max(initial=-1) + 1)
    counts = np.bincount(codes[known], minlength=len(sums))
    centred = values - sums[codes] / np.maximum(counts[codes], 1)
    same = _same_entity(events, entity)
    return pearson(centred[:-1][same], centred[1:][same])
