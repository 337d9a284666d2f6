"""A fitted, reversible transform between Arrow tables and the float matrices models learn.

Each column becomes one or more *spans* of the matrix (the idea of CTGAN's ``SpanInfo``): a
``continuous`` span of width 1 or a ``softmax`` span of one-hot categories. Models shape their
output heads from the spans and never see column types.

- Numeric, integer, decimal, date and timestamp columns with many distinct values map through their
  empirical quantiles to a standard normal (so any marginal, skewed or multi-modal, becomes easy
  to model and decodes back inside the real range); nulls get a two-way softmax span of their own.
- Strings, booleans and numeric columns with few distinct values are categories (one-hot); null is
  a category of its own; beyond ``max_categories`` the rarest values share one "rare" category that
  decodes by drawing from their observed frequencies, so one-hot width stays bounded.
- A column that is entirely null is reproduced as entirely null.
- **Value protection** (:mod:`genai_pipeline.privacy.protection`, on by default): a category fewer
  than ``min_rows`` rows hold is never stored; it shares a protected category that decodes to the
  job's token (text) or the most frequent value (numbers, booleans). Numeric tails are clipped and
  the quantile knots are means of blocks of at least ``min_rows`` values, so the fitted state holds
  no real value fewer than ``min_rows`` rows share.
- **Identifiers and personal data** (:mod:`genai_pipeline.privacy.roles`) are not learned: they have
  no spans, and decoding fills them with fresh values (:mod:`genai_pipeline.privacy.fresh`) that
  depend only on the run's key and each row's number in the run (:class:`RowStream`).
- **Text columns** (role ``text``) have no spans either: the table's language model
  (:mod:`genai_pipeline.models.text`) writes them given the decoded row.

Decoding restores the input's exact Arrow schema (types, dictionary encoding, null pattern).
The fitted state is plain JSON (plus the serialised Arrow schema), never a pickle.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from scipy.special import ndtr, ndtri

from genai_pipeline.columns import (
    dense,
    encoded_as,
    from_float,
    is_categorical,
    is_numeric,
    quantum,
    schema_from_text,
    schema_to_text,
    to_float,
    value_type,
)
from genai_pipeline.datasets.row_groups import ColumnFacts
from genai_pipeline.privacy.dp import (
    CDF_HISTOGRAMS,
    StatisticsBudget,
    dp_category_counts,
    dp_cdf,
    selection_threshold,
)
from genai_pipeline.privacy.fresh import FreshColumn, generate_fresh
from genai_pipeline.privacy.protection import KeptCategories, Protection, keep_categories, protect_numbers
from genai_pipeline.privacy.roles import ColumnRole, Roles, column_roles

SpanKind = Literal["continuous", "softmax"]
#: a value holding at least this share of a numeric column is a point mass that decodes exactly
SPIKE_SHARE = 0.01
_NULL = "__null__"
_RARE = "__rare__"  # values beyond max_categories, each held by enough rows: drawn by frequency
_PROTECTED = "__protected__"  # values fewer than min_rows rows hold: never stored
_EPS = 1e-6


@dataclass(frozen=True)
class RowStream:
    """Which rows of a run a batch is: rows ``first … first + n − 1`` of the run's ``total``, made
    with the run's ``key``. Fresh values (identifiers, personal data) depend only on the key and a
    row's number in the run, so shards that each make their own range never repeat each other's
    identifiers, whatever their batches."""

    key: int
    first: int
    total: int


@dataclass(frozen=True)
class Span:
    """A slice of the encoded matrix belonging to one column."""

    column: str
    kind: SpanKind
    size: int


def _inverse_cdf(codec: ColumnCodec, probs: np.ndarray) -> np.ndarray:
    """Values for probabilities.

    A probability at a knot (within float32 rounding of the encoded z) is that knot's value exactly;
    a probability anywhere in a point mass's share of the CDF is that value, so a model's spread
    around a spike (92% zeros in a capital-gain column) decodes to the spike, not to its neighbours.
    """
    knot_probs, knots = np.asarray(codec.knot_probs), np.asarray(codec.knots)
    values = np.interp(probs, knot_probs, knots)
    nearest = np.clip(np.searchsorted(knot_probs, probs), 0, len(knots) - 1)
    for candidate in (nearest, np.maximum(nearest - 1, 0)):
        hit = np.abs(knot_probs[candidate] - probs) < 1e-6
        values[hit] = knots[candidate[hit]]
    for value, low, high in codec.spikes or []:
        values[(probs >= low) & (probs < high)] = value
    return values


@dataclass
class ColumnCodec:
    """How one column is encoded; all fields are JSON-able."""

    name: str
    kind: Literal["continuous", "categorical", "null", "fresh", "text"]
    has_nulls: bool = False
    knots: list[float] | None = None  # continuous: sorted values (protected: block means) …
    knot_probs: list[float] | None = None  # … and their (mid-rank) CDF
    categories: list[Any] | None = None  # categorical: values (null, rare, protected as markers)
    rare_values: list[Any] | None = None
    rare_probs: list[float] | None = None
    spikes: list[list[float]] | None = None  # continuous: [value, cdf below, cdf above] of point masses
    protected: int = 0  # categories: distinct values protected; numbers: values clipped (counts only)
    protected_as: Any = None  # what the protected category decodes to (None: null)
    #: with differential privacy, the categories' noisy frequencies (a DP release: models start
    #: from them, as they start from exact counts without DP)
    frequencies: list[float] | None = None
    fresh: dict[str, Any] | None = None  # identifiers and personal data: how fresh values are made

    @property
    def spans(self) -> list[Span]:
        if self.kind == "continuous":
            nulls = [Span(self.name, "softmax", 2)] if self.has_nulls else []
            return [Span(self.name, "continuous", 1), *nulls]
        if self.kind == "categorical":
            return [Span(self.name, "softmax", len(self.categories or []))]
        return []


def _spikes(values: np.ndarray, threshold: int) -> list[list[float]] | None:
    """``[value, cdf below, cdf above]`` of the values at least :data:`SPIKE_SHARE` of the rows and
    ``threshold`` rows hold: point masses that decode exactly."""
    uniques, counts = np.unique(values, return_counts=True)
    cdf = np.cumsum(counts) / counts.sum()
    share = counts / counts.sum()
    spikes = [
        [float(v), float(c - s), float(c)]
        for v, c, s, count in zip(uniques, cdf, share, counts)
        if s >= SPIKE_SHARE and count >= threshold
    ]
    return spikes or None


def _fit_continuous(
    name: str,
    values: np.ndarray,
    has_nulls: bool,
    max_knots: int,
    protection: Protection,
    step: float,
    dp: StatisticsBudget | None = None,
) -> ColumnCodec:
    """Knots on the column's empirical CDF: with ``dp``, a DP distribution (:func:`dp_cdf`); with
    protection, means of blocks of ``min_rows`` values with the tails clipped
    (:func:`protect_numbers`; ``step``: what decoding rounds to); without, a grid of its distinct
    values."""
    if dp is not None:
        released = dp_cdf(values, dp, quantum=step)
        if released is None:  # too little budget for this many values: nothing may be learned
            return ColumnCodec(name, "null", True)
        knots, probs = released
        keep = np.r_[True, np.diff(probs) > 0]  # a flat stretch of the CDF: one knot
        return ColumnCodec(name, "continuous", has_nulls, knots[keep].tolist(), probs[keep].tolist())
    if protection.enabled:
        protected = protect_numbers(values, protection.min_rows, max_knots, step)
        if protected is None:  # fewer values than min_rows: nothing about them may be learned
            return ColumnCodec(name, "null", True, protected=len(values))
        return ColumnCodec(
            name,
            "continuous",
            has_nulls,
            protected.knots.tolist(),
            protected.probs.tolist(),
            spikes=_spikes(protected.values, protection.min_rows),
            protected=protected.clipped,
        )
    uniques, counts = np.unique(values, return_counts=True)
    mid = (np.cumsum(counts) - counts / 2) / counts.sum()
    if len(uniques) > max_knots:  # keep a quantile grid, not every value
        pick = np.unique(np.linspace(0, len(uniques) - 1, max_knots).round().astype(int))
        uniques, mid = uniques[pick], mid[pick]
    return ColumnCodec(
        name, "continuous", has_nulls, uniques.tolist(), mid.tolist(), spikes=_spikes(values, 1)
    )


def _fit_categorical(
    name: str,
    counts: dict[Any, float],
    has_nulls: bool,
    max_categories: int,
    protection: Protection,
    textual: bool,
    dp: StatisticsBudget | None = None,
) -> ColumnCodec | None:
    """Categories held by at least ``min_rows`` rows, the ``max_categories`` most frequent one-hot
    and the rest drawn by frequency from a shared one; the protected ones in a category of their
    own. None when every value is protected in a numeric column (the caller fits it as a number).
    With ``dp``, the categories and their frequencies are a DP release (noisy counts over a
    threshold that a value one row holds passes with probability δ at most), and the protected
    category is always there: whether any value was protected is not released. ``counts``: each
    value's rows."""
    if dp is not None:
        threshold = max(protection.min_rows, selection_threshold(dp.sigma, dp.selection_delta))
        counts = dp_category_counts(counts, dp, threshold=threshold)
        kept = KeptCategories(counts, protected_values=1, protected_rows=0)  # protected or not: not told
    else:
        kept = keep_categories(counts, protection.threshold)
    if not kept.counts and not textual and counts:
        return None
    ranked = sorted(kept.counts, key=lambda value: (-counts[value], str(value)))
    frequent, rare = ranked[:max_categories], ranked[max_categories:]
    total_rare = sum(counts[value] for value in rare)
    protected = [_PROTECTED] if kept.protected_values else []
    categories = (
        sorted(frequent, key=str) + ([_RARE] if rare else []) + protected + ([_NULL] if has_nulls else [])
    )
    token = protection.rare_token if textual else None
    return ColumnCodec(
        name,
        "categorical",
        has_nulls,
        categories=categories,
        rare_values=rare or None,
        rare_probs=[counts[value] / total_rare for value in rare] or None,
        protected=kept.protected_values if dp is None else 0,
        protected_as=(token if token is not None else (ranked[0] if ranked else None)) if protected else None,
        frequencies=None
        if dp is None
        else [float(counts.get(c, total_rare if c == _RARE else 0.0)) for c in categories],
    )


