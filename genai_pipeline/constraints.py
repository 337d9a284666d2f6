"""Rules every generated row follows (``generate.constraints``), enforced by construction.

A rule rewrites the columns it governs before the model learns them and writes them back from
what the model drew, so it holds in every row whatever the family draws:

- **bounds** (``inequality``, ``range``, ``positive``): a column bounded by another column is learned
  as its distance from it (``ship_date`` as the time after ``order_ts``), never less than the
  rule's gap; a column bounded by a constant is learned as it is and clipped (the model draws
  inside the real range nearly always, so the clip moves next to nothing).
- **fixed_combinations**: the columns are learned as one category, their real combinations.
- **formula**: the column is not learned: it is computed from the others, rounded as the real one.
- **one_of**: a value outside the set (a protected category) becomes the most frequent allowed
  value, a number the nearest one.
- **unique**: the column is made fresh, an identifier unique across every shard by construction.
- **custom**: a class of the user's, named by import path (nothing is unpickled), with
  ``is_valid`` and optionally ``transform``/``reverse_transform``; without a reverse transform the
  rows it refuses are drawn again, at most :data:`MAX_DRAWS` times the rows asked for, and counted.

Rules apply in an order worked out from what they read and write: the inverse runs a rule once
the columns it reads are back, the forward in the opposite order (a rule rewriting ``b`` goes after
one that reads ``b``). The real rows must follow every rule (ingest fails naming it otherwise);
conditions on rewritten columns are rewritten too (:meth:`Constraints.model_conditions`); the output
is checked again over every row as it is written and, through a Great Expectations expectation
(:mod:`genai_pipeline.quality.constraint_check`), on the validation sample.
"""

from __future__ import annotations

import ast
import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from genai_pipeline.columns import (
    dense,
    encoded_as,
    from_float,
    is_numeric,
    row_hashes,
    schema_from_text,
    schema_to_text,
    value_type,
)
from genai_pipeline.errors import ConfigError, DatasetError
from genai_pipeline.masking import SECRET_KEY
from genai_pipeline.privacy.protection import protect_numbers
from genai_pipeline.privacy.roles import ColumnRole
from genai_pipeline.strict import StrictModel

#: a rule without a reverse transform may have its rows drawn again up to this many times the rows
#: asked for; beyond, generation fails naming the rule
MAX_DRAWS = 10
#: an expression is at most this long (its depth is bounded by its length)
MAX_EXPRESSION = 500
#: a number with at most this many distinct values is encoded as a category (the encoder's default)
DISCRETE = 20

ColumnName = Annotated[str, Field(min_length=1, max_length=256)]
Scalar = str | int | float | bool


# -- the job spec ----------------------------------------------------------------------------------


class InequalitySpec(StrictModel):
    """``high >= low`` (``>`` with ``strict``), at least ``gap`` apart."""

    kind: Literal["inequality"]
    low: ColumnName
    high: ColumnName
    strict: bool = False
    gap: float | str | None = Field(
        default=None,
        description="the least distance: a number, or for dates and times a duration ('1 day', '36h')",
    )

    @model_validator(mode="after")
    def _two_columns(self) -> InequalitySpec:
        if self.low == self.high:
            raise ValueError("low and high must be two columns")
        return self


class RangeSpec(StrictModel):
    """``low <= column <= high``; each bound a column (by name) or a constant."""

    kind: Literal["range"]
    column: ColumnName
    low: float | str | None = Field(default=None, description="a column name or a constant")
    high: float | str | None = Field(default=None, description="a column name or a constant")
    strict: bool = False

    @model_validator(mode="after")
    def _a_bound(self) -> RangeSpec:
        if self.low is None and self.high is None:
            raise ValueError("give low, high or both")
        if self.column in (self.low, self.high):
            raise ValueError("a column cannot bound itself")
        return self


class PositiveSpec(StrictModel):
    """Every one of ``columns`` at least 0 (above 0 with ``strict``)."""

    kind: Literal["positive"]
    columns: list[ColumnName] = Field(min_length=1)
    strict: bool = False


class FixedCombinationsSpec(StrictModel):
    """Only combinations of ``columns`` the real rows hold (a city with its country)."""

    kind: Literal["fixed_combinations"]
    columns: list[ColumnName] = Field(min_length=2)

    @field_validator("columns")
    @classmethod
    def _distinct(cls, columns: list[str]) -> list[str]:
        if len(set(columns)) < len(columns):
            raise ValueError("a column is named twice")
        return columns


class FormulaSpec(StrictModel):
    """``column = expression`` of other columns (+ - * / // % **, abs, min, max, round)."""

    kind: Literal["formula"]
    column: ColumnName
    expression: str = Field(min_length=1, max_length=MAX_EXPRESSION)
    decimals: int | None = Field(default=None, ge=0, le=12, description="default: as the real column")

    @field_validator("expression")
    @classmethod
    def _parses(cls, expression: str) -> str:
        _parse(expression)
        return expression

    @model_validator(mode="after")
    def _not_itself(self) -> FormulaSpec:
        if self.column in _parse(self.expression)[1]:
            raise ValueError(f"the expression cannot use {self.column}, the column it computes")
        return self


class OneOfSpec(StrictModel):
    """``column`` only takes ``values`` (or null)."""

    kind: Literal["one_of"]
    column: ColumnName
    values: list[Scalar] = Field(min_length=1, max_length=10_000)


class UniqueSpec(StrictModel):
    """No two rows share a value of ``column`` (or a combination of ``columns``)."""

    kind: Literal["unique"]
    column: ColumnName | None = None
    columns: list[ColumnName] | None = Field(
        default=None, min_length=2, description="instead of column: no two rows share all of these"
    )

    @model_validator(mode="after")
    def _one_of(self) -> UniqueSpec:
        if (self.column is None) == (self.columns is None):
            raise ValueError("give column (one) or columns (several), one of them")
        if self.columns is not None and len(set(self.columns)) < len(self.columns):
            raise ValueError("a column is named twice")
        return self

    @property
    def names(self) -> list[str]:
        return [self.column] if self.column is not None else list(self.columns or [])


