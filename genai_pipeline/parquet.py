"""The one Parquet writer: generated rows, image manifests, snapshots and metrics all go through it.

A file is written atomically (``Storage.open_atomic``: a reader sees the whole file or none), zstd
compressed, in row groups of about 128k rows, from a stream of tables buffered only up to one row
group, so memory does not grow with the rows written. Footer metadata (which run wrote a file)
is the caller's to give.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq

from genai_pipeline.storage import Storage

ROW_GROUP_ROWS = 128 * 1024
#: Small tables waiting for a row group are merged into one every this many: hundreds of them held
#: at once (an image manifest's 500-row batches) fragmented the heap, RSS growing ~4 MB per batch.
COMPACT_TABLES = 16


class _RowGroups:
    """One file's writer, buffering tables up to a row group."""

    def __init__(self, handle: IO[bytes], metadata: Mapping[bytes, bytes] | None):
        self.handle, self.metadata = handle, metadata
        self.writer: pq.ParquetWriter | None = None
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.rows = 0

    def open(self, schema: pa.Schema) -> None:
        if self.metadata:
            schema = schema.with_metadata({**(schema.metadata or {}), **self.metadata})
        self.writer = pq.ParquetWriter(self.handle, schema, compression="zstd")

    def add(self, table: pa.Table) -> None:
        if self.writer is None:
            self.open(table.schema)
        self.pending.append(table)
        self.pending_rows += table.num_rows
        if self.pending_rows >= ROW_GROUP_ROWS:
            self.flush()
        elif len(self.pending) >= COMPACT_TABLES:
            self.pending = [pa.concat_tables(self.pending).combine_chunks()]

    def flush(self) -> None:
        if self.pending and self.writer is not None:
            self.writer.write_table(pa.concat_tables(self.pending), row_group_size=ROW_GROUP_ROWS)
            self.rows += self.pending_rows
            self.pending, self.pending_rows = [], 0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def write_parquet(
    batches: Iterable[pa.Table],
    storage: Storage,
    rel: str,
    *,
    schema: pa.Schema | None = None,
    metadata: Mapping[bytes, bytes] | None = None,
) -> int:
    """Stream tables into one Parquet file at ``rel``; the rows written. ``schema`` is the file's
    when no table comes (otherwise the first table's); ``metadata`` is added to the footer, so any
    copy of the file still says where it came from."""
    with storage.open_atomic(rel) as handle:
        sink = _RowGroups(handle, metadata)
        try:
            for table in batches:
                sink.add(table)
            if sink.writer is None:
                if schema is None:
                    raise ValueError(f"{rel}: nothing to write and no schema given")
                sink.open(schema)
            sink.flush()
        finally:
            sink.close()
    return sink.rows


def write_parquet_files(
    batches: Iterable[tuple[str, pa.Table]],
    storage: Storage,
    files: Mapping[str, tuple[str, pa.Schema]],
    *,
    metadata: Mapping[bytes, bytes] | None = None,
) -> dict[str, int]:
    """Stream ``(name, table)`` pairs into one Parquet file per name (``files``: name → (rel,
    schema)), each written atomically as :func:`write_parquet` writes one; the rows per name. The
    files are committed in reverse order of ``files``: the first one named is whole only when every
    other one is."""
    with ExitStack() as stack:
        sinks: dict[str, _RowGroups] = {}
        for name, (rel, schema) in files.items():
            sinks[name] = _RowGroups(stack.enter_context(storage.open_atomic(rel)), metadata)
            sinks[name].open(schema)
            stack.callback(sinks[name].close)
        for name, table in batches:
            sinks[name].add(table)
        for sink in sinks.values():
            sink.flush()
    return {name: sink.rows for name, sink in sinks.items()}


def write_table(table: pa.Table, storage: Storage, rel: str) -> int:
    """One in-memory table (a snapshot, the metric rows) as a Parquet file; its rows."""
    return write_parquet([table], storage, rel, schema=table.schema)


def concat_parquet(storage: Storage, sources: list[str], rel: str) -> int:
    """Stream the row groups of Parquet files (one schema, footer metadata kept) into one file at
    ``rel`` through :func:`write_parquet`; rows.

    Decodes and re-encodes (pyarrow cannot copy row groups as they are): ~0.5 s per million rows
    here, paid only by runs of several shards (``BENCHMARKS.md``)."""

    def row_groups() -> Iterator[pa.Table]:
        for source in sources:
            with storage.open_read(source) as part:
                reader = pq.ParquetFile(part)
                for index in range(reader.num_row_groups):
                    yield reader.read_row_group(index)

    return write_parquet(row_groups(), storage, rel)