def dp_histograms(schema: pa.Schema, roles: Roles) -> tuple[int, int]:
    """``(histograms, category sets)`` that fitting a table of ``schema`` with ``dp`` releases at
    most (:func:`_fit_column`): a distribution's :data:`CDF_HISTOGRAMS` for a number, one
    thresholded category set for any other column, both for a number declared a category (its
    codec falls back to a distribution when no category clears the threshold); none for a column
    made fresh or of nulls. The privacy plan's noise is calibrated for these many."""
    histograms = selections = 0
    for field in schema:
        role = roles.get(field.name)
        if (role is not None and role.fresh) or pa.types.is_null(field.type):
            continue
        categorical = not is_numeric(field.type) or (role is not None and role.role == "category")
        histograms += int(categorical) + CDF_HISTOGRAMS * int(is_numeric(field.type))
        selections += int(categorical)
    return histograms, selections


def _with_unseen(
    table: pa.Table, unseen: pa.Table | None, name: str, role: ColumnRole | None, facts: ColumnFacts | None
) -> pa.Array:
    """A column's values to fit on: the table's (for a column made fresh, all the rows' when
    ``table`` is a sample of them: ``facts``), and for a column made fresh the unseen rows' too
    (only its format and the values to avoid are fitted: no value is learned)."""
    column = facts.values if facts is not None and facts.values is not None else dense(table.column(name))
    if role is None or not role.fresh or unseen is None or name not in unseen.column_names:
        return column
    return pa.concat_arrays([column, dense(unseen.column(name)).cast(column.type)])


