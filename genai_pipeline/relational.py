"""Several tables joined by keys: the schema of a relational dataset and the key checks at ingest.

A relational dataset is a set of named tables, each with an optional primary key and foreign keys
to other tables. The schema is checked when it is loaded, before any data is read (:class:`Relations`):
every reference names a declared table that has a primary key, no table references itself, the
references form no cycle, and each table has at most one *context* parent — the one whose rows a
child is generated per row of (MOSTLY AI's context foreign key; the others are matched, as its
engine matches non-context keys). The tables are then ordered parents first, the order in which
they are checked, synthesized and published.

The keys are checked against the data at ingest (:func:`check_keys`): the declared columns exist,
a primary key is unique and never null, a foreign key has the type of the key it references, and
a child row whose foreign key points at no parent row (an orphan) fails the job, or with
``on_orphans: drop`` is left out together with the rows that depend on it. Errors name the table
and column and count rows, never quote a value: a key is real data, and errors reach logs.

How a column is treated, where detection would guess wrong (:class:`ColumnSpec`), is declared here
too: in a table's ``columns``, or for a single table in ``dataset.columns``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from genai_pipeline.columns import dense
from genai_pipeline.constraints import ConstraintSpec
from genai_pipeline.errors import ConfigError, DatasetError
from genai_pipeline.masking import refuse_url_credentials
from genai_pipeline.strict import StrictModel

#: a table's name becomes a path (``data/<table>/…``) and a Prefect task name: a plain identifier
TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
#: what a column may be renamed to (``rename``): a plain identifier, as rules and formulas name it,
#: starting with a letter (``__…`` names are the models' own columns: ``__constant__``, ``__gap__``)
COLUMN_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


#: what a column is, as a job may declare it (``dataset.columns``, or a table's ``columns``):
#: identifiers and personal data are generated fresh, text is written by a language model trained
#: on it (``models.text``), category and numeric override how a column is encoded, and datetime
#: reads a column of dates written as text as dates
ColumnType = Literal["id", "pii", "text", "category", "numeric", "datetime"]
#: the strptime directives of a time of day: a format without them reads dates
_TIME_OF_DAY = ("%H", "%I", "%M", "%S", "%f", "%p", "%T", "%R", "%c")


class ColumnSpec(StrictModel):
    """How one column is treated, declared where detection would guess wrong or not at all."""

    type: ColumnType | None = Field(
        default=None,
        description="id: generated fresh, same format, never a real value; pii: fresh personal data of "
        "its kind; text: written by a language model trained on it; category/numeric: how it is encoded; "
        "datetime: dates or times written as text, read (and published) as dates or timestamps",
    )
    format: str | None = Field(
        default=None,
        min_length=2,
        max_length=64,
        description="datetime: a strptime format, e.g. '%d/%m/%Y' (default: ISO 8601)",
    )
    kind: str | None = Field(
        default=None, description="pii: email, phone, first_name, last_name, name, … (default: detected)"
    )
    locale: str | None = Field(
        default=None, description="pii: the Faker locale of fresh values, e.g. de_DE (default: detected)"
    )
    skip: bool = Field(
        default=False,
        description="left out of the job: not learned, not checked, not published (a column the "
        "warehouse has and the synthetic data should not)",
    )
    rename: str | None = Field(
        default=None,
        pattern=COLUMN_NAME.pattern,
        description="the name the job gives the column (its label, rules, conditions and report "
        "use it); published under its own name again unless export.column_names is renamed",
    )

    @model_validator(mode="after")
    def _kind_and_locale(self) -> ColumnSpec:
        from genai_pipeline.privacy.roles import check_locale, check_pii_kind

        if self.skip and (self.type, self.kind, self.locale, self.rename) != (None, None, None, None):
            raise ValueError("skip: true takes no type, kind, locale or rename: the column is left out")
        if not self.skip and self.type is None and self.rename is None:
            raise ValueError(
                "type: id, pii, text, category, numeric or datetime, rename: a name, or skip: true "
                "to leave it out"
            )
        if self.format is not None and (self.type != "datetime" or "%" not in self.format):
            raise ValueError("format is a strptime format ('%d/%m/%Y') for type: datetime")
        if (self.kind is not None or self.locale is not None) and self.type != "pii":
            raise ValueError("kind and locale are for type: pii")
        if self.kind is not None:
            check_pii_kind(self.kind)
        if self.locale is not None:
            check_locale(self.locale)
        return self


class ForeignKey(StrictModel):
    """``column`` of this table holds the primary key of a row of table ``references``."""

    column: str = Field(min_length=1)
    references: str = Field(min_length=1)
    context: bool | None = Field(
        default=None,
        description="generate this table's rows per row of the referenced table (default: the first "
        "foreign key); at most one per table",
    )


class TableSpec(StrictModel):
    """One table of a relational dataset: where it lives and how it joins the others."""

    uri: str = Field(min_length=1, description="local path or s3://bucket/key")
    primary_key: str | None = Field(default=None, min_length=1)
    foreign_keys: list[ForeignKey] = Field(default_factory=list)
    order_by: str | None = Field(
        default=None, min_length=1, description="the order of a parent's children (a time or a counter)"
    )
    entity: str | None = Field(
        default=None,
        min_length=1,
        description="for a table without a parent table: the column naming whose sequence each row is "
        "(time series per entity); the entity is then a parent of its own, made fresh",
    )
    columns: dict[str, ColumnSpec] = Field(
        default_factory=dict,
        description="per column, its type (id, pii, text, category, numeric), as dataset.columns for "
        "one table; the primary key is an id",
    )
    constraints: list[ConstraintSpec] = Field(
        default_factory=list,
        max_length=100,
        description="rules every row of this table follows, as generate.constraints for one table, on "
        "its own columns (not its keys; order_by and entity are read, never rewritten)",
    )
    on_orphans: Literal["fail", "drop"] = Field(
        default="fail",
        description="a row whose foreign key points at no parent row: fail the job, or leave the row "
        "(and the rows that depend on it) out",
    )

    _no_credentials = model_validator(mode="before")(refuse_url_credentials)

    @model_validator(mode="after")
    def _keys_are_not_declared(self) -> TableSpec:
        """A key's values are made from the keys (fresh, or the parent's): not a column to declare."""
        keys = [key.column for key in self.foreign_keys] + [self.primary_key]
        if found := [column for column in self.columns if column in keys]:
            raise ValueError(f"columns.{found[0]}: a key column; keys are always made fresh")
        ordering = (self.order_by, self.entity)
        if skipped := [c for c, spec in self.columns.items() if spec.skip and c in ordering]:
            raise ValueError(f"columns.{skipped[0]}: order_by and entity cannot be skipped")
        if moved := [c for c in renamed(self.columns) if c in ordering]:
            raise ValueError(f"columns.{moved[0]}: order_by and entity are named as the data names them")
        check_renames(self.columns)
        return self

    @field_validator("foreign_keys")
    @classmethod
    def _one_key_per_column(cls, keys: list[ForeignKey]) -> list[ForeignKey]:
        columns = [key.column for key in keys]
        if len(set(columns)) < len(columns):
            raise ValueError("a column is declared as a foreign key twice")
        if sum(key.context is True for key in keys) > 1:
            raise ValueError("at most one foreign key is the context (context: true)")
        return keys


def declared(columns: Mapping[str, ColumnSpec]) -> dict[str, ColumnSpec]:
    """The columns declared a role, by the names the job gives them: those left out (``skip``) are
    not read at all, dates written as text are read as dates (:func:`as_declared`), a type rather
    than a role, and a column only renamed keeps the role detection gives it."""
    return {
        spec.rename or name: spec
        for name, spec in columns.items()
        if not spec.skip and spec.type not in (None, "datetime")
    }


def renamed(columns: Mapping[str, ColumnSpec]) -> dict[str, str]:
    """Each renamed column's own name → the name the job gives it."""
    return {name: spec.rename for name, spec in columns.items() if spec.rename is not None}


