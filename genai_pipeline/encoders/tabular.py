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

Decoding restores the input's exact Arrow schema (types, dictionary encoding, null pattern).
The fitted state is plain JSON (plus the serialised Arrow schema), never a pickle.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from scipy.special import ndtr, ndtri

from genai_pipeline.columns import dense, is_categorical, is_numeric, to_float, value_type

SpanKind = Literal["continuous", "softmax"]
#: a value holding at least this share of a numeric column is a point mass that decodes exactly
SPIKE_SHARE = 0.01
_NULL = "__null__"
_RARE = "__rare__"
_EPS = 1e-6


@dataclass(frozen=True)
class Span:
    """A slice of the encoded matrix belonging to one column."""

    column: str
    kind: SpanKind
    size: int


def _from_float(values: np.ndarray, type_: pa.DataType, mask: np.ndarray) -> pa.Array:
    """The inverse of :func:`to_float`, rounding where the type is integral."""
    if pa.types.is_temporal(type_):
        storage = pa.int32() if type_.bit_width == 32 else pa.int64()
        ints = pa.array(np.rint(values).astype(np.int64), mask=mask).cast(storage)
        return ints.view(type_)
    if pa.types.is_integer(type_):
        info = np.iinfo(type_.to_pandas_dtype())
        high = float(info.max)  # 2**63 or 2**64 as a float: one past the range, which would wrap
        high = np.nextafter(high, 0.0) if int(high) > info.max else high
        values = np.clip(np.rint(values), info.min, high)
        return pa.array(values.astype(type_.to_pandas_dtype()), type=type_, mask=mask)
    return pc.cast(pa.array(values, type=pa.float64(), mask=mask), type_, safe=False)


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
    kind: Literal["continuous", "categorical", "null"]
    has_nulls: bool = False
    knots: list[float] | None = None  # continuous: sorted values …
    knot_probs: list[float] | None = None  # … and their (mid-rank) CDF
    categories: list[Any] | None = None  # categorical: values (null and rare as markers)
    rare_values: list[Any] | None = None
    rare_probs: list[float] | None = None
    spikes: list[list[float]] | None = None  # continuous: [value, cdf below, cdf above] of point masses

    @property
    def spans(self) -> list[Span]:
        if self.kind == "continuous":
            nulls = [Span(self.name, "softmax", 2)] if self.has_nulls else []
            return [Span(self.name, "continuous", 1), *nulls]
        if self.kind == "categorical":
            return [Span(self.name, "softmax", len(self.categories or []))]
        return []


def _fit_continuous(name: str, values: np.ndarray, has_nulls: bool, max_knots: int) -> ColumnCodec:
    uniques, counts = np.unique(values, return_counts=True)
    cdf = np.cumsum(counts) / counts.sum()
    share = counts / counts.sum()
    mid = cdf - share / 2
    spikes = [[float(v), float(c - s), float(c)] for v, c, s in zip(uniques, cdf, share) if s >= SPIKE_SHARE]
    if len(uniques) > max_knots:  # keep a quantile grid, not every value
        pick = np.unique(np.linspace(0, len(uniques) - 1, max_knots).round().astype(int))
        uniques, mid = uniques[pick], mid[pick]
    return ColumnCodec(name, "continuous", has_nulls, uniques.tolist(), mid.tolist(), spikes=spikes or None)