def _fit_column(
    name: str,
    column: pa.Array,
    role: ColumnRole | None,
    protection: Protection,
    *,
    max_categories: int,
    discrete_threshold: int,
    max_knots: int,
    key: int,
    dp: StatisticsBudget | None = None,
    facts: ColumnFacts | None = None,
) -> ColumnCodec:
    """One column's codec: fresh (identifiers, personal data), null, continuous or categorical.
    With ``dp`` (differential privacy), every learned column may hold nulls (whether it does is
    not released), numbers are continuous unless declared categories (how many distinct values a
    column has is not released either), and what is kept of the values is a DP release. With
    ``facts`` (``column`` is a sample of the rows), the nulls and the categories are all the rows'
    and the quantiles the sample's."""
    type_ = column.type
    nulls, rows = (facts.nulls, facts.rows) if facts is not None else (column.null_count, len(column))
    counted = facts.counts if facts is not None else None
    has_nulls = nulls > 0 or dp is not None
    if role is not None and role.fresh:
        fresh = FreshColumn.fit(
            name,
            column,
            role=role.role,  # type: ignore[arg-type]
            kind=role.kind,
            locale=role.locale,
            min_rows=protection.min_rows,  # fresh columns avoid rare real values whatever the policy
            key=key,
        )
        return ColumnCodec(name, "fresh", has_nulls, fresh=fresh.to_state())
    if role is not None and role.role == "text" and is_categorical(type_) and not pa.types.is_boolean(type_):
        # written by the table model's language model (models.text), not a matrix column: decoding
        # leaves it null for that model to fill
        return ColumnCodec(name, "text", has_nulls)
    if pa.types.is_null(type_) or (nulls == rows and dp is None):
        return ColumnCodec(name, "null", True)
    if is_numeric(type_):
        values = to_float(column)
        present = values[~np.isnan(values)]
        wanted = role.role if role is not None else None
        distinct = len(counted) if counted is not None else len(np.unique(present))
        few = dp is None and distinct <= discrete_threshold and (facts is None or counted is not None)
        if wanted != "numeric" and (wanted == "category" or few):
            counts = counted if counted is not None else Counter(present.tolist())
            codec = _fit_categorical(name, counts, has_nulls, max_categories, protection, False, dp)
            if codec is not None:
                return codec
        return _fit_continuous(name, present, has_nulls, max_knots, protection, quantum(type_), dp)
    if is_categorical(type_):
        textual = not pa.types.is_boolean(type_)
        counts = counted if counted is not None else Counter(column.drop_null().to_pylist())
        codec = _fit_categorical(name, counts, has_nulls, max_categories, protection, textual, dp)
        assert codec is not None, "a text or boolean column always has a categorical codec"
        return codec
    raise ValueError(f"column {name!r}: type {type_} is not supported for tabular models")