def check_renames(columns: Mapping[str, ColumnSpec]) -> None:
    """Two columns renamed alike, or a column renamed to a name another declared column keeps,
    would be one column twice: refused naming the second (a clash with an undeclared column is
    found when the data is read, :func:`as_declared`)."""
    taken = {name for name, spec in columns.items() if spec.rename is None and not spec.skip}
    for name, new in renamed(columns).items():
        if new in taken:
            raise ValueError(f"columns.{name}.rename: {new!r} names another column already")
        taken.add(new)


def with_names(table: pa.Table, names: Mapping[str, str]) -> pa.Table:
    """``table`` with each column ``names`` holds renamed to its value there (the data's name →
    the job's, or the job's → the published one)."""
    return table.rename_columns([names.get(name, name) for name in table.column_names])


def as_declared(table: pa.Table, columns: Mapping[str, ColumnSpec], where: str) -> pa.Table:
    """``table`` as ``columns`` (declared at ``where``) say: without the columns left out, and
    with the columns of dates written as text read as dates (:func:`read_dates`). A column that is
    not there fails naming it, as a declared column that is not there does."""
    skipped = [name for name, spec in columns.items() if spec.skip]
    if missing := [name for name in skipped if name not in table.column_names]:
        raise DatasetError(
            f"{where}.{missing[0]}: no such column to skip (columns: {', '.join(table.column_names)})"
        )
    table = table.drop_columns(skipped)
    for name, spec in columns.items():
        if spec.type != "datetime":
            continue
        if name not in table.column_names:
            raise DatasetError(f"{where}.{name}: no such column (columns: {', '.join(table.column_names)})")
        index = table.schema.get_field_index(name)
        table = table.set_column(index, name, read_dates(table.column(name), spec.format, f"{where}.{name}"))
    return _renamed(table, renamed(columns), where)


