"""The one Parquet writer: streamed, atomic, row groups of ~128k rows, footer metadata kept."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genai_pipeline.parquet import ROW_GROUP_ROWS, concat_parquet, write_parquet, write_table
from genai_pipeline.storage import Storage


def _batches(count: int, rows: int) -> list[pa.Table]:
    return [pa.table({"n": pa.array(range(i * rows, (i + 1) * rows), pa.int64())}) for i in range(count)]


def test_batches_stream_into_row_groups_with_the_callers_footer(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    rows = write_parquet(_batches(40, 10_000), storage, "out.parquet", metadata={b"who": b"run-1"})
    file = pq.ParquetFile(tmp_path / "out.parquet")
    assert rows == file.metadata.num_rows == 400_000
    groups = [file.metadata.row_group(i).num_rows for i in range(file.num_row_groups)]
    assert max(groups) == ROW_GROUP_ROWS and len(groups) <= 2 * -(-400_000 // ROW_GROUP_ROWS)
    assert file.schema_arrow.metadata[b"who"] == b"run-1"
    assert pq.read_table(tmp_path / "out.parquet").column("n").to_pylist() == list(range(400_000))


def test_no_batches_write_an_empty_file_of_the_schema_or_fail(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    schema = pa.schema([("n", pa.int64())])
    assert write_parquet([], storage, "empty.parquet", schema=schema) == 0
    assert pq.read_schema(tmp_path / "empty.parquet").equals(schema)
    with pytest.raises(ValueError, match="nothing to write and no schema"):
        write_parquet([], storage, "none.parquet")
    assert not (tmp_path / "none.parquet").exists()  # atomic: no half-written file left


def test_a_failing_stream_leaves_no_file(tmp_path: Path) -> None:
    def broken() -> list[pa.Table]:
        yield from _batches(2, 10)
        raise OSError("the model died")

    with pytest.raises(OSError, match="the model died"):
        write_parquet(broken(), Storage(str(tmp_path)), "out.parquet")
    assert list(tmp_path.iterdir()) == []


def test_tables_keep_their_schema_metadata_and_parts_combine_with_their_footer(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    table = pa.table({"n": [1, 2, 3]}).replace_schema_metadata({b"shape": b"[3]"})
    assert write_table(table, storage, "snapshot.parquet") == 3
    assert pq.read_table(tmp_path / "snapshot.parquet").equals(table)
    for shard in range(3):
        write_parquet(_batches(1, 5), storage, f"part-{shard}.parquet", metadata={b"who": b"run-2"})
    rows = concat_parquet(storage, [f"part-{shard}.parquet" for shard in range(3)], "data.parquet")
    assert rows == 15 and pq.read_schema(tmp_path / "data.parquet").metadata[b"who"] == b"run-2"