class TableEncoder:
    """Fit on a table once; encode tables into matrices and decode matrices into tables."""

    def __init__(self, codecs: list[ColumnCodec], schema: pa.Schema, condition: str | None):
        self.codecs = codecs
        self.schema = schema
        self.condition = condition
        by_name = {codec.name: codec for codec in codecs}
        self.condition_codec = by_name.get(condition) if condition else None
        if self.condition_codec is not None and self.condition_codec.kind != "categorical":
            self.condition_codec = None  # only categorical columns can condition a model
        self.data_codecs = [c for c in codecs if c is not self.condition_codec]
        self.spans = [span for codec in self.data_codecs for span in codec.spans]
        self.width = sum(span.size for span in self.spans)
        #: the columns made fresh at decoding (identifiers, personal data), built once
        self.fresh_columns = {c.name: FreshColumn.from_state(c.fresh) for c in codecs if c.fresh is not None}

    @classmethod
    def fit(
        cls,
        table: pa.Table,
        *,
        condition: str | None = None,
        max_categories: int = 1000,
        discrete_threshold: int = 20,
        max_knots: int = 2000,
        roles: Roles | None = None,
        protection: Protection | None = None,
        key: int = 0,
        unseen: pa.Table | None = None,
        dp: StatisticsBudget | None = None,
        facts: Mapping[str, ColumnFacts] | None = None,
    ) -> TableEncoder:
        """Learn each column's codec from the real table, under value ``protection`` (default: on)
        and with the columns' ``roles`` (None: detected here); ``key`` seeds what fresh columns
        need of it (their exclusion filters' hashing). ``unseen`` real rows (the holdout) are not
        learned from, but values made fresh avoid theirs as well. With ``dp`` (differential
        privacy), each learned column's codec is a DP release of its share of the budget. With
        ``facts`` (:meth:`RowGroups.facts`), ``table`` is a sample of the rows and each column's
        nulls, categories and fresh values are all the rows'."""
        facts = facts or {}
        protection = protection or Protection()
        roles = column_roles(table, {}, condition) if roles is None else roles
        codecs = [
            _fit_column(
                field.name,
                _with_unseen(table, unseen, field.name, roles.get(field.name), facts.get(field.name)),
                roles.get(field.name),
                protection,
                max_categories=max_categories,
                discrete_threshold=discrete_threshold,
                max_knots=max_knots,
                key=key,
                dp=dp,
                facts=facts.get(field.name),
            )
            for field in table.schema
        ]
        return cls(codecs, table.schema, condition)

    def public_view(self, table: pa.Table, *, keep_fresh: bool = False) -> pa.Table:
        """The real table as far as it may be shown: each learned column with only the values the
        model may emit (protected categories as the protected category decodes, numbers clipped to
        the knots' range, all-protected columns null); fresh columns (identifiers, personal data)
        and text left out, or (``keep_fresh``, for a private check of the input) as they are; of
        ``table``'s columns only (a chart's selection). What the suite derives its expectations
        from and the report charts."""
        columns, names = [], []
        for codec in self.codecs:
            hidden = codec.kind in ("fresh", "text") and not keep_fresh  # never a real value shown
            if hidden or codec.name not in table.column_names:
                continue
            column = dense(table.column(codec.name))
            mask = column.is_null().to_numpy(zero_copy_only=False)
            if codec.kind == "categorical":
                array = column
                if codec.protected:
                    hidden = self._category_index(codec, column) == (codec.categories or []).index(_PROTECTED)
                    shown = (
                        pa.scalar(codec.protected_as).cast(column.type)
                        if codec.protected_as is not None
                        else None
                    )
                    array = pc.if_else(pa.array(hidden), pa.scalar(shown, column.type), column)
            elif codec.kind == "continuous":
                low, high = (codec.knots or [0.0])[0], (codec.knots or [0.0])[-1]
                values = np.clip(np.nan_to_num(to_float(column), nan=low), low, high)
                array = self._build_column(codec, values, mask, encode=False)
            elif codec.kind in ("fresh", "text"):
                array = column
            else:
                array = pa.nulls(len(column), type=column.type)
            columns.append(array)
            names.append(codec.name)
        return pa.table(columns, names=names)

    # -- encoding -------------------------------------------------------------------------

    @classmethod
    def _category_index(cls, codec: ColumnCodec, column: pa.Array) -> np.ndarray:
        """Each value's category (:meth:`_category_positions`); a value with none fails."""
        out = cls._category_positions(codec, column)
        if (out < 0).any():
            raise ValueError(f"column {codec.name!r}: values the model was not fitted on")
        return out

    @staticmethod
    def _category_positions(codec: ColumnCodec, column: pa.Array) -> np.ndarray:
        """Vectorised lookup of each value's category: its own, or a marker's (null; a frequent value
        beyond ``max_categories``, rare; any other value, protected); -1 for none of them."""
        categories = codec.categories or []
        plain = [value for value in categories if value not in (_NULL, _RARE, _PROTECTED)]
        if is_numeric(column.type):
            column = pa.array(to_float(column), mask=column.is_null().to_numpy(zero_copy_only=False))
        value_type_ = pa.float64() if is_numeric(column.type) else column.type

        def lookup(values: list[Any]) -> np.ndarray:
            found = pc.index_in(column, value_set=pa.array(values, value_type_)).to_numpy(
                zero_copy_only=False
            )
            return np.nan_to_num(found, nan=-1).astype(np.int64)

        # index_in numbers the plain categories; map back to positions in the full list
        positions = np.array([categories.index(value) for value in plain] + [-1], dtype=np.int64)
        out = positions[lookup(plain)]
        nulls = column.is_null().to_numpy(zero_copy_only=False)
        out[nulls] = categories.index(_NULL) if _NULL in categories else -1
        unknown = (out < 0) & ~nulls
        if codec.rare_values and unknown.any():
            rare = unknown & (lookup(codec.rare_values) >= 0)
            out[rare] = categories.index(_RARE)
            unknown &= ~rare
        out[unknown] = categories.index(_PROTECTED) if _PROTECTED in categories else -1
        return out

    def known(self, table: pa.Table) -> np.ndarray:
        """Per row of ``table`` (some of the data columns), whether the model was fitted on each of
        its values: no category it never saw, no null where it saw none. A row given to
        :meth:`encode_given` otherwise fails, or stands for something the model never learned."""
        known = np.ones(table.num_rows, dtype=bool)
        for codec in self.data_codecs:
            if codec.name not in table.column_names:
                continue
            column = dense(table.column(codec.name))
            if codec.kind == "categorical":
                known &= self._category_positions(codec, column) >= 0
            elif codec.kind == "continuous" and not codec.has_nulls:
                known &= column.is_valid().to_numpy(zero_copy_only=False)
        return known

    def _encode_column(self, codec: ColumnCodec, column: pa.Array) -> list[np.ndarray]:
        """The blocks of one data column's spans."""
        if codec.kind == "continuous":
            values = to_float(column)
            nulls = np.isnan(values)
            filled = np.where(nulls, (codec.knots or [0.0])[0], values)
            z = ndtri(np.clip(np.interp(filled, codec.knots, codec.knot_probs), _EPS, 1 - _EPS))
            blocks = [np.where(nulls, 0.0, z)[:, None]]
            return blocks + ([np.stack([~nulls, nulls], axis=1)] if codec.has_nulls else [])
        if codec.kind == "categorical":
            index = self._category_index(codec, column)
            return [np.eye(len(codec.categories or []), dtype=np.float32)[index]]
        return []

    def encode(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray | None]:
        """``(x, cond)``: the float32 matrix of data spans and the condition's category indices."""
        blocks = [
            block
            for codec in self.data_codecs
            for block in self._encode_column(codec, dense(table.column(codec.name)))
        ]
        n = table.num_rows
        x = np.concatenate(blocks, axis=1).astype(np.float32) if blocks else np.zeros((n, 0), np.float32)
        cond = None
        if self.condition_codec is not None:
            cond = self._category_index(self.condition_codec, dense(table.column(self.condition)))
        return x, cond

    @property
    def span_columns(self) -> list[tuple[ColumnCodec, int]]:
        """Each data column that has spans (an all-null column has none) with its first matrix column."""
        out, offset = [], 0
        for codec in self.data_codecs:
            if codec.spans:
                out.append((codec, offset))
            offset += sum(span.size for span in codec.spans)
        return out

    def value_array(self, name: str, value: Any, rows: int = 1) -> pa.Array:
        """``rows`` copies of a value requested for a column, in the column's type (dictionaries too).

        Raises ValueError when the value cannot be read as that type or the model never saw it: a
        category must be one of the column's values, a number inside its observed range.
        """
        field = self.schema.field(name)
        type_ = value_type(field.type)
        try:
            one = pa.array([value]).cast(type_) if value is not None else pa.nulls(1, type_)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            raise ValueError(f"{value!r} cannot be read as {type_}") from None
        codec = next(codec for codec in self.codecs if codec.name == name)
        if value is None and not codec.has_nulls:
            raise ValueError("the column has no nulls")
        if value is not None and codec.kind == "categorical":
            known = [v for v in codec.categories or [] if v not in (_NULL, _RARE, _PROTECTED)]
            known += codec.rare_values or []
            if codec.protected and codec.protected_as is not None and codec.protected_as not in known:
                known.append(codec.protected_as)
            plain = to_float(one)[0] if is_numeric(type_) else one[0].as_py()
            if plain not in known:
                shown = ", ".join(map(str, known[:20])) + (" …" if len(known) > 20 else "")
                raise ValueError(f"{value!r} is not a known value (known: {shown})")
        elif value is not None and codec.kind == "continuous":
            low, high, number = (codec.knots or [0.0])[0], (codec.knots or [0.0])[-1], to_float(one)[0]
            if not low <= number <= high:
                raise ValueError(
                    f"{value!r} is outside the range the model saw ({one.type} in [{low}, {high}])"
                )
        repeated = one.take(pa.array(np.zeros(rows, dtype=np.int64)))
        return encoded_as(repeated, field.type)

    def null_columns(self, names: Sequence[str]) -> np.ndarray:
        """A mask over the matrix's columns: the null of each named column (a numeric's null flag, a
        category's null category), which ``generate.impute`` keeps from being drawn."""
        mask = np.zeros(self.width, dtype=bool)
        for codec, offset in self.span_columns:
            if codec.name not in names:
                continue
            if codec.kind == "continuous" and codec.has_nulls:
                mask[offset + 2] = True  # the [present, null] span after the value
            elif codec.kind == "categorical" and _NULL in (codec.categories or []):
                mask[offset + (codec.categories or []).index(_NULL)] = True
        return mask

    def encode_known(self, known: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """``(row, columns)``: a matrix row holding the known data columns' values (zeros elsewhere)
        and which of :attr:`span_columns` they are. Values are checked by :meth:`value_array`."""
        one_row = pa.table({"": [None]})  # the row's columns are added to it, then it is dropped
        for name, value in known.items():
            one_row = one_row.append_column(name, self.value_array(name, value))
        rows, columns = self.encode_given(one_row.drop_columns([""]))
        return rows[0], columns

    def encode_given(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, columns)``: for each row of ``table``, which holds some of the data columns, a
        matrix row with their values (zeros elsewhere), and which of :attr:`span_columns` they are."""
        n = table.num_rows
        blocks, columns = [], []
        for codec in self.data_codecs:
            if codec.name in table.column_names:
                blocks += self._encode_column(codec, dense(table.column(codec.name)))
            else:
                blocks += [np.zeros((n, span.size)) for span in codec.spans]
            if codec.spans:
                columns.append(codec.name in table.column_names)
        rows = np.concatenate(blocks, axis=1) if blocks else np.zeros((n, 0))
        return rows.astype(np.float32), np.asarray(columns, dtype=bool)

    # -- conditions -------------------------------------------------------------------------

    @property
    def condition_values(self) -> list[Any]:
        """The values the condition column can take (null as None)."""
        codec = self.condition_codec
        if codec is None:
            return []
        shown = {_NULL: None, _PROTECTED: codec.protected_as}
        return [shown.get(value, value) for value in codec.categories or []]

    def condition_index(self, value: Any) -> int:
        """The category index of a requested condition value, compared as the user wrote it."""
        for index, known in enumerate(self.condition_values):
            if known == value or str(known) == str(value):
                return index
        raise KeyError(value)

    # -- decoding ---------------------------------------------------------------------------

    def _build_column(
        self, codec: ColumnCodec, values: np.ndarray, mask: np.ndarray, *, encode: bool = True
    ) -> pa.Array:
        """An Arrow array of the column's original type from decoded values and a null mask
        (``encode=False``: of its value type, for a dictionary column)."""
        type_ = value_type(self.schema.field(codec.name).type)
        if codec.kind in ("null", "text"):
            array = pa.nulls(len(mask), type=type_)
        elif is_numeric(type_):
            array = from_float(np.where(mask, 0.0, values).astype(np.float64), type_, mask)
        else:
            array = pa.array(np.where(mask, None, values), type=type_, from_pandas=True)
        return self._dictionary_encoded(codec, array) if encode else array

    def _dictionary_encoded(self, codec: ColumnCodec, array: pa.Array) -> pa.Array:
        """The array as the column's dictionary type, when the input had one."""
        field = self.schema.field(codec.name)
        return encoded_as(array, field.type)

    def _decode_categorical(
        self, codec: ColumnCodec, index: np.ndarray, rng: np.random.Generator
    ) -> pa.Array:
        """Category indices → the column: its categories built once as Arrow values, then taken by
        index in Arrow (no Python object per row); rare rows draw one of the rare values."""
        categories = list(codec.categories or [])
        if codec.rare_values:
            rare = np.flatnonzero(index == categories.index(_RARE))
            draws = rng.choice(len(codec.rare_values), size=len(rare), p=codec.rare_probs)
            index = index.copy()
            index[rare] = len(categories) + draws
            categories += codec.rare_values
        nulls = np.array(
            [value == _NULL or (value == _PROTECTED and codec.protected_as is None) for value in categories]
        )
        values = np.array(
            [codec.protected_as if value == _PROTECTED else value for value in categories], dtype=object
        )
        dictionary = self._build_column(codec, values, nulls, encode=False)
        return self._dictionary_encoded(codec, dictionary.take(pa.array(index)))

    def decode(
        self, x: np.ndarray, cond: np.ndarray | None, *, seed: int, rows: RowStream | None = None
    ) -> pa.Table:
        """A table with the input's schema from a sampled matrix (one-hot for categoricals); fresh
        columns are made for the rows of the run ``rows`` says these are (default: a run of these
        rows alone, keyed by ``seed``)."""
        rng = np.random.default_rng(seed)
        n = len(x)
        matrix = torch.from_numpy(x)  # argmax over a strided slice: ~2× faster in torch than numpy
        columns: dict[str, pa.Array] = {}
        offset = 0
        for codec in self.data_codecs:
            if codec.kind == "continuous":
                values = _inverse_cdf(codec, ndtr(x[:, offset].astype(np.float64)))
                mask = np.zeros(n, dtype=bool)
                if codec.has_nulls:
                    mask = x[:, offset + 2] > x[:, offset + 1]
                columns[codec.name] = self._build_column(codec, values, mask)
            elif codec.kind == "categorical":
                width = len(codec.categories or [])
                index = matrix[:, offset : offset + width].argmax(dim=1).numpy()
                columns[codec.name] = self._decode_categorical(codec, index, rng)
            elif codec.kind in ("null", "text"):
                columns[codec.name] = self._build_column(codec, np.zeros(n), np.ones(n, dtype=bool))
            offset += sum(span.size for span in codec.spans)
        columns |= self.fresh(rows or RowStream(key=seed, first=0, total=n), n)
        if self.condition_codec is not None:
            if cond is None:
                raise ValueError("a conditioned encoder needs condition indices to decode")
            columns[self.condition] = self._decode_categorical(self.condition_codec, cond, rng)
        return pa.table([columns[field.name] for field in self.schema], schema=self.schema)

    def fresh(self, rows: RowStream, count: int) -> dict[str, pa.Array]:
        """The columns made fresh, for ``count`` rows of the run from where ``rows`` says: a pure
        function of the row's place, so rows drawn again (a rule's rejection) take the same."""
        if not self.fresh_columns:
            return {}
        made = generate_fresh(
            list(self.fresh_columns.values()), key=rows.key, first=rows.first, count=count, total=rows.total
        )
        return {
            codec.name: self._dictionary_encoded(
                codec, made[codec.name].cast(value_type(self.schema.field(codec.name).type))
            )
            for codec in self.codecs
            if codec.fresh is not None
        }

    # -- persistence -------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {
            "schema": schema_to_text(self.schema),
            "condition": self.condition,
            "codecs": [vars(codec) for codec in self.codecs],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TableEncoder:
        schema = schema_from_text(state["schema"])
        return cls([ColumnCodec(**codec) for codec in state["codecs"]], schema, state["condition"])