def _renamed(table: pa.Table, names: Mapping[str, str], where: str) -> pa.Table:
    """``table`` with its columns renamed as the job says; a column to rename that is not there,
    or a new name that a column of the data already has, fails naming it."""
    present = table.column_names
    if missing := [name for name in names if name not in present]:
        raise DatasetError(f"{where}.{missing[0]}: no such column to rename (columns: {', '.join(present)})")
    if clash := [(name, new) for name, new in names.items() if new in present and new not in names]:
        name, new = clash[0]
        raise DatasetError(f"{where}.{name}.rename: the data has a column {new!r} already")
    return with_names(table, names)


def read_dates(column: pa.ChunkedArray, format_: str | None, where: str) -> pa.Array:
    """A column of dates or times written as text, read as dates (a format without a time of day,
    or ISO dates of ten characters) or as timestamps (µs); a column already of dates as it is. Text
    that does not read fails naming the column and counting the values (never showing them)."""
    array = column.combine_chunks()
    array = array.cast(array.type.value_type) if pa.types.is_dictionary(array.type) else array
    if pa.types.is_temporal(array.type):
        return array
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        raise DatasetError(f"{where}: {array.type} values are not dates written as text")
    text = pc.utf8_trim_whitespace(array)
    text = pc.if_else(pc.equal(text, ""), pa.scalar(None, text.type), text)
    if format_ is not None:
        parsed = pc.strptime(text, format=format_, unit="us", error_is_null=True)
        dated = not any(directive in format_ for directive in _TIME_OF_DAY)
    else:
        try:
            parsed = pc.cast(text, pa.timestamp("us"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DatasetError(
                f"{where}: values are not ISO 8601 dates or times (2024-01-31, 2024-01-31 09:30:00): "
                "give the column's format"
            ) from None
        lengths = pc.utf8_length(text.drop_null())
        dated = len(lengths) > 0 and pc.all(pc.equal(lengths, 10)).as_py()
    if failed := parsed.null_count - text.null_count:
        raise DatasetError(f"{where}: {failed} value(s) do not read as {format_!r}")
    return parsed.cast(pa.date32()) if dated else parsed


@dataclass(frozen=True)
class Relations:
    """The checked schema: the tables parents first, and each table's context foreign key."""

    tables: dict[str, TableSpec]
    #: table names, every parent before its children
    order: list[str]
    #: table → its context foreign key (None: generated on its own, as a single table is)
    context: dict[str, ForeignKey | None] = field(default_factory=dict)

    @classmethod
    def of(cls, tables: Mapping[str, TableSpec], where: str = "dataset.tables") -> Relations:
        """Check the schema; raise :class:`ConfigError` naming ``where.<table>…`` otherwise."""
        if not tables:
            raise ConfigError(f"{where}: no table declared")
        for name in tables:
            if not TABLE_NAME.fullmatch(name):
                raise ConfigError(
                    f"{where}.{name!r}: a table name is a letter, then letters, digits or _ (64 at most)"
                )
        context: dict[str, ForeignKey | None] = {}
        for name, spec in tables.items():
            for index, key in enumerate(spec.foreign_keys):
                field_name = f"{where}.{name}.foreign_keys[{index}]"
                if key.references == name:
                    raise ConfigError(
                        f"{field_name}: {name}.{key.column} references its own table, which is not "
                        "supported (a hierarchy within one table)"
                    )
                if key.references not in tables:
                    raise ConfigError(
                        f"{field_name}.references: no table {key.references!r} "
                        f"(tables: {', '.join(sorted(tables))})"
                    )
                if tables[key.references].primary_key is None:
                    raise ConfigError(
                        f"{field_name}: {key.references} has no primary_key for "
                        f"{name}.{key.column} to reference"
                    )
            chosen = [key for key in spec.foreign_keys if key.context is True]
            # with an entity column, the entity is the context: other keys are matched by default
            fallback = [key for key in spec.foreign_keys if key.context is None and spec.entity is None]
            context[name] = (chosen or fallback or [None])[0]
            if spec.entity is not None and context[name] is not None:
                raise ConfigError(
                    f"{where}.{name}.entity: {name} is generated per row of {context[name].references} "
                    "already: a table's sequences follow either a parent table or an entity column"
                )
            if spec.entity is not None and entity_table(name) in tables:
                raise ConfigError(f"{where}.{name}.entity: the table name {entity_table(name)} is taken")
        return cls(dict(tables), _parents_first(tables, where), context)

    def with_entities(self, data: Mapping[str, pa.Table]) -> tuple[Relations, dict[str, pa.Table]]:
        """The schema and tables with each ``entity`` made a parent table of its own
        (:func:`entity_table`: the distinct entity keys, in order of first appearance) and the
        table's context key: time series per entity become a child per parent row, as any
        sequence is. Tables without ``entity`` are as they were."""
        tables, data = dict(self.tables), dict(data)
        for name, spec in self.tables.items():
            if spec.entity is None:
                continue
            data[name] = _with_entity(data[name], spec, f"dataset.tables.{name}")
            parent = entity_table(name)
            key = ForeignKey(column=spec.entity, references=parent, context=True)
            tables[name] = spec.model_copy(update={"entity": None, "foreign_keys": [*spec.foreign_keys, key]})
            tables[parent] = TableSpec(uri=spec.uri, primary_key=spec.entity)
            entities = pc.unique(data[name].column(spec.entity).drop_null())
            data[parent] = pa.table({spec.entity: entities})
        return Relations.of(tables), data

    def parents(self, table: str) -> list[str]:
        """The tables ``table``'s foreign keys reference, in declaration order."""
        return [key.references for key in self.tables[table].foreign_keys]

    def children(self, table: str) -> list[str]:
        """The tables generated per row of ``table`` (whose context key references it), in order."""
        return [
            name for name in self.order if (key := self.context[name]) is not None and key.references == table
        ]


def _with_entity(table: pa.Table, spec: TableSpec, where: str) -> pa.Table:
    """``table`` checked for its entity column: there, of a key's type, and (with ``on_orphans:
    drop``) without the rows that name no entity, which otherwise fail."""
    entity = spec.entity or ""
    if entity not in table.column_names:
        raise DatasetError(f"{where}.entity: no column {entity!r} (columns: {', '.join(table.column_names)})")
    type_ = table.schema.field(entity).type
    if _kind(type_) is None:
        raise DatasetError(
            f"{where}.entity: {entity} is {type_}; an entity is named by an integer or a string"
        )
    missing = table.column(entity).null_count
    if missing and spec.on_orphans == "fail":
        raise DatasetError(
            f"{where}.entity: {missing} of {table.num_rows} rows name no {entity} "
            f"({where}.on_orphans: drop leaves them out)"
        )
    return table.filter(pc.is_valid(table.column(entity))) if missing else table


def entity_table(table: str) -> str:
    """The name of the parent table :meth:`Relations.with_entities` makes of ``table``'s entities."""
    return f"{table}_entities"


def _parents_first(tables: Mapping[str, TableSpec], where: str) -> list[str]:
    """The tables in an order where every referenced table comes before the tables referencing
    it (Kahn's algorithm, ties in declaration order); a cycle is refused, naming it."""
    waiting = {name: {key.references for key in spec.foreign_keys} for name, spec in tables.items()}
    order: list[str] = []
    while waiting:
        ready = [name for name, parents in waiting.items() if parents <= set(order)]
        if not ready:
            raise ConfigError(f"{where}: the foreign keys form a cycle ({_cycle(waiting)})")
        order.extend(ready)
        for name in ready:
            del waiting[name]
    return order


def _cycle(waiting: Mapping[str, set[str]]) -> str:
    """One cycle among tables that all wait on another, as ``a → b → a``."""
    path = [next(iter(waiting))]
    while True:
        step = min(parent for parent in waiting[path[-1]] if parent in waiting)
        if step in path:
            loop = path[path.index(step) :] + [step]
            return " → ".join(loop)
        path.append(step)


@dataclass
class KeyReport:
    """What the key checks left out: rows per table (orphans and the rows that depended on them)."""

    dropped: dict[str, int] = field(default_factory=dict)


def check_keys(
    data: Mapping[str, pa.Table], relations: Relations, where: str = "dataset.tables"
) -> tuple[dict[str, pa.Table], KeyReport]:
    """Check every table's keys against its data, parents first; ``(tables, report)`` with the
    orphans of ``on_orphans: drop`` tables left out (a dropped parent row takes its children along,
    since the children are checked after it). Raises :class:`DatasetError` naming the table and
    column, with counts of rows and never a key's value."""
    tables: dict[str, pa.Table] = {}
    report = KeyReport()
    for name in relations.order:
        spec = relations.tables[name]
        table = data[name]
        _require_columns(table, spec, f"{where}.{name}")
        if spec.primary_key is not None:
            _check_primary_key(table, spec.primary_key, f"{where}.{name}.primary_key")
        keep = pa.array([True] * table.num_rows, pa.bool_())
        for index, key in enumerate(spec.foreign_keys):
            field_name = f"{where}.{name}.foreign_keys[{index}]"
            primary = relations.tables[key.references].primary_key or ""
            column = table.column(key.column)
            referenced = data[key.references].column(primary)
            if not _comparable(column.type, referenced.type):
                raise DatasetError(
                    f"{field_name}: {name}.{key.column} is {column.type}, the key it references "
                    f"({key.references}.{primary}) is {referenced.type}"
                )
            # a null key has no parent: allowed for a matched key, an orphan for the context one
            optional = relations.context[name] is not key
            found = resolves(column, referenced, optional)
            orphans = table.num_rows - _count(found)
            if orphans and spec.on_orphans == "fail":
                raise DatasetError(
                    f"{field_name}: {orphans} of {table.num_rows} rows of {name} reference no row of "
                    f"{key.references} ({where}.{name}.on_orphans: drop leaves them out)"
                )
            # against the parent rows kept: the children of a dropped parent row go with it
            kept_parents = tables[key.references]
            if kept_parents.num_rows < data[key.references].num_rows:
                found = resolves(column, kept_parents.column(primary), optional)
            keep = pc.and_(keep, found)
        kept = table.filter(keep)
        if kept.num_rows < table.num_rows:
            report.dropped[name] = table.num_rows - kept.num_rows
        tables[name] = kept
    return tables, report


def parent_rows(column: pa.ChunkedArray | pa.Array, keys: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Each value's position in ``keys`` (null: none there, or a null value); integers of any
    width and strings of either size are compared as one type."""
    common = key_type(column.type)
    return pc.index_in(dense(column).cast(common), value_set=dense(keys).cast(common))


def key_type(type_: pa.DataType) -> pa.DataType:
    """The one type keys of ``type_`` are compared in: integers of any width as int64, strings of
    either size as large strings."""
    return pa.int64() if _kind(type_) == "integer" else pa.large_string()


def resolves(column: pa.ChunkedArray, keys: pa.ChunkedArray, optional: bool) -> pa.Array:
    """Whether each value of ``column`` is one of ``keys`` (a null: ``optional``)."""
    return pc.if_else(pc.is_null(dense(column)), optional, pc.is_valid(parent_rows(column, keys)))


def matched(column: pa.ChunkedArray, keys: pa.ChunkedArray, optional: bool) -> int:
    """How many values of ``column`` :func:`resolves` to one of ``keys``."""
    return _count(resolves(column, keys, optional))


def _count(mask: pa.Array) -> int:
    return int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)


def _require_columns(table: pa.Table, spec: TableSpec, where: str) -> None:
    declared = [("primary_key", spec.primary_key), ("order_by", spec.order_by)] + [
        (f"foreign_keys[{index}].column", key.column) for index, key in enumerate(spec.foreign_keys)
    ]
    for field_name, column in declared:
        if column is not None and column not in table.column_names:
            raise DatasetError(
                f"{where}.{field_name}: no column {column!r} (columns: {', '.join(table.column_names)})"
            )


def _check_primary_key(table: pa.Table, column: str, where: str) -> None:
    values = table.column(column)
    if _kind(values.type) is None:
        raise DatasetError(f"{where}: {column} is {values.type}; a key is an integer or a string")
    if values.null_count:
        raise DatasetError(
            f"{where}: {values.null_count} rows have no {column} (a primary key is never null)"
        )
    duplicates = table.num_rows - pc.count_distinct(values).as_py()
    if duplicates:
        raise DatasetError(f"{where}: {duplicates} rows repeat another row's {column} (a key is unique)")


def _kind(type_: pa.DataType) -> str | None:
    """What a key column holds: integers, strings, or (None) something a key cannot be."""
    if pa.types.is_integer(type_):
        return "integer"
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return "string"
    return None


def _comparable(child: pa.DataType, parent: pa.DataType) -> bool:
    """Whether a foreign key's values can be matched with the primary key's: both integers or
    both strings (a customer id read as text in one file and as a number in another is a schema
    error to fix, not a match to guess)."""
    return _kind(child) is not None and _kind(child) == _kind(parent)