def _fit_categorical(name: str, values: list[Any], has_nulls: bool, max_categories: int) -> ColumnCodec:
    counts: dict[Any, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    ranked = sorted(counts, key=lambda value: (-counts[value], str(value)))
    kept, rare = ranked[:max_categories], ranked[max_categories:]
    total_rare = sum(counts[value] for value in rare)
    categories = sorted(kept, key=str) + ([_RARE] if rare else []) + ([_NULL] if has_nulls else [])
    return ColumnCodec(
        name,
        "categorical",
        has_nulls,
        categories=categories,
        rare_values=rare or None,
        rare_probs=[counts[value] / total_rare for value in rare] or None,
    )


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

    @classmethod
    def fit(
        cls,
        table: pa.Table,
        *,
        condition: str | None = None,
        max_categories: int = 1000,
        discrete_threshold: int = 20,
        max_knots: int = 2000,
    ) -> TableEncoder:
        """Learn each column's codec from the real table."""
        codecs = []
        for field in table.schema:
            column = dense(table.column(field.name))
            type_ = column.type
            has_nulls = column.null_count > 0
            if column.null_count == len(column) or pa.types.is_null(type_):
                codecs.append(ColumnCodec(field.name, "null", True))
            elif is_numeric(type_):
                values = to_float(column)
                present = values[~np.isnan(values)]
                if len(np.unique(present)) > discrete_threshold:
                    codecs.append(_fit_continuous(field.name, present, has_nulls, max_knots))
                else:
                    codecs.append(_fit_categorical(field.name, present.tolist(), has_nulls, max_categories))
            elif is_categorical(type_):
                present = column.drop_null().to_pylist()
                codecs.append(_fit_categorical(field.name, present, has_nulls, max_categories))
            else:
                raise ValueError(
                    f"column {field.name!r}: type {field.type} is not supported for tabular models"
                )
        return cls(codecs, table.schema, condition)

    # -- encoding -------------------------------------------------------------------------

    @staticmethod
    def _category_index(codec: ColumnCodec, column: pa.Array) -> np.ndarray:
        """Vectorised lookup of each value's category (null and rare values to their markers)."""
        categories = codec.categories or []
        plain = [value for value in categories if value not in (_NULL, _RARE)]
        if is_numeric(column.type):
            column, value_set = (
                pa.array(to_float(column), mask=column.is_null().to_numpy(zero_copy_only=False)),
                pa.array(plain, pa.float64()),
            )
        else:
            value_set = pa.array(plain, column.type)
        found = pc.index_in(column, value_set=value_set).to_numpy(zero_copy_only=False)
        # index_in numbers the plain categories; map back to positions in the full list
        positions = np.array([categories.index(value) for value in plain] + [-1], dtype=np.int64)
        out = positions[np.nan_to_num(found, nan=len(plain)).astype(np.int64)]
        nulls = column.is_null().to_numpy(zero_copy_only=False)
        out[nulls] = categories.index(_NULL) if _NULL in categories else -1
        unknown = (out < 0) & ~nulls
        out[unknown] = categories.index(_RARE) if _RARE in categories else -1
        if (out < 0).any():
            raise ValueError(f"column {codec.name!r}: values the model was not fitted on")
        return out

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
            known = [v for v in codec.categories or [] if v not in (_NULL, _RARE)] + (codec.rare_values or [])
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
        return (
            repeated.dictionary_encode().cast(field.type) if pa.types.is_dictionary(field.type) else repeated
        )

    def encode_known(self, known: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """``(row, columns)``: a matrix row holding the known data columns' values (zeros elsewhere)
        and which of :attr:`span_columns` they are. Values are checked by :meth:`value_array`."""
        blocks, columns = [], []
        for codec in self.data_codecs:
            if codec.name in known:
                encoded = self._encode_column(codec, self.value_array(codec.name, known[codec.name]))
            else:
                encoded = [np.zeros((1, span.size)) for span in codec.spans]
            blocks += encoded
            if codec.spans:
                columns.append(codec.name in known)
        row = np.concatenate(blocks, axis=1)[0] if blocks else np.zeros(0)
        return row.astype(np.float32), np.asarray(columns, dtype=bool)

    # -- conditions -------------------------------------------------------------------------

    @property
    def condition_values(self) -> list[Any]:
        """The values the condition column can take (null as None)."""
        if self.condition_codec is None:
            return []
        return [None if value == _NULL else value for value in self.condition_codec.categories or []]

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
        if codec.kind == "null":
            array = pa.nulls(len(mask), type=type_)
        elif is_numeric(type_):
            array = _from_float(np.where(mask, 0.0, values).astype(np.float64), type_, mask)
        else:
            array = pa.array(np.where(mask, None, values), type=type_, from_pandas=True)
        return self._dictionary_encoded(codec, array) if encode else array

    def _dictionary_encoded(self, codec: ColumnCodec, array: pa.Array) -> pa.Array:
        """The array as the column's dictionary type, when the input had one."""
        field = self.schema.field(codec.name)
        return array.dictionary_encode().cast(field.type) if pa.types.is_dictionary(field.type) else array

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
        values = np.array(categories, dtype=object)
        dictionary = self._build_column(codec, values, np.asarray(values == _NULL, dtype=bool), encode=False)
        return self._dictionary_encoded(codec, dictionary.take(pa.array(index)))

    def decode(self, x: np.ndarray, cond: np.ndarray | None, *, seed: int) -> pa.Table:
        """A table with the input's schema from a sampled matrix (one-hot for categoricals)."""
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
            else:
                columns[codec.name] = self._build_column(codec, np.zeros(n), np.ones(n, dtype=bool))
            offset += sum(span.size for span in codec.spans)
        if self.condition_codec is not None:
            if cond is None:
                raise ValueError("a conditioned encoder needs condition indices to decode")
            columns[self.condition] = self._decode_categorical(self.condition_codec, cond, rng)
        return pa.table([columns[field.name] for field in self.schema], schema=self.schema)

    # -- persistence -------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {
            "schema": base64.b64encode(self.schema.serialize().to_pybytes()).decode(),
            "condition": self.condition,
            "codecs": [vars(codec) for codec in self.codecs],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TableEncoder:
        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(state["schema"])))
        return cls([ColumnCodec(**codec) for codec in state["codecs"]], schema, state["condition"])
