"""What each column of a table is: data to learn, or an identifier or personal data to make fresh.

A column is *learned* (the model reproduces its distribution) unless it identifies rows or people:

- **id**: identifiers, generated fresh at sampling time (same format, unique where the real column
  was, never a real value). Declared (``dataset.columns: {customer_id: {type: id}}``) or detected: a
  string or integer column named like an identifier (``id``, ``user_id``, ``OrderID``, ``uuid``…)
  whose values are mostly distinct (a customer id repeated in an orders table counts), or a string
  column without spaces whose values are (nearly) all distinct.
- **pii**: personal data (e-mails, phones, names, addresses, IBANs…), filled with fresh values of the
  same kind and locale. Declared with its ``kind``, or detected by name and value pattern
  (:func:`genai_pipeline.privacy.fresh.detect_pii`).
- **text**: long, mostly distinct strings with spaces, written by a language model trained on the
  column given the row's other columns (:mod:`genai_pipeline.models.text`), which publishes no run
  of words fewer than ``min_rows`` training texts hold.

Declarations always win; ``category`` and ``numeric`` only change how a learned column is encoded.
The label column is always learned. Roles are decided once, at ingest, on the training rows, and
travel with the data (:class:`~genai_pipeline.datasets.base.TabularData`), so the encoder, the
suite and the metrics agree on them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from genai_pipeline.columns import dense, is_categorical, is_numeric
from genai_pipeline.errors import DatasetError
from genai_pipeline.privacy.fresh import PII_KINDS, detect_pii, infer_locale

#: column names that announce an identifier: ``id``, ``user_id``, ``order-key``, ``uuid``, ``id card``…
ID_WORD = re.compile(r"(^|[_\-\s])(id|uuid|guid|key)$|^(id|uuid|guid)([_\-\s]|$)", re.IGNORECASE)
#: … or in camel case: ``OrderID``, ``userId``, ``ProductKey`` (not ``valid`` or ``monkey``)
ID_CAMEL = re.compile(r"[a-z0-9](Id|ID|Key|UUID)$")
#: a column named like an identifier is one when at least this share of its values are distinct
#: (an orders table's ``customer_id``: 7,355 customers in 20,000 rows, 0.37)
NAMED_ID_DISTINCT = 0.2
#: an unnamed string column is an identifier when this share of its values are distinct …
UNNAMED_ID_DISTINCT = 0.95
#: … and it has at least this many values (a handful of distinct strings is a small category)
MIN_ID_VALUES = 20
#: text: this share of distinct values, with spaces in most, and at least this mean length
TEXT_DISTINCT, TEXT_MEAN_CHARS = 0.5, 20
#: values looked at when judging strings (spaces, lengths): a sample is enough
_SAMPLE = 2_000


@dataclass(frozen=True)
class ColumnRole:
    """A column that is not simply learned: its role, a PII kind and locale, and where it came from."""

    role: str  # id | pii | text | category | numeric
    kind: str | None = None
    locale: str | None = None
    declared: bool = False

    @property
    def fresh(self) -> bool:
        """Generated fresh at sampling time rather than learned."""
        return self.role in ("id", "pii")

    @property
    def unlearned(self) -> bool:
        """Not learned value by value: made fresh, or text (written by the table's text model)."""
        return self.fresh or self.role == "text"

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "kind": self.kind, "locale": self.locale, "declared": self.declared}


Roles = Mapping[str, ColumnRole]


def check_pii_kind(kind: str) -> str:
    """``kind`` must be a kind of personal data fresh values can be made of."""
    if kind not in PII_KINDS:
        raise ValueError(f"kind: {kind!r} is not a kind of personal data (known: {', '.join(PII_KINDS)})")
    return kind


def check_locale(locale: str) -> str:
    """``locale`` must be one Faker ships (its providers are in the wheel: nothing is downloaded)."""
    from faker.config import AVAILABLE_LOCALES

    if locale not in AVAILABLE_LOCALES:
        raise ValueError(f"locale: {locale!r} is not a Faker locale (e.g. en_US, de_DE, fr_FR)")
    return locale


def named_like_id(name: str) -> bool:
    """Whether a column's name announces an identifier."""
    return ID_WORD.search(name) is not None or ID_CAMEL.search(name) is not None


def _strings(column: pa.Array) -> list[str]:
    present = column.drop_null()
    step = max(1, len(present) // _SAMPLE)
    return [str(value) for value in present[::step].to_pylist()[:_SAMPLE]]


def _detected(name: str, column: pa.Array) -> ColumnRole | None:
    """The role detection gives a column, or None (learned as it is)."""
    type_ = column.type
    integer, string = pa.types.is_integer(type_), is_categorical(type_) and not pa.types.is_boolean(type_)
    present = len(column) - column.null_count
    if not (integer or string) or present == 0:
        return None
    if string and (kind := detect_pii(name, column)) is not None:
        return ColumnRole("pii", kind, infer_locale(kind, column))
    distinct = pc.count_distinct(column).as_py() / present
    if named_like_id(name) and distinct >= NAMED_ID_DISTINCT and present >= MIN_ID_VALUES:
        return ColumnRole("id")
    if not string or present < MIN_ID_VALUES:
        return None
    sample = _strings(column)
    spaced = sum(" " in value.strip() for value in sample) / len(sample)
    if distinct >= TEXT_DISTINCT and spaced >= 0.5 and sum(map(len, sample)) / len(sample) >= TEXT_MEAN_CHARS:
        return ColumnRole("text")
    if distinct >= UNNAMED_ID_DISTINCT and spaced == 0:
        return ColumnRole("id")
    return None


def column_roles(
    table: pa.Table, declared: Mapping[str, Any], label: str | None, *, where: str = "dataset.columns"
) -> dict[str, ColumnRole]:
    """The roles of a table's columns that are not simply learned: declared ones (``dataset.columns``,
    or ``where``, each a :class:`~genai_pipeline.config.ColumnSpec`), then detected ones. Columns
    declared but not in the table fail naming them; a PII column declared without kind or locale
    gets detected ones."""
    missing = sorted(set(declared) - set(table.column_names))
    if missing:
        raise DatasetError(f"{where}.{missing[0]}: no such column (columns: {', '.join(table.column_names)})")
    roles: dict[str, ColumnRole] = {}
    for name in table.column_names:
        column = dense(table.column(name))
        spec = declared.get(name)
        if spec is not None:
            roles[name] = _declared(name, column, spec, f"{where}.{name}")
        elif name != label and (role := _detected(name, column)) is not None:
            roles[name] = role
    return roles


def _declared(name: str, column: pa.Array, spec: Any, field: str) -> ColumnRole:
    """A declared column's role (``field``: where it is declared), checked against its values
    where the role needs a type."""
    type_ = column.type
    if spec.type == "numeric" and not is_numeric(type_):
        raise DatasetError(f"{field}: type numeric, but the column holds {type_}")
    if spec.type == "pii":
        if not is_categorical(type_) or pa.types.is_boolean(type_):
            raise DatasetError(f"{field}: type pii takes a text column, not {type_}")
        kind = spec.kind or detect_pii(name, column)
        if kind is None:
            raise DatasetError(
                f"{field}: its kind of personal data could not be told from its name or "
                "values: declare it (kind: email, phone, name, …)"
            )
        return ColumnRole("pii", kind, spec.locale or infer_locale(kind, column), declared=True)
    if spec.type == "id" and not (pa.types.is_integer(type_) or is_categorical(type_)):
        raise DatasetError(f"{field}: type id takes a text or integer column, not {type_}")
    return ColumnRole(spec.type, declared=True)
