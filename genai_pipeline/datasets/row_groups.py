"""A staged table read a few row groups at a time: training on tables larger than memory.

Ingest stages the training rows as one Parquet file in row groups of about 128k rows
(:mod:`genai_pipeline.parquet`). A table of more rows than ``train.in_memory_rows`` is not read
whole for training: the model's encoder and statistics are fitted on a seeded sample of
:data:`FIT_SAMPLE_ROWS` rows (:meth:`RowGroups.sample`) completed by one streaming pass over every row
(:meth:`RowGroups.facts`: each column's nulls and counts, so that no category, null or identifier
outside the sample is missed), and the training loop reads shuffled row groups
(:class:`genai_pipeline.training.StreamedRows`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genai_pipeline.columns import dense, is_numeric, to_float
from genai_pipeline.privacy.roles import ColumnRole
from genai_pipeline.storage import Storage

#: the rows of a streamed table its encoder and the model's statistics are fitted on (quantiles and
#: marginal frequencies: the categories, nulls and identifiers are all the rows', :meth:`RowGroups.facts`)
FIT_SAMPLE_ROWS = 100_000
#: a number column with more distinct values than this is continuous, not counted value by value
#: (the encoder's ``discrete_threshold``)
COUNTED_NUMBERS = 20


@dataclass
class ColumnFacts:
    """What one pass over every row tells about a column that a sample may miss: its nulls, its
    values' counts (None: a number column with too many values to count, or one not counted), and
    for a column made fresh all its values (so that no real identifier is reissued)."""

    rows: int = 0
    nulls: int = 0
    counts: dict[Any, int] | None = field(default_factory=dict)
    values: pa.Array | None = None
    _parts: list[pa.Array] = field(default_factory=list, repr=False)

    def add(self, column: pa.Array, role: ColumnRole | None) -> None:
        """A row group's values of the column, whose ``role`` says how they are learned."""
        self.rows += len(column)
        self.nulls += column.null_count
        if role is not None and role.fresh:
            self._parts.append(column)
        if self.counts is None or (role is not None and role.unlearned):
            self.counts = None  # fresh or text: no value is learned, so none is counted
            return
        numeric = is_numeric(column.type)
        if numeric:
            values = to_float(column)
            uniques, counts = np.unique(values[~np.isnan(values)], return_counts=True)
            pairs: Iterator[tuple[Any, int]] = zip(uniques.tolist(), counts.tolist(), strict=True)
        else:
            tallied = column.drop_null().value_counts()
            pairs = zip(tallied.field(0).to_pylist(), tallied.field(1).to_pylist(), strict=True)
        for value, count in pairs:
            self.counts[value] = self.counts.get(value, 0) + count
        if numeric and len(self.counts) > COUNTED_NUMBERS and (role is None or role.role != "category"):
            self.counts = None


@dataclass(frozen=True)
class RowGroups:
    """The row groups of one staged Parquet file (``rel`` in ``storage``), opened per read so that
    nothing is held between them (a file on S3 is read by range requests)."""

    storage: Storage
    rel: str
    #: rows per row group, from the footer
    sizes: tuple[int, ...]
    #: what each row group read becomes (the job's constraints rewrite the rows the model learns:
    #: :meth:`mapped`); None: the rows as staged
    transform: Callable[[pa.Table], pa.Table] | None = None

    @classmethod
    def of(cls, storage: Storage, rel: str) -> RowGroups:
        with storage.open_read(rel) as handle:
            meta = pq.ParquetFile(handle).metadata
            sizes = tuple(meta.row_group(index).num_rows for index in range(meta.num_row_groups))
        return cls(storage, rel, sizes)

    @property
    def rows(self) -> int:
        return sum(self.sizes)

    def mapped(self, transform: Callable[[pa.Table], pa.Table]) -> RowGroups:
        """The same row groups, each read made ``transform``'s table (the row count kept)."""
        return replace(self, transform=transform)

    def read(self, group: int) -> pa.Table:
        """The rows of row group ``group``."""
        with self.storage.open_read(self.rel) as handle:
            table = pq.ParquetFile(handle).read_row_group(group).replace_schema_metadata(None)
        return table if self.transform is None else self.transform(table)

    def each(self) -> Iterator[pa.Table]:
        """Every row group in order, one read at a time."""
        for group in range(len(self.sizes)):
            yield self.read(group)

    def sample(self, size: int, seed: int) -> pa.Table:
        """``size`` rows drawn by ``seed`` without replacement, in the file's order (all of them when
        there are fewer), read group by group: only the sample is held."""
        if size >= self.rows:
            return pa.concat_tables(self.each())
        chosen = np.sort(np.random.default_rng(seed).choice(self.rows, size, replace=False))
        starts = np.cumsum((0,) + self.sizes)
        parts = []
        for group in range(len(self.sizes)):
            inside = chosen[(chosen >= starts[group]) & (chosen < starts[group + 1])] - starts[group]
            if len(inside):
                parts.append(self.read(group).take(pa.array(inside)))
        return pa.concat_tables(parts)

    def facts(self, roles: Mapping[str, ColumnRole]) -> dict[str, ColumnFacts]:
        """One pass over every row: each column's :class:`ColumnFacts`, under the columns' roles."""
        facts: dict[str, ColumnFacts] = {}
        for table in self.each():
            for name in table.column_names:
                facts.setdefault(name, ColumnFacts()).add(dense(table.column(name)), roles.get(name))
        for fact in facts.values():
            if fact._parts:
                fact.values, fact._parts = pa.concat_arrays(fact._parts), []
        return facts
