"""The one Parquet writer: generated rows, image manifests, snapshots and metrics all go through it.

A file is written atomically (``Storage.open_atomic``: a reader sees the whole file or none), zstd
compressed, in row groups of about 128k rows, from a stream of tables buffered only up to one row
group, so memory does not grow with the rows written. Footer metadata (which run wrote a file)
is the caller's to give.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from genai_pipeline.storage import Storage

ROW_GROUP_ROWS = 128 * 1024
#: Small tables waiting for a row group are merged into one every this many: hundreds of them held
#: at once (an image manifest's 500-row batches) fragmented the heap, RSS growing ~4 MB per batch.
COMPACT_TABLES = 16


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
    rows = 0
    pending: list[pa.Table] = []
    pending_rows = 0

    def writer_for(schema: pa.Schema) -> pq.ParquetWriter:
        if metadata:
            schema = schema.with_metadata({**(schema.metadata or {}), **metadata})
        return pq.ParquetWriter(handle, schema, compression="zstd")

    with storage.open_atomic(rel) as handle:
        writer: pq.ParquetWriter | None = None
        try:
            for table in batches:
                if writer is None:
                    writer = writer_for(schema or table.schema)
                pending.append(table)
                pending_rows += table.num_rows
                if pending_rows >= ROW_GROUP_ROWS:
                    writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
                    rows += pending_rows
                    pending, pending_rows = [], 0
                elif len(pending) >= COMPACT_TABLES:
                    pending = [pa.concat_tables(pending).combine_chunks()]
            if writer is None:
                if schema is None:
                    raise ValueError(f"{rel}: nothing to write and no schema given")
                writer = writer_for(schema)
            if pending:
                writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
                rows += pending_rows
        finally:
            if writer is not None:
                writer.close()
    return rows


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
