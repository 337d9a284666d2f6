"""Streaming samples from a model into Parquet files and PNG images.

Batches are written as they come: tabular batches are buffered only up to one row group, image
batches are encoded to PNG and uploaded a batch at a time, so memory does not grow with the number
of samples requested.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from genai_pipeline.models.base import ImageBatch
from genai_pipeline.runs import Run, encode_partition_value
from genai_pipeline.storage import Storage

ROW_GROUP_ROWS = 128 * 1024

IMAGE_MANIFEST_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("label", pa.string()),
        ("path", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("model", pa.string()),
        ("run_id", pa.string()),
    ]
)


def write_parquet(
    batches: Iterable[pa.Table], storage: Storage, rel: str, *, schema: pa.Schema | None = None
) -> int:
    """Stream tables into one Parquet file (zstd, dictionary-encoded, ~128k-row groups); rows."""
    rows = 0
    pending: list[pa.Table] = []
    pending_rows = 0
    with storage.open_atomic(rel) as handle:
        writer: pq.ParquetWriter | None = None
        try:
            for table in batches:
                if writer is None:
                    writer = pq.ParquetWriter(handle, schema or table.schema, compression="zstd")
                pending.append(table)
                pending_rows += table.num_rows
                if pending_rows >= ROW_GROUP_ROWS:
                    writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
                    rows += pending_rows
                    pending, pending_rows = [], 0
            if writer is None:
                if schema is None:
                    raise ValueError(f"{rel}: nothing to write and no schema given")
                writer = pq.ParquetWriter(handle, schema, compression="zstd")
            if pending:
                writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
                rows += pending_rows
        finally:
            if writer is not None:
                writer.close()
    return rows


def encode_png(image: np.ndarray) -> bytes:
    """uint8 HWC (1 or 3 channels) → PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_images(
    batches: Iterable[ImageBatch], storage: Storage, run: Run, *, model_name: str, shard: int = 0
) -> int:
    """Stage PNGs under ``images/run_date=…/label=…/`` and the manifest as the run's data file."""
    counter = 0
    images_dir = run.partition("images")

    def manifests() -> Iterable[pa.Table]:
        nonlocal counter
        for batch in batches:
            ids = [f"{run.run_id}-{shard:05d}-{counter + i:08d}" for i in range(len(batch.images))]
            counter += len(batch.images)
            paths = [
                f"{images_dir}/label={encode_partition_value(label)}/{sample_id}.png"
                for sample_id, label in zip(ids, batch.labels.tolist())
            ]
            storage.put_many(
                {run.staged(path): encode_png(image) for path, image in zip(paths, batch.images)}
            )
            height, width = batch.images.shape[1:3]
            yield pa.table(
                {
                    "sample_id": ids,
                    "label": batch.labels.tolist(),
                    "path": paths,
                    "width": pa.array([width] * len(ids), pa.int32()),
                    "height": pa.array([height] * len(ids), pa.int32()),
                    "model": [model_name] * len(ids),
                    "run_id": [run.run_id] * len(ids),
                },
                schema=IMAGE_MANIFEST_SCHEMA,
            )

    # the shard's manifest is written last (atomically): its presence means its images are all there
    return write_parquet(manifests(), storage, run.staged(run.data_part(shard)), schema=IMAGE_MANIFEST_SCHEMA)