class CustomSpec(StrictModel):
    """A user's rule: ``rule`` is ``package.module:Class``, built with ``options``."""

    kind: Literal["custom"]
    rule: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
    columns: list[ColumnName] = Field(min_length=1, description="the columns the rule reads and writes")
    options: dict[str, Scalar | None] = Field(
        default_factory=dict, description="keyword arguments of the rule's class (published with the suite)"
    )

    @field_validator("options")
    @classmethod
    def _no_secrets(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Options travel with the rule into the published suite: a secret has no place there."""
        if secret := next((name for name in options if SECRET_KEY.search(name)), None):
            raise ValueError(
                f"{secret}: options are published with the suite; a rule reads its secrets from its "
                "environment"
            )
        return options


_KINDS: dict[str, type[StrictModel]] = {
    "inequality": InequalitySpec,
    "range": RangeSpec,
    "positive": PositiveSpec,
    "fixed_combinations": FixedCombinationsSpec,
    "formula": FormulaSpec,
    "one_of": OneOfSpec,
    "unique": UniqueSpec,
    "custom": CustomSpec,
}


def _kind(value: Any) -> str | None:
    """Which spec a constraint is, by its ``kind`` (the strict models' validators rule out
    pydantic's own discriminator field)."""
    return value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)


ConstraintSpec = Annotated[
    Annotated[InequalitySpec, Tag("inequality")]
    | Annotated[RangeSpec, Tag("range")]
    | Annotated[PositiveSpec, Tag("positive")]
    | Annotated[FixedCombinationsSpec, Tag("fixed_combinations")]
    | Annotated[FormulaSpec, Tag("formula")]
    | Annotated[OneOfSpec, Tag("one_of")]
    | Annotated[UniqueSpec, Tag("unique")]
    | Annotated[CustomSpec, Tag("custom")],
    Discriminator(
        _kind,
        custom_error_type="constraint_kind",
        custom_error_message=f"kind: one of {', '.join(_KINDS)}",
    ),
]


# -- values as numbers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Numbers:
    """A numeric or temporal column as numbers: exact int64 for integers and dates/times (their
    ticks: days, ms, µs or ns), floats in the column's own precision; ``nulls`` marks the nulls."""

    values: np.ndarray
    nulls: np.ndarray

    @classmethod
    def of(cls, column: pa.ChunkedArray | pa.Array) -> Numbers:
        array = dense(column)
        nulls = array.is_null().to_numpy(zero_copy_only=False)
        type_ = array.type
        if pa.types.is_temporal(type_):
            array = array.view(pa.int32() if type_.bit_width == 32 else pa.int64())
        if pa.types.is_integer(array.type):
            ints = pc.cast(array, pa.int64(), safe=False).fill_null(0)
            return cls(ints.to_numpy(zero_copy_only=False), nulls)
        dtype = np.float32 if pa.types.is_float32(type_) else np.float64
        floats = pc.cast(array, pa.float64(), safe=False).fill_null(0.0).to_numpy(zero_copy_only=False)
        return cls(floats.astype(dtype), nulls)

    @property
    def exact(self) -> bool:
        return self.values.dtype.kind == "i"


def _to_arrow(values: np.ndarray, nulls: np.ndarray, type_: pa.DataType) -> pa.Array:
    """Numbers back into a column of ``type_`` (dictionary types as their values' type)."""
    type_ = value_type(type_)
    if values.dtype.kind == "f":  # as the encoder decodes floats, rounding where the type is integral
        return from_float(values.astype(np.float64), type_, nulls)
    if pa.types.is_temporal(type_):  # exact ticks: a float64 would round nanosecond timestamps
        storage = pa.int32() if type_.bit_width == 32 else pa.int64()
        return pa.array(values.astype(np.int64), mask=nulls).cast(storage).view(type_)
    if pa.types.is_integer(type_):
        info = np.iinfo(type_.to_pandas_dtype())
        ints = np.clip(values, max(info.min, np.iinfo(np.int64).min), min(info.max, np.iinfo(np.int64).max))
        return pa.array(ints.astype(type_.to_pandas_dtype()), type=type_, mask=nulls)
    return from_float(values.astype(np.float64), type_, nulls)


def _column(table: pa.Table, name: str, where: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise DatasetError(f"{where}: no column {name!r} (columns: {', '.join(table.column_names)})")
    return table.column(name)


def _numeric(table: pa.Table, name: str, where: str) -> pa.DataType:
    type_ = value_type(_column(table, name, where).type)
    if not is_numeric(type_):
        raise DatasetError(f"{where}: {name} is {type_}, not a number, date or time")
    return type_


def _spliced(table: pa.Table, removed: Sequence[str], added: pa.Table) -> pa.Table:
    """``table`` with ``removed``'s columns replaced by ``added``'s, where the first removed one was
    (a rule's columns traded for those the model learns, and back)."""
    at = table.schema.get_field_index(removed[0])
    table = table.drop_columns(list(removed))
    for offset, name in enumerate(added.column_names):
        table = table.add_column(min(at + offset, table.num_columns), name, added.column(name))
    return table


def _replace(table: pa.Table, name: str, array: pa.Array) -> pa.Table:
    index = table.schema.get_field_index(name)
    return table.set_column(index, table.schema.field(index).with_type(array.type), array)


# -- rules -------------------------------------------------------------------------------------------


class Rule(ABC):
    """One constraint, fitted on the real rows: what it reads, writes back and checks."""

    #: ``generate.constraints.<i>``: where the rule was declared, for messages
    where: str
    #: fitted for a model trained with differential privacy: nothing of the real rows may be kept
    #: (a rule that would keep some is refused, or takes what the spec says instead)
    private: bool = False

    def __init__(self, spec: Any, where: str):
        self.spec = spec
        self.where = where

    @property
    @abstractmethod
    def columns(self) -> list[str]:
        """Every data column the rule is about (its expectation's columns)."""

    @property
    def writes(self) -> list[str]:
        """The columns the inverse writes (rewritten, computed or adjusted)."""
        return self.columns

    @property
    def removed(self) -> list[str]:
        """The columns the model does not learn as they are (absent from its table)."""
        return []

    @property
    def computed(self) -> list[str]:
        """The columns whose values are computed from others' (which may pass their real range)."""
        return self.removed

    @property
    def needs(self) -> list[str]:
        """The columns :meth:`forward` needs (a condition on a rewritten column needs them)."""
        return self.columns

    @property
    def reads(self) -> list[str]:
        """The columns the inverse needs as the user has them."""
        return [name for name in self.columns if name not in self.writes]

    def label(self) -> str:
        """The rule in a few words, for reports and messages."""
        return f"{self.spec.kind} {', '.join(self.columns)}"

    def tally(self, table: pa.Table) -> None:
        """One row group of a table too large to be fitted on whole (``train.in_memory_rows``),
        before :meth:`fit` is given a sample of its rows: what the fit must know of every row
        (every combination's count, every value's decimals), kept to :meth:`fit` on the sample.
        Nothing by default: the sample is enough."""
        return

    @abstractmethod
    def fit(self, table: pa.Table, roles: Mapping[str, ColumnRole], min_rows: int) -> None:
        """Learn what the rule needs of the real ``table`` (its types, a rounding, the common
        values); values fewer than ``min_rows`` rows hold are never kept. After :meth:`tally`,
        ``table`` is a sample of the rows it saw, and what it tallied is of every row."""

    def forward(self, table: pa.Table) -> pa.Table:
        """The table as the model learns it."""
        return table

    @abstractmethod
    def inverse(self, table: pa.Table) -> pa.Table:
        """What the model drew back into the user's columns, the rule holding in every row."""

    @abstractmethod
    def holds(self, table: pa.Table) -> np.ndarray:
        """Per row, whether the rule holds (a null where a value is needed: it holds, as in SQL)."""

    def broken(self, table: pa.Table) -> int:
        """How many of the real ``table``'s rows break the rule."""
        return int((~self.holds(table)).sum())

    def check_rows(self, table: pa.Table) -> None:
        """Fail naming what in the real ``table``'s rows the rule cannot learn from (nothing by
        default); called on every row group of a streamed table, as :meth:`broken` is."""
        return

    def roles(self, roles: dict[str, ColumnRole]) -> dict[str, ColumnRole]:
        """The roles of the model's table: those of the columns it does not learn as they are gone
        (a rule that adds a column of a role of its own adds that)."""
        return {name: role for name, role in roles.items() if name not in self.removed}

    def to_state(self) -> dict[str, Any]:
        """JSON-able: what :meth:`restore` needs besides the spec."""
        return {}

    @abstractmethod
    def restore(self, state: dict[str, Any]) -> None:
        """Take back :meth:`to_state`'s."""

    def check_state(self) -> dict[str, Any]:
        """What checking the rule needs (published with the suite: nothing fewer than ``min_rows``
        rows hold)."""
        return self.to_state()

    def complete_conditions(self, conditions: dict[str, Any]) -> dict[str, Any]:
        """Conditions with what they imply of the rule's other columns (none by default)."""
        return conditions


@dataclass(frozen=True)
class _Step:
    """``target >= base + margin`` (``sign`` 1) or ``target <= base - margin`` (-1); ``base`` a
    column, or a constant when ``constant`` is set. A column base makes the target learned as its
    distance from the base (``__gap__.<target>``) unless ``clip`` (the target is learned as a share
    of a range, :class:`Bounds`); a constant one clips it."""

    target: str
    base: str | None
    constant: Any
    sign: int
    strict: bool
    gap: Any = None
    clip: bool = False

    @property
    def rewrites(self) -> bool:
        return self.base is not None and not self.clip

    @property
    def derived(self) -> str:
        return f"__gap__.{self.target}"

    def text(self) -> str:
        operator = (">" if self.strict else ">=") if self.sign > 0 else ("<" if self.strict else "<=")
        base = self.base if self.base is not None else repr(self.constant)
        gap = f" {'+' if self.sign > 0 else '-'} {self.gap}" if self.gap not in (None, 0, "0") else ""
        return f"{self.target} {operator} {base}{gap}"


#: nanoseconds per unit of a timestamp, duration or time type
_UNIT_NS = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


def _tick_ns(type_: pa.DataType) -> int:
    """Nanoseconds per tick of a date/time type (its integer storage); 0 for a number."""
    if pa.types.is_timestamp(type_) or pa.types.is_duration(type_) or pa.types.is_time(type_):
        return _UNIT_NS[type_.unit]
    if pa.types.is_date32(type_):
        return 86_400 * 10**9
    return 10**6 if pa.types.is_date64(type_) else 0


def _duration(value: Any, unit_ns: int, where: str) -> int:
    """A gap as a whole number of ``unit_ns`` nanoseconds."""
    import pandas as pd

    if not isinstance(value, str):
        raise DatasetError(f"{where}.gap: give a duration such as '1 day' for a date/time column")
    try:
        delta = pd.Timedelta(value)
    except ValueError:
        raise DatasetError(f"{where}.gap: {value!r} is not a duration (e.g. '1 day', '36h')") from None
    if delta.value % unit_ns:
        raise DatasetError(f"{where}.gap: {value!r} is finer than the columns' resolution")
    return int(delta.value // unit_ns)


class Bounds(Rule):
    """``inequality``, ``range`` and ``positive``: one or more :class:`_Step`. Dates and times are
    compared in the finest resolution among the rule's columns (a date as its midnight, as SQL
    compares a date with a timestamp): each column's numbers times its :attr:`scales`."""

    def __init__(self, spec: Any, where: str):
        super().__init__(spec, where)
        self.steps = self._steps(spec)
        self.margins: list[float | int] = []  # per step, the gap in the rule's units
        self.edges: list[float | int | None] = []  # per step, a constant bound in the rule's units
        self.types: dict[str, pa.DataType] = {}
        self.scales: dict[str, int] = {}  # per column, the rule's units per tick (1 for numbers)
        self.unit_ns = 0  # nanoseconds per unit of the rule's dates and times (0: numbers)
        self.share = False  # a range between a column and a constant, learned as a share of it
        #: per column the model does not learn as it is, the range it may take (the real one
        #: without its ``min_rows`` tails, as for a learned column), in the rule's units
        self.ranges: dict[str, list[float]] = {}

    @staticmethod
    def _steps(spec: Any) -> list[_Step]:
        if isinstance(spec, InequalitySpec):
            return [_Step(spec.high, spec.low, None, 1, spec.strict, spec.gap)]
        if isinstance(spec, PositiveSpec):
            return [_Step(name, None, 0, 1, spec.strict) for name in spec.columns]
        # a range: bounds by columns are resolved in fit; until then each bound is a constant
        return [
            _Step(spec.column, None, bound, sign, spec.strict)
            for bound, sign in ((spec.low, 1), (spec.high, -1))
            if bound is not None
        ]

    def _resolve(self, table: pa.Table) -> None:
        """A range's bounds that name columns: between two columns, the column learned as its
        distance above the low one and the high one as its distance above the column (so
        ``low <= column <= high`` holds whatever the model draws); between a column and a constant,
        the column learned as its share of the way from low to high (a discount as a share of the
        price); below or above one column, as its distance from it."""
        spec = self.spec
        if not isinstance(spec, RangeSpec):
            return
        low = spec.low if isinstance(spec.low, str) and spec.low in table.column_names else None
        high = spec.high if isinstance(spec.high, str) and spec.high in table.column_names else None
        if spec.low is not None and spec.high is not None and (low is None) != (high is None):
            self.share = True
            named, sign = (low, 1) if low is not None else (high, -1)
            constant = spec.high if low is not None else spec.low
            self.steps = [
                _Step(spec.column, named, None, sign, spec.strict, clip=True),
                _Step(spec.column, None, constant, -sign, spec.strict),
            ]
            return
        steps = []
        if low is not None:
            steps.append(_Step(spec.column, low, None, 1, spec.strict))
        if high is not None:
            steps.append(
                _Step(high, spec.column, None, 1, spec.strict)
                if low is not None
                else _Step(spec.column, high, None, -1, spec.strict)
            )
        for bound, sign, named in ((spec.low, 1, low), (spec.high, -1, high)):
            if bound is not None and named is None:
                steps.append(_Step(spec.column, None, bound, sign, spec.strict))
        self.steps = steps

    @property
    def columns(self) -> list[str]:
        names = [name for step in self.steps for name in (step.target, step.base) if name is not None]
        return list(dict.fromkeys(names))

    @property
    def writes(self) -> list[str]:
        return list(dict.fromkeys(step.target for step in self.steps))

    @property
    def removed(self) -> list[str]:
        return list(dict.fromkeys(step.target for step in self.steps if step.rewrites or self.share))

    @property
    def computed(self) -> list[str]:
        return []  # kept inside the range a learned column may take (:attr:`ranges`)

    def _inside(self, name: str, values: np.ndarray) -> np.ndarray:
        """A rewritten column's values clipped into its range. The rule still holds: where every
        real row has ``target >= base + gap``, each protected tail of the target lies at least the
        gap past the base's, so a base inside its own range leaves room."""
        if name not in self.ranges:
            return values
        low, high = self.ranges[name]
        return np.clip(values, low, high)

    def label(self) -> str:
        return f"{self.spec.kind} {' and '.join(step.text() for step in self.steps)}"

    @property
    def shared(self) -> str:
        """The column a range between a column and a constant learns in place of its own."""
        return f"__share__.{self.spec.column}"

    def _span(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A shared range's ``(low, high, nulls)`` per row, in the rule's units."""
        low, low_nulls = self._bound(next(i for i, s in enumerate(self.steps) if s.sign > 0), table)
        high, high_nulls = self._bound(next(i for i, s in enumerate(self.steps) if s.sign < 0), table)
        shape = (table.num_rows,)
        low = np.broadcast_to(np.asarray(low, dtype=np.float64), shape)
        return low, np.broadcast_to(np.asarray(high, dtype=np.float64), shape), low_nulls | high_nulls

    def _numbers(self, table: pa.Table, name: str) -> Numbers:
        """A column in the rule's units."""
        numbers = Numbers.of(table.column(name))
        scale = self.scales.get(name, 1)
        return numbers if scale == 1 else Numbers(numbers.values * scale, numbers.nulls)

    def _constant(self, step: _Step) -> float | int:
        """A constant bound in the rule's units (a date given as text)."""
        type_, value = self.types[step.target], step.constant
        if pa.types.is_temporal(type_):
            try:
                ticks = Numbers.of(pa.array([value]).cast(type_)).values[0].item()
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                raise DatasetError(
                    f"{self.where}: {value!r} is neither a column nor a {type_} value (e.g. '2024-01-31')"
                ) from None
            return ticks * self.scales[step.target]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DatasetError(f"{self.where}: {value!r} is neither a column nor a number")
        return value

    def _margin(self, step: _Step) -> float | int:
        """The step's gap in the rule's units."""
        if step.gap is None:
            return 0
        if self.unit_ns:
            return _duration(step.gap, self.unit_ns, self.where)
        if isinstance(step.gap, str):
            raise DatasetError(f"{self.where}.gap: {step.gap!r}: give a number for a numeric column")
        return step.gap

    def fit(self, table: pa.Table, roles: Mapping[str, ColumnRole], min_rows: int) -> None:
        self._resolve(table)
        for name in self.columns:
            self.types[name] = _numeric(table, name, self.where)
            if name in roles and roles[name].unlearned:
                raise DatasetError(f"{self.where}: {name} is {roles[name].role}, not a learned number")
        temporal = {
            name: _tick_ns(type_) for name, type_ in self.types.items() if pa.types.is_temporal(type_)
        }
        if temporal and len(temporal) < len(self.types):
            raise DatasetError(
                f"{self.where}: {', '.join(self.types)} are not all numbers or all dates/times"
            )
        self.unit_ns = min(temporal.values(), default=0)
        self.scales = {name: tick // self.unit_ns for name, tick in temporal.items()}
        self.margins = [self._margin(step) for step in self.steps]
        self.edges = [None if step.base is not None else self._constant(step) for step in self.steps]
        if min_rows > 1 and not self.private:
            for name in self.removed:
                numbers = Numbers.of(table.column(name))
                kept = protect_numbers(
                    numbers.values[~numbers.nulls].astype(np.float64),
                    min_rows,
                    2,
                    1.0 if numbers.exact else 0.0,
                )
                if kept is not None:
                    scale = self.scales.get(name, 1)
                    self.ranges[name] = [kept.low * scale, kept.high * scale]

    def check_rows(self, table: pa.Table) -> None:
        """Fails naming a step whose target a real row has without its base (which the target
        is learned from)."""
        for step in self.steps:
            if step.base is None:
                continue
            target, base = Numbers.of(table.column(step.target)), Numbers.of(table.column(step.base))
            if lost := int((~target.nulls & base.nulls).sum()):
                raise DatasetError(
                    f"{self.where} ({step.text()}): {lost} real row(s) have {step.target} but no "
                    f"{step.base}, which it is learned from"
                )

    def _bound(self, index: int, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """``(bound, nulls)``: the least (or most) step ``index``'s target may be, per row."""
        step, margin = self.steps[index], self.margins[index]
        if step.base is None:
            return np.asarray(self.edges[index]) + step.sign * margin, np.zeros(table.num_rows, dtype=bool)
        base = self._numbers(table, step.base)
        values = base.values if base.exact else base.values.astype(np.float64)
        return values + step.sign * margin, base.nulls

    @staticmethod
    def _outside(step: _Step, values: np.ndarray, bound: np.ndarray) -> np.ndarray:
        """Per value, whether it breaks the step's bound (reaches it, when the step is strict)."""
        signed, edge = (values, bound) if step.sign > 0 else (-values, -bound)
        return signed <= edge if step.strict else signed < edge

    @classmethod
    def _enforce(cls, step: _Step, target: Numbers, bound: np.ndarray) -> np.ndarray:
        """The target's values moved inside their bound (strictly, when the step is strict): whole
        units for integers and dates, the column's float precision else."""

        def outside(values: np.ndarray) -> np.ndarray:
            return cls._outside(step, values, bound)

        values = target.values
        if target.exact:
            edge = np.ceil(bound) if step.sign > 0 else np.floor(bound)
            edge = np.asarray(edge).astype(np.int64)
            if step.strict:
                edge = np.where(edge == bound, edge + step.sign, edge)
            return np.where(outside(values), edge, values)
        dtype = values.dtype
        edge = np.broadcast_to(np.asarray(bound, dtype=np.float64), values.shape).astype(dtype)
        for _ in range(3):  # the bound rounded to the column's precision may still be outside
            edge = np.where(outside(edge), np.nextafter(edge, dtype.type(step.sign * np.inf)), edge)
        return np.where(outside(values), edge, values)

    def _ticks(self, step: _Step, values: np.ndarray) -> np.ndarray:
        """The target's values from the rule's units into its own ticks, rounded into the bound
        (up for a least value, down for a most)."""
        scale = self.scales.get(step.target, 1)
        if scale == 1:
            return values
        return -((-values) // scale) if step.sign > 0 else values // scale

    def forward(self, table: pa.Table) -> pa.Table:
        if self.share:
            target = self._numbers(table, self.spec.column)
            low, high, nulls = self._span(table)
            span = high - low
            with np.errstate(all="ignore"):
                share = np.where(span > 0, (target.values - low) / np.where(span > 0, span, 1), 0.0)
            array = pa.array(share, type=pa.float64(), mask=target.nulls | nulls)
            at = table.schema.get_field_index(self.spec.column)
            return table.set_column(at, self.shared, array)
        for step in reversed(self.steps):  # a step's base may be a later step's target
            if not step.rewrites:
                continue
            target, base = self._numbers(table, step.target), self._numbers(table, step.base)
            if target.exact and base.exact:
                distance, type_ = (target.values - base.values) * step.sign, pa.int64()
            else:
                distance = (target.values.astype(np.float64) - base.values.astype(np.float64)) * step.sign
                type_ = pa.float64()
            array = pa.array(distance, type=type_, mask=target.nulls | base.nulls)
            table = table.set_column(table.schema.get_field_index(step.target), step.derived, array)
        return table

    def inverse(self, table: pa.Table) -> pa.Table:
        if self.share:  # the column from its share of the way from low to high
            share = Numbers.of(table.column(self.shared))
            low, high, nulls = self._span(table)
            values = self._inside(self.spec.column, low + np.clip(share.values, 0.0, 1.0) * (high - low))
            values = values / self.scales.get(self.spec.column, 1)
            nulls = share.nulls | nulls
            at = table.schema.get_field_index(self.shared)
            column = _to_arrow(np.where(nulls, 0.0, values), nulls, self.types[self.spec.column])
            table = table.set_column(at, self.spec.column, column)
        for index, step in enumerate(self.steps):
            type_, margin = self.types[step.target], self.margins[index]
            bound, bound_nulls = self._bound(index, table)
            if step.rewrites:  # the target from its distance past the base, at least the gap
                distance = Numbers.of(table.column(step.derived))
                values = bound + step.sign * (np.maximum(distance.values, margin) - margin)
                values = self._inside(step.target, values)
                nulls = distance.nulls | bound_nulls
                ticks = self._ticks(step, np.where(nulls, 0, values))
                at = table.schema.get_field_index(step.derived)
                table = table.set_column(at, step.target, _to_arrow(ticks, nulls, type_))
            target = self._numbers(table, step.target)
            inside = np.where(bound_nulls, target.values, self._enforce(step, target, bound))
            column = _to_arrow(self._ticks(step, inside), target.nulls, type_)
            table = _replace(table, step.target, encoded_as(column, table.schema.field(step.target).type))
        return table

    def holds(self, table: pa.Table) -> np.ndarray:
        ok = np.ones(table.num_rows, dtype=bool)
        for index, step in enumerate(self.steps):
            bound, bound_nulls = self._bound(index, table)
            target = self._numbers(table, step.target)
            ok &= ~self._outside(step, target.values, bound) | target.nulls | bound_nulls
        return ok

    def to_state(self) -> dict[str, Any]:
        return {
            "steps": [[s.target, s.base, s.constant, s.sign, s.strict, s.gap, s.clip] for s in self.steps],
            "share": self.share,
            "ranges": self.ranges,
            "margins": self.margins,
            "edges": self.edges,
            "types": _types_to_state(self.types),
            "scales": self.scales,
            "unit_ns": self.unit_ns,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.steps = [_Step(*step) for step in state["steps"]]
        self.margins, self.edges = list(state["margins"]), list(state["edges"])
        self.types = _types_from_state(state["types"])
        self.scales, self.unit_ns, self.share = dict(state["scales"]), state["unit_ns"], state["share"]
        self.ranges = dict(state["ranges"])


def _types_to_state(types: Mapping[str, pa.DataType]) -> str:
    """Columns' types as JSON-able text (a schema's)."""
    return schema_to_text(pa.schema(list(types.items())))


def _types_from_state(text: str) -> dict[str, pa.DataType]:
    return {field.name: field.type for field in schema_from_text(text)}


def _as_text(value: Any) -> str | None:
    """A value as a combination holds it: as Arrow writes it as text (a boolean: 'true')."""
    return None if value is None else str(pa.scalar(value).cast(pa.string()))


class FixedCombinations(Rule):
    """The columns learned as one category (``__combination__.<a>.<b>``) of their real combinations
    (as JSON lists of their values as text); a combination the model cannot emit (protected)
    becomes the most frequent one.

    The label (``dataset.label``) among them is learned as it is, the model's condition: the
    others are combined, drawn given it, and a combination the label does not go with becomes
    the label's most frequent one."""

    def __init__(self, spec: FixedCombinationsSpec, where: str):
        super().__init__(spec, where)
        self.types: dict[str, pa.DataType] = {}
        self.common: list[str | None] = []
        self.combinations: list[list[str | None]] = []
        self.allowed: frozenset[str] = frozenset()  # the combinations as :meth:`_keys` writes them
        #: the label among the columns (learned as it is), set before :meth:`fit`
        self.label_column: str | None = None
        #: the label's value (as text) → its most frequent combination of the other columns
        self.by_label: dict[str, list[str | None]] = {}
        #: every row's combinations counted by :meth:`tally` (empty: the fit counts its table's)
        self.tallied: dict[str, int] = {}

    @property
    def columns(self) -> list[str]:
        return list(self.spec.columns)

    @property
    def removed(self) -> list[str]:
        return [name for name in self.columns if name != self.label_column]

    @property
    def needs(self) -> list[str]:
        return self.removed  # the label is drawn given the combination

    @property
    def label_at(self) -> int:
        """Where the label stands in a combination (a rule with the label among its columns)."""
        assert self.label_column is not None, "a combination with the label"
        return self.columns.index(self.label_column)

    @property
    def derived(self) -> str:
        return "__combination__." + ".".join(self.removed)

    def _keys(self, table: pa.Table, columns: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
        """Per row, the index of its combination of ``columns`` (default: all the rule's) among
        the returned JSON texts."""
        codes, sizes, dictionaries = [], [], []
        for name in self.columns if columns is None else columns:
            text = pc.cast(dense(table.column(name)), pa.string())
            encoded = pc.dictionary_encode(text, null_encoding="encode")
            indices = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
            codes.append(indices)
            sizes.append(max(len(encoded.dictionary), 1))
            dictionaries.append(encoded.dictionary.to_pylist())
        key = np.zeros(table.num_rows, dtype=np.int64)
        for indices, size in zip(codes, sizes, strict=True):
            key = key * size + indices
        uniques, inverse = np.unique(key, return_inverse=True)
        texts = []
        for value in uniques.tolist():
            parts = []
            for size, dictionary in zip(reversed(sizes), reversed(dictionaries), strict=True):
                parts.append(dictionary[value % size] if dictionary else None)
                value //= size
            texts.append(json.dumps(parts[::-1]))
        return inverse.reshape(-1), texts

    def fit(self, table: pa.Table, roles: Mapping[str, ColumnRole], min_rows: int) -> None:
        if self.private:
            raise ConfigError(
                f"{self.where}: fixed_combinations is not for train.privacy (its list of real "
                "combinations is no differentially private release)"
            )
        for name in self.columns:
            type_ = value_type(_column(table, name, self.where).type)
            if name in roles and roles[name].unlearned:
                raise DatasetError(f"{self.where}: {name} is {roles[name].role}, not a learned category")
            if pa.types.is_floating(type_) or pa.types.is_nested(type_):
                raise DatasetError(f"{self.where}: {name} is {type_}: combinations are of categories")
            declared = roles.get(name)
            distinct = pc.count_distinct(table.column(name)).as_py()
            if (
                is_numeric(type_)
                and distinct > DISCRETE
                and (declared is None or declared.role != "category")
            ):
                # a number of many values is learned with its tails protected, which a real
                # combination holding a tail value would pass
                raise DatasetError(
                    f"{self.where}: {name} is a number of {distinct} values, learned as one; declare it "
                    f"a category to combine it (dataset.columns: {{{name}: {{type: category}}}})"
                )
            self.types[name] = type_
        if self.tallied:
            texts, counts = list(self.tallied), np.array(list(self.tallied.values()), dtype=np.int64)
        else:
            texts, counts = self._counted(table)
        kept = [text for text, count in zip(texts, counts, strict=True) if count >= min_rows]
        if not kept:
            raise DatasetError(
                f"{self.where}: no combination of {', '.join(self.columns)} is held by {min_rows} rows "
                "(dataset.value_protection.min_rows): there is nothing to learn"
            )
        common = json.loads(texts[int(np.argmax(counts))])
        self._combinations([json.loads(text) for text in kept])
        if self.label_column is not None:
            at = self.label_at
            common = common[:at] + common[at + 1 :]
            self._by_label(texts, counts, min_rows)
        self.common = common

    def _counted(self, table: pa.Table) -> tuple[list[str], np.ndarray]:
        """The combinations ``table``'s rows hold and how many hold each."""
        inverse, texts = self._keys(table)
        return texts, np.bincount(inverse, minlength=len(texts))

    def tally(self, table: pa.Table) -> None:
        texts, counts = self._counted(table)
        for text, count in zip(texts, counts.tolist(), strict=True):
            self.tallied[text] = self.tallied.get(text, 0) + count

    def _by_label(self, texts: list[str], counts: np.ndarray, min_rows: int) -> None:
        """Each label value's most frequent combination that ``min_rows`` rows hold: what a row
        whose drawn combination does not go with its label takes. A label value the model may
        emit (``min_rows`` rows hold it) without one would have no row to take: refused."""
        at = self.label_at
        best: dict[str, tuple[int, list[str | None]]] = {}
        totals: dict[str, int] = {}
        for text, count in zip(texts, counts.tolist(), strict=True):
            parts = json.loads(text)
            label = json.dumps(parts[at])
            totals[label] = totals.get(label, 0) + count
            if count >= min_rows and count > best.get(label, (0, []))[0]:
                best[label] = (count, parts[:at] + parts[at + 1 :])
        if lacking := [label for label, total in totals.items() if total >= min_rows and label not in best]:
            raise DatasetError(
                f"{self.where}: {len(lacking)} value(s) of the label {self.label_column} have no "
                f"combination of {', '.join(self.removed)} that {min_rows} rows hold "
                "(dataset.value_protection.min_rows)"
            )
        self.by_label = {label: parts for label, (_, parts) in best.items()}

    def forward(self, table: pa.Table) -> pa.Table:
        inverse, texts = self._keys(table, self.removed)
        combined = pa.array(texts, pa.string()).take(pa.array(inverse))
        return _spliced(table, self.removed, pa.table({self.derived: combined}))

    def inverse(self, table: pa.Table) -> pa.Table:
        encoded = pc.dictionary_encode(dense(table.column(self.derived)), null_encoding="encode")
        parsed = []
        for text in encoded.dictionary.to_pylist():
            try:
                parts = json.loads(text) if text is not None else None
            except ValueError:  # a protected combination decodes to the rare token
                parts = None
            valid = isinstance(parts, list) and len(parts) == len(self.removed)
            parsed.append(parts if valid else self.common)
        rows = encoded.indices.to_numpy(zero_copy_only=False)
        if self.label_column is not None:
            parsed, rows = self._given_label(table, parsed, rows)
        members = {
            name: pa.array([parts[offset] for parts in parsed], pa.string())
            .cast(self.types[name])
            .take(pa.array(rows))
            for offset, name in enumerate(self.removed)
        }
        return _spliced(table, [self.derived], pa.table(members))

    def _given_label(
        self, table: pa.Table, parsed: list[list[str | None]], rows: np.ndarray
    ) -> tuple[list[list[str | None]], np.ndarray]:
        """The drawn combinations (``parsed``, one per row by ``rows``) per pair of combination and
        label: one the label does not go with (a model conditioned on it rarely draws one) becomes
        the label's most frequent one."""
        at = self.label_at
        text = pc.cast(dense(table.column(self.columns[at])), pa.string())
        labels = pc.dictionary_encode(text, null_encoding="encode")
        codes = labels.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        pairs, inverse = np.unique(
            rows.astype(np.int64) * len(labels.dictionary) + codes, return_inverse=True
        )
        names = labels.dictionary.to_pylist()
        out = []
        for pair in pairs.tolist():
            parts, label = parsed[pair // len(names)], names[pair % len(names)]
            if json.dumps(parts[:at] + [label] + parts[at:]) not in self.allowed:
                parts = self.by_label.get(json.dumps(label), parts)  # an unseen label: counted broken
            out.append(parts)
        return out, inverse.reshape(-1)

    def broken(self, table: pa.Table) -> int:
        return 0  # every real row holds a real combination (those few rows hold are not emitted)

    def _combinations(self, combinations: list[list[str | None]]) -> None:
        """The combinations the output may hold, and their texts, set once: every batch is checked."""
        self.combinations = combinations
        self.allowed = frozenset(json.dumps(parts) for parts in combinations)

    def holds(self, table: pa.Table) -> np.ndarray:
        inverse, texts = self._keys(table)
        return np.array([text in self.allowed for text in texts], dtype=bool)[inverse]

    def roles(self, roles: dict[str, ColumnRole]) -> dict[str, ColumnRole]:
        return {**super().roles(roles), self.derived: ColumnRole("category")}

    @property
    def computed(self) -> list[str]:
        return []  # every combination is a real one

    def complete_conditions(self, conditions: dict[str, Any]) -> dict[str, Any]:
        """Conditions on some of the combined columns with the rest of their one combination (the
        label, learned as it is, is drawn given them and need not be completed)."""
        given = [name for name in self.removed if name in conditions]
        if not given or len(given) == len(self.removed):
            return conditions
        found = {
            tuple(parts[self.columns.index(name)] for name in self.removed)
            for parts in self._matching(conditions)
        }
        if len(found) != 1:
            missing = ", ".join(name for name in self.removed if name not in conditions)
            counted = "no combination" if not found else f"{len(found)} combinations"
            raise ConfigError(
                f"generate.conditions.{given[0]}: {counted} of {', '.join(self.columns)} "
                f"({self.where}) match: give {missing} too"
            )
        completed = dict(conditions)
        for name, text in zip(self.removed, found.pop(), strict=True):
            completed.setdefault(name, pa.scalar(text).cast(self.types[name]).as_py())
        return completed

    def _matching(self, conditions: Mapping[str, Any]) -> list[list[str | None]]:
        """The combinations that hold the values ``conditions`` give of the rule's columns."""
        wanted = {
            self.columns.index(name): _as_text(value)
            for name, value in conditions.items()
            if name in self.columns
        }
        return [parts for parts in self.combinations if all(parts[at] == text for at, text in wanted.items())]

    def labels_for(self, conditions: Mapping[str, Any]) -> set[str | None] | None:
        """The label's values (as text) that go with the combined columns ``conditions`` fix
        (None: any, the rule has no label or they fix none of its columns)."""
        if self.label_column is None or not any(name in conditions for name in self.removed):
            return None
        return {parts[self.label_at] for parts in self._matching(conditions)}

    def to_state(self) -> dict[str, Any]:
        return {
            "types": _types_to_state(self.types),
            "common": self.common,
            "combinations": self.combinations,
            "label": self.label_column,
            "by_label": self.by_label,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.types = _types_from_state(state["types"])
        self.common = state["common"]
        self._combinations(state["combinations"])
        self.label_column = state.get("label")  # none before labels could be combined
        self.by_label = state.get("by_label", {})


# -- formulas ----------------------------------------------------------------------------------------

_OPERATORS: dict[type, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.divide,
    ast.FloorDiv: np.floor_divide,
    ast.Mod: np.mod,
    ast.Pow: np.power,
}
_FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {
    "abs": np.abs,
    "min": np.minimum,
    "max": np.maximum,
    "round": lambda value, digits=0: np.round(value, int(digits)),
}


def _parse(expression: str) -> tuple[ast.Expression, set[str]]:
    """The expression's syntax tree and the columns it uses; anything but arithmetic on columns
    and numbers (attributes, strings, comparisons, other calls) is refused, so nothing runs but
    arithmetic."""
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an expression: {exc.msg}") from None
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id not in _FUNCTIONS:
                names.add(node.id)
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or node.keywords:
                raise ValueError(f"only {', '.join(_FUNCTIONS)} may be called")
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise ValueError(f"{node.value!r}: only numbers may be written in an expression")
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _OPERATORS:
                raise ValueError(f"{type(node.op).__name__}: not an arithmetic operator")
        elif not isinstance(
            node, ast.Expression | ast.UnaryOp | ast.USub | ast.UAdd | ast.Load | ast.operator
        ):
            raise ValueError(f"{type(node).__name__}: only arithmetic on columns and numbers")
    return tree, names


def _evaluate(node: ast.AST, values: Mapping[str, np.ndarray]) -> np.ndarray:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, values)
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, ast.Constant):
        return np.asarray(float(node.value))
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, values)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        return _OPERATORS[type(node.op)](_evaluate(node.left, values), _evaluate(node.right, values))
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    return _FUNCTIONS[node.func.id](*(_evaluate(arg, values) for arg in node.args))


def _decimals(values: np.ndarray) -> int | None:
    """The fewest decimals every value is written with (None: more than 12, as floats are)."""
    for decimals in range(13):
        scaled = values * 10.0**decimals
        if np.all(np.abs(scaled - np.rint(scaled)) <= 1e-9 * np.maximum(1.0, np.abs(scaled)) + 1e-6):
            return decimals
    return None


class Formula(Rule):
    """``column`` computed from the others at sampling, rounded to the real column's decimals."""

    def __init__(self, spec: FormulaSpec, where: str):
        super().__init__(spec, where)
        self.tree, self.inputs = _parse(spec.expression)
        self.decimals: int | None = spec.decimals
        self.type: pa.DataType = pa.float64()
        #: the most decimals a row group's values were written with (:meth:`tally`; None: not
        #: tallied, or one's were more than 12, as floats are)
        self.tallied: list[int | None] = []

    @property
    def columns(self) -> list[str]:
        return [self.spec.column, *sorted(self.inputs)]

    @property
    def writes(self) -> list[str]:
        return [self.spec.column]

    @property
    def removed(self) -> list[str]:
        return [self.spec.column]

    def label(self) -> str:
        return f"formula {self.spec.column} = {self.spec.expression}"

    def _computed(self, table: pa.Table, *, rounded: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(values, nulls)`` of the expression, rounded (``rounded``) to the column's decimals; null
        where an input is or it is not finite."""
        values, nulls = {}, np.zeros(table.num_rows, dtype=bool)
        for name in self.inputs:
            numbers = Numbers.of(table.column(name))
            values[name], nulls = numbers.values.astype(np.float64), nulls | numbers.nulls
        with np.errstate(all="ignore"):
            result = np.broadcast_to(_evaluate(self.tree, values), (table.num_rows,)).astype(np.float64)
            if rounded and self.decimals is not None:
                result = np.round(result, self.decimals)
        nulls = nulls | ~np.isfinite(result)
        return np.where(nulls, 0.0, result), nulls

    def fit(self, table: pa.Table, roles: Mapping[str, ColumnRole], min_rows: int) -> None:
        for name in self.columns:
            if pa.types.is_temporal(_numeric(table, name, self.where)):
                raise DatasetError(f"{self.where}: {name} is a date/time: formulas are of numbers")
            if name in roles and roles[name].unlearned:
                raise DatasetError(f"{self.where}: {name} is {roles[name].role}, not a learned number")
        self.type = value_type(table.column(self.spec.column).type)
        real = Numbers.of(table.column(self.spec.column))
        if self.decimals is None and self.private and not real.exact:
            raise ConfigError(
                f"{self.where}.decimals: give them with train.privacy (not read off the real rows)"
            )
        if self.decimals is None:
            if real.exact:
                self.decimals = 0
            elif self.tallied:
                known = [decimals for decimals in self.tallied if decimals is not None]
                self.decimals = max(known) if len(known) == len(self.tallied) else None
            else:
                self.decimals = self._written(real)

    @staticmethod
    def _written(real: Numbers) -> int | None:
        """The fewest decimals every present value is written with."""
        return _decimals(real.values[~real.nulls].astype(np.float64))

    def tally(self, table: pa.Table) -> None:
        real = Numbers.of(table.column(self.spec.column))
        if self.spec.decimals is None and not real.exact:
            self.tallied.append(self._written(real))

    def _tolerance(self, values: np.ndarray) -> np.ndarray:
        """How far a column may be from the expression: half its last decimal (the real column may
        round halves the other way), and float noise."""
        half = 0.0 if self.decimals is None else 0.5 * 10.0**-self.decimals
        return half * (1 + 1e-6) + 1e-9 * np.maximum(1.0, np.abs(values))

    def forward(self, table: pa.Table) -> pa.Table:
        return table.drop_columns([self.spec.column])

    def inverse(self, table: pa.Table) -> pa.Table:
        values, nulls = self._computed(table)
        column = _to_arrow(values, nulls, self.type)
        return table.append_column(self.spec.column, column)

    def holds(self, table: pa.Table) -> np.ndarray:
        # compared with the exact expression; nothing of the rule changes while it checks: shards
        # running as threads share one model and its rules
        expected, nulls = self._computed(table, rounded=False)
        actual = Numbers.of(table.column(self.spec.column))
        close = np.abs(actual.values.astype(np.float64) - expected) <= self._tolerance(expected)
        return close | (actual.nulls & nulls)

    def to_state(self) -> dict[str, Any]:
        return {"decimals": self.decimals, "type": _types_to_state({self.spec.column: self.type})}

    def restore(self, state: dict[str, Any]) -> None:
        self.decimals, self.type = state["decimals"], _types_from_state(state["type"])[self.spec.column]


class OneOf(Rule):
    """``column`` in ``values``: the model emits real values only, all in the set when the real
    rows are; a protected category (the rare token) becomes the most frequent allowed value, a
    number outside the set the nearest allowed one."""

    def __init__(self, spec: OneOfSpec, where: str):
        super().__init__(spec, where)
        self.type: pa.DataType = pa.string()
        self.fallback: Any = None

    @property
    def columns(self) -> list[str]:
        return [self.spec.column]

    def label(self) -> str:
        shown = ", ".join(map(str, self.spec.values[:5])) + (" …" if len(self.spec.values) > 5 else "")
        return f"one_of {self.spec.column} in [{shown}]"

    def _allowed(self) -> pa.Array:
        try:
            return pa.array(self.spec.values).cast(self.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            raise DatasetError(f"{self.where}.values: not all {self.type} values") from None

    def fit(self, table: pa.Table, roles: Mapping[str, ColumnRole], min_rows: int) -> None:
        self.type = value_type(_column(table, self.spec.column, self.where).type)
        if self.spec.column in roles and roles[self.spec.column].unlearned:
            raise DatasetError(f"{self.where}: {self.spec.column} is {roles[self.spec.column].role}")
        column = dense(table.column(self.spec.column))
        counts = pc.value_counts(column.filter(pc.is_in(column, value_set=self._allowed())))
        if len(counts) and not self.private:
            self.fallback = counts.field("values")[int(np.argmax(counts.field("counts")))].as_py()
        else:
            self.fallback = self._allowed()[0].as_py()

    def inverse(self, table: pa.Table) -> pa.Table:
        name = self.spec.column
        column = dense(table.column(name))
        outside = pa.array(~self.holds(table))
        if not pc.any(outside).as_py():
            return table
        if is_numeric(self.type) and not pa.types.is_temporal(self.type):
            allowed = np.unique(Numbers.of(self._allowed()).values.astype(np.float64))
            values = Numbers.of(column)
            upper = np.clip(np.searchsorted(allowed, values.values), 0, len(allowed) - 1)
            lower = np.clip(upper - 1, 0, len(allowed) - 1)
            near_low = np.abs(values.values - allowed[lower]) <= np.abs(allowed[upper] - values.values)
            nearest = np.where(near_low, allowed[lower], allowed[upper])
            fixed = pc.if_else(outside, _to_arrow(nearest, values.nulls, self.type), column)
        else:
            fixed = pc.if_else(outside, pa.scalar(self.fallback, self.type), column)
        return _replace(table, name, encoded_as(fixed, table.schema.field(name).type))

    def holds(self, table: pa.Table) -> np.ndarray:
        column = dense(table.column(self.spec.column))
        inside = pc.fill_null(pc.is_in(column, value_set=self._allowed()), True)
        return inside.to_numpy(zero_copy_only=False)

    def to_state(self) -> dict[str, Any]:
        return {"type": _types_to_state({self.spec.column: self.type}), "fallback": self.fallback}

    def restore(self, state: dict[str, Any]) -> None:
        self.type, self.fallback = _types_from_state(state["type"])[self.spec.column], state["fallback"]

    def check_state(self) -> dict[str, Any]:
        return {**self.to_state(), "fallback": None}


class Unique(Rule):
    """``column`` unique: made fresh, an identifier of the real one's format (the role ``id``).
    Several ``columns`` unique together: by construction, as one of them is such an identifier
    (declared ``type: id``, or unique by a rule of its own); a combination of learned columns
    alone would need every shard to know every other's rows, and is refused."""

    @property
    def columns(self) -> list[str]:
        return self.spec.names

    def __init__(self, spec: UniqueSpec, where: str):
        super().__init__(spec, where)
        #: per set of columns (all of them, then each alone), a 64-bit hash of every row's values
        #: without a null, a row group at a time (:meth:`tally`; empty: the fit hashes its table)
        self.tallied: dict[tuple[str, ...], list[np.ndarray]] = {}

    def _sets(self) -> list[tuple[str, ...]]:
        return list(dict.fromkeys([tuple(self.columns), *((name,) for name in self.columns)]))

    def tally(self, table: pa.Table) -> None:
        for names in self._sets():
            self.tallied.setdefault(names, []).append(_row_hashes(table, names))

    def _repeats(self, table: pa.Table, names: tuple[str, ...]) -> int:
        """How many of the rows (every row tallied, or ``table``'s) share their ``names`` with
        another row."""
        if not self.tallied:
            return int((~_unrepeated(table, names)).sum())
        _, counts = np.unique(np.concatenate(self.tallied[names]), return_counts=True)
        return int(counts[counts > 1].sum())

    def fit(self, table: pa.Table, roles: Mapping[str, ColumnRole], min_rows: int) -> None:
        for name in self.columns:
            _column(table, name, self.where)
        if repeated := self._repeats(table, tuple(self.columns)):
            raise DatasetError(
                f"{self.where}: {repeated} real row(s) repeat a value of {', '.join(self.columns)}"
            )
        identifiers = [
            name
            for name in self.columns
            if (role := roles.get(name)) is not None
            and role.role == "id"
            and not self._repeats(table, (name,))
        ]
        self.tallied = {}  # a hash per row: not kept past the fit
        if not identifiers:
            name = self.columns[0]
            raise DatasetError(
                f"{self.where}: {name} must be an identifier to be unique (dataset.columns: {{{name}: "
                "{type: id}})"
                if len(self.columns) == 1
                else f"{self.where}: one of {', '.join(self.columns)} must be an identifier whose real "
                "values do not repeat, which makes every combination unique (declare it dataset.columns: "
                "{type: id}); learned columns alone cannot be kept unique across shards"
            )

    def inverse(self, table: pa.Table) -> pa.Table:
        return table  # identifiers are made unique across the whole run by construction

    def restore(self, state: dict[str, Any]) -> None:
        """Nothing is fitted: the identifier's role makes it unique."""

    def holds(self, table: pa.Table) -> np.ndarray:
        """Within ``table`` (across the whole run, fresh identifiers are unique by construction)."""
        return _unrepeated(table, self.columns)


def _unrepeated(table: pa.Table, names: Sequence[str]) -> np.ndarray:
    """Per row of ``table``, whether no other row has its values of ``names``; a row with a null
    among them repeats none, as in SQL."""
    nulls = _any_null(table, names)
    codes = [
        pc.dictionary_encode(dense(table.column(name))).indices.fill_null(0).to_numpy(zero_copy_only=False)
        for name in names
    ]
    keys = np.stack(codes, axis=1).reshape(table.num_rows, len(codes))[~nulls]
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    ok = np.ones(table.num_rows, dtype=bool)
    ok[~nulls] = counts[inverse.reshape(-1)] == 1
    return ok


def _row_hashes(table: pa.Table, names: Sequence[str]) -> np.ndarray:
    """:func:`row_hashes` of the rows without a null among ``names`` (they repeat none, as in SQL)."""
    return row_hashes(table.filter(pa.array(~_any_null(table, names))), names)


def _any_null(table: pa.Table, names: Sequence[str]) -> np.ndarray:
    """Per row of ``table``, whether one of ``names`` is null there."""
    nulls = np.zeros(table.num_rows, dtype=bool)
    for name in names:
        nulls |= dense(table.column(name)).is_null().to_numpy(zero_copy_only=False)
    return nulls


class CustomRule:
    """The base of a rule of the user's (``kind: custom``, ``rule: package.module:Class``).

    A subclass is imported by name and built with the spec's ``options`` as keyword arguments; only
    subclasses of this are built, so a spec cannot make any other importable class run. It has:

    - ``is_valid(table) -> sequence of bool`` (required): per row of ``table`` (a pyarrow table of
      the rule's ``columns``), whether it follows the rule;
    - ``reverse_transform(table) -> table`` (optional): the same columns repaired so that every
      row follows it (rounding prices to cents); without one, rows the rule refuses are drawn
      again, at most ``MAX_DRAWS`` times the rows asked for;
    - ``transform(table) -> table`` (optional, with a reverse transform): the columns as the model
      should learn them instead (any names), which ``reverse_transform`` takes back.
    """

    def is_valid(self, table: pa.Table) -> Sequence[bool]:
        raise NotImplementedError(f"{type(self).__name__}.is_valid")


class Custom(Rule):
    """A user's rule: a :class:`CustomRule` subclass, imported by name (nothing is unpickled)."""

    def __init__(self, spec: CustomSpec, where: str):
        super().__init__(spec, where)
        module, _, name = spec.rule.partition(":")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"{where}.rule: cannot import {spec.rule} ({exc})") from None
        if not (isinstance(cls, type) and issubclass(cls, CustomRule)):
            raise ConfigError(f"{where}.rule: {spec.rule} is not a genai_pipeline.constraints.CustomRule")
        try:
            self.user = cls(**spec.options)
        except Exception as exc:  # the user's constructor: anything it raises is a bad option
            raise ConfigError(f"{where}.options: {spec.rule} refused them ({exc})") from None
        self.repairs = callable(getattr(self.user, "reverse_transform", None))
        self.derived: list[str] = []

    @property
    def columns(self) -> list[str]:
        return list(self.spec.columns)

    @property
    def writes(self) -> list[str]:
        return self.columns if self.repairs else []  # without a repair it only checks

    @property
    def computed(self) -> list[str]:
        return self.writes  # what the user's repair makes of them

    @property
    def removed(self) -> list[str]:
        return [name for name in self.columns if name not in self.derived] if self.derived else []

    def label(self) -> str:
        return f"custom {self.spec.rule}({', '.join(self.columns)})"

    def _call(self, method: str, table: pa.Table) -> Any:
        try:
            return getattr(self.user, method)(table)
        except Exception as exc:  # the user's code: name it rather than crash somewhere inside
            raise DatasetError(
                f"{self.where}: {self.spec.rule}.{method} failed ({type(exc).__name__}: {exc})"
            ) from None

    def fit(self, table: pa.Table, roles: Mapping[str, ColumnRole], min_rows: int) -> None:
        for name in self.columns:
            _column(table, name, self.where)
        if callable(getattr(self.user, "transform", None)) and self.repairs:
            part = self._call("transform", table.select(self.columns))
            self.derived = list(part.column_names)

    def forward(self, table: pa.Table) -> pa.Table:
        if not self.derived:
            return table
        return _spliced(table, self.columns, self._call("transform", table.select(self.columns)))

    def inverse(self, table: pa.Table) -> pa.Table:
        if not self.repairs:
            return table
        names = self.derived or self.columns
        part = self._call("reverse_transform", table.select(names))
        return _spliced(table, names, part.select(self.columns))

    def holds(self, table: pa.Table) -> np.ndarray:
        valid = np.asarray(self._call("is_valid", table.select(self.columns)), dtype=bool).reshape(-1)
        if len(valid) != table.num_rows:
            raise DatasetError(
                f"{self.where}: {self.spec.rule}.is_valid gave {len(valid)} values for {table.num_rows} rows"
            )
        return valid

    def to_state(self) -> dict[str, Any]:
        return {"derived": self.derived}

    def restore(self, state: dict[str, Any]) -> None:
        self.derived = list(state["derived"])


RULES: dict[str, type[Rule]] = {
    "inequality": Bounds,
    "range": Bounds,
    "positive": Bounds,
    "fixed_combinations": FixedCombinations,
    "formula": Formula,
    "one_of": OneOf,
    "unique": Unique,
    "custom": Custom,
}


class Constraints:
    """A job's rules, fitted on the real rows, in the order they apply (see the module's doc)."""

    def __init__(self, specs: Sequence[Any] = (), where: str = "generate.constraints"):
        self.specs = list(specs)
        self.rules = [RULES[spec.kind](spec, f"{where}.{index}") for index, spec in enumerate(self.specs)]
        self.order: list[Rule] = []
        self.schema: pa.Schema | None = None

    def __bool__(self) -> bool:
        return bool(self.rules)

    def _ordered(self) -> list[Rule]:
        """The rules in inverse order. A column is learned one way, so at most one rule rewrites
        it; rules adjusting it in place (a clip, a repair) come after that one, in the order given;
        a rule reading it comes after every rule writing it. Two rules rewriting one column, or
        rules waiting on each other, are refused naming them."""
        removers: dict[str, Rule] = {}
        for rule in self.rules:
            for name in rule.removed:
                if name in removers:
                    other = removers[name]
                    raise ConfigError(
                        f"{rule.where}: {name} is already learned another way by {other.where} "
                        f"({other.label()}): a column is rewritten by one rule"
                    )
                removers[name] = rule

        def first(rule: Rule, other: Rule, name: str) -> bool:
            """Whether ``other``, which writes ``name``, goes before ``rule``."""
            if name in rule.reads:
                return True
            if name not in rule.writes or removers.get(name) is rule:
                return False
            return removers.get(name) is other or self.rules.index(other) < self.rules.index(rule)

        before = {
            rule: [
                other
                for other in self.rules
                if other is not rule and any(first(rule, other, name) for name in other.writes)
            ]
            for rule in self.rules
        }
        order: list[Rule] = []
        pending = list(self.rules)
        while pending:
            ready = [rule for rule in pending if all(other in order for other in before[rule])]
            if not ready:
                raise ConfigError(
                    f"generate.constraints: {', '.join(rule.where for rule in pending)} each wait for "
                    "another's columns: no order applies them"
                )
            order += ready
            pending = [rule for rule in pending if rule not in ready]
        return order

    def fit(
        self,
        table: pa.Table,
        roles: Mapping[str, ColumnRole],
        min_rows: int,
        label: str | None = None,
        *,
        private: bool = False,
        every: Callable[[], Iterable[pa.Table]] | None = None,
    ) -> None:
        """Fit every rule on the real ``table`` and check that its rows follow them: a rule the
        data breaks fails naming it and how many rows break it (never which: they are real).
        ``private``: for a model trained with differential privacy (see :attr:`Rule.private`).
        ``every``: where ``table`` is a sample of a table read a row group at a time
        (``train.in_memory_rows``), those row groups, read twice: once for what the rules must
        know of every row (:meth:`Rule.tally`), once to check every row."""
        for rule in self.rules:
            rule.private = private
            if isinstance(rule, FixedCombinations) and label in rule.columns:
                rule.label_column = label
        for part in every() if every is not None else ():
            for rule in self.rules:
                rule.tally(part)
        for rule in self.rules:
            rule.fit(table, roles, min_rows)
            if label is not None and label in rule.removed:
                raise DatasetError(
                    f"{rule.where}: {label} is the label (dataset.label): it is learned as it is"
                )
        self.order = self._ordered()
        broken, rows = dict.fromkeys(self.rules, 0), 0
        for part in every() if every is not None else (table,):
            rows += part.num_rows
            for rule in self.rules:
                rule.check_rows(part)
                broken[rule] += rule.broken(part)
        for rule, count in broken.items():
            if count:
                raise DatasetError(f"{rule.where} ({rule.label()}): {count} of the {rows} real rows break it")
        self.schema = table.schema

    def forward(self, table: pa.Table) -> pa.Table:
        """The real rows as the model learns them."""
        for rule in reversed(self.order):
            table = rule.forward(table)
        return table

    def roles(self, roles: Mapping[str, ColumnRole]) -> dict[str, ColumnRole]:
        """The roles of the model's table."""
        out = dict(roles)
        for rule in self.order:
            out = rule.roles(out)
        return out

    def inverse(self, table: pa.Table) -> pa.Table:
        """Rows the model drew, back in the user's columns and types, following every rule."""
        for rule in self.order:
            table = rule.inverse(table)
        assert self.schema is not None, "constraints are fitted before they are inverted"
        columns = []
        for field in self.schema:
            column = table.column(field.name)
            if column.type != field.type:
                column = encoded_as(dense(column).cast(value_type(field.type)), field.type)
            columns.append(column)
        return pa.table(columns, schema=self.schema)

    def fixed(self, table: pa.Table, conditions: Mapping[str, Any]) -> pa.Table:
        """``table`` with the conditioned columns exactly as asked (a float drawn back from its
        distance to another may be a rounding off)."""
        if not conditions:
            return table
        assert self.schema is not None, "constraints are fitted before they fix conditions"
        row = _one_row(conditions, self.schema)
        everywhere = pa.array(np.zeros(table.num_rows, dtype=np.int64))
        for name in row.column_names:
            index = table.schema.get_field_index(name)
            field = table.schema.field(index)
            table = table.set_column(
                index, field, encoded_as(row.column(name).chunk(0).take(everywhere), field.type)
            )
        return table

    def violations(self, table: pa.Table) -> dict[str, int]:
        """Per rule (its :meth:`Rule.label`), how many of ``table``'s rows break it."""
        return {rule.label(): int((~rule.holds(table)).sum()) for rule in self.rules}

    @property
    def computed(self) -> set[str]:
        """The columns a rule computes (a formula's) or repairs (a custom rule's): their values may
        pass the real column's range, the rule saying what is valid."""
        return {name for rule in self.rules for name in rule.computed}

    @property
    def formulas(self) -> set[str]:
        """The columns computed by a formula from other published columns: they tell nothing the
        others do not, so they are not compared with rare real values (a repaired one is)."""
        return {rule.spec.column for rule in self.rules if isinstance(rule, Formula)}

    @property
    def rejecting(self) -> list[Rule]:
        """Rules enforced by drawing again (a custom rule without a reverse transform)."""
        return [rule for rule in self.rules if isinstance(rule, Custom) and not rule.repairs]

    def accepted(self, table: pa.Table, rules: Sequence[Rule] | None = None) -> np.ndarray:
        """Per row, whether every rejecting rule (or every one of ``rules``) takes it."""
        ok = np.ones(table.num_rows, dtype=bool)
        for rule in self.rejecting if rules is None else rules:
            ok &= rule.holds(table)
        return ok

    def label_mask(self, conditions: Mapping[str, Any], values: Sequence[Any]) -> np.ndarray | None:
        """Per label value (``values``: the model's, in its order), whether a row under
        ``conditions`` may take it: a combination with the label fixed by the conditions leaves
        only the labels it goes with (None: any)."""
        mask, texts = None, [_as_text(value) for value in values]
        for rule in self.rules:
            if isinstance(rule, FixedCombinations) and (allowed := rule.labels_for(conditions)) is not None:
                ok = np.array([text in allowed for text in texts], dtype=bool)
                mask = ok if mask is None else mask & ok
        return mask

    def model_conditions(self, conditions: Mapping[str, Any]) -> dict[str, Any]:
        """Conditions on the user's columns as conditions on the model's: a rewritten column is
        conditioned through what it is learned as, which needs the columns it is drawn from (a
        ``ship_date`` with its ``order_ts``); a city of a fixed combination brings its country."""
        if not self.rules or not conditions:
            return dict(conditions)
        assert self.schema is not None, "constraints are fitted before conditions go through them"
        completed = dict(conditions)
        for rule in self.order:
            completed = rule.complete_conditions(completed)
        row = _one_row(completed, self.schema)
        for rule in self.rules:
            present = all(name in completed for name in rule.needs)
            if not present and (touched := [name for name in rule.removed if name in completed]):
                missing = ", ".join(name for name in rule.needs if name not in completed)
                raise ConfigError(
                    f"generate.conditions.{touched[0]}: {rule.where} ({rule.label()}) draws it from "
                    f"other columns: give {missing} too"
                )
            if all(name in completed for name in rule.columns) and not rule.holds(row)[0]:
                raise ConfigError(f"generate.conditions: the values break {rule.where} ({rule.label()})")
        for rule in reversed(self.order):
            if all(name in completed for name in rule.needs):
                row = rule.forward(row)
        return {name: row.column(name)[0].as_py() for name in row.column_names}

    def to_state(self) -> dict[str, Any]:
        return {
            "schema": None if self.schema is None else schema_to_text(self.schema),
            "rules": [
                {"spec": spec.model_dump(mode="json"), "state": rule.to_state()}
                for spec, rule in zip(self.specs, self.rules, strict=True)
            ],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> Constraints:
        """The fitted rules back (none for a model saved before constraints)."""
        if not state or not state["rules"]:
            return cls()
        adapter: Any = _SPECS
        constraints = cls([adapter.validate_python(item["spec"]) for item in state["rules"]])
        for rule, item in zip(constraints.rules, state["rules"], strict=True):
            rule.restore(item["state"])
        constraints.order = constraints._ordered()
        constraints.schema = schema_from_text(state["schema"])
        return constraints

    def checks(self) -> list[dict[str, Any]]:
        """What the output's expectations need of each rule
        (:mod:`genai_pipeline.quality.constraint_check`)."""
        return [
            {
                "spec": spec.model_dump(mode="json"),
                "state": rule.check_state(),
                "label": rule.label(),
                "columns": rule.columns,
            }
            for spec, rule in zip(self.specs, self.rules, strict=True)
        ]


def _one_row(values: Mapping[str, Any], schema: pa.Schema) -> pa.Table:
    """Condition values as a one-row table of the user's types."""
    columns = {}
    for name, value in values.items():
        if name not in schema.names:
            raise ConfigError(
                f"generate.conditions.{name}: no such column (columns: {', '.join(schema.names)})"
            )
        type_ = value_type(schema.field(name).type)
        try:
            columns[name] = pa.array([value]).cast(type_)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            raise ConfigError(f"generate.conditions.{name}: {value!r} cannot be read as {type_}") from None
    return pa.table(columns)


def rule_of(check: Mapping[str, Any]) -> Rule:
    """A rule back from one of :meth:`Constraints.checks` (what an expectation holds)."""
    spec = _SPECS.validate_python(check["spec"])
    rule = RULES[spec.kind](spec, "generate.constraints")
    if check["state"]:
        rule.restore(check["state"])
    return rule


def identifiers(specs: Sequence[Any]) -> list[str]:
    """The columns ``unique`` rules of one column make identifiers (role ``id``)."""
    return [spec.column for spec in specs if isinstance(spec, UniqueSpec) and spec.column is not None]


def _specs() -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(ConstraintSpec)


_SPECS = _specs()
