"""Streaming image output: PNGs encoded and uploaded in a bounded pipeline, the manifest last."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import peak_rss_after_generating, tiny_job
from PIL import Image

from genai_pipeline.errors import StorageError
from genai_pipeline.generation import submit_pngs, write_images
from genai_pipeline.models.base import ImageBatch
from genai_pipeline.runs import Run
from genai_pipeline.storage import Storage


def _batches(count: int, size: int = 50) -> list[ImageBatch]:
    rng = np.random.default_rng(0)
    return [
        ImageBatch(
            images=rng.integers(0, 256, (size, 8, 8, 1), dtype=np.uint8),
            labels=np.array(["0", "1", "2"])[np.arange(size) % 3],
        )
        for _ in range(count)
    ]


def test_pngs_are_stored_chunk_by_chunk_on_every_core(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    images = _batches(1, 300)[0].images
    paths = [f"label={i % 4}/{i}.png" for i in range(300)]
    for future in submit_pngs(storage, paths, images, chunk=7):
        future.result()
    decoded = [np.asarray(Image.open(io.BytesIO(storage.read_bytes(path)))) for path in paths]
    assert np.array_equal(np.stack(decoded)[..., None], images)


def test_every_image_is_stored_before_its_manifest(tmp_path: Path) -> None:
    run = Run(job=tiny_job("builtin://digits", "vae", str(tmp_path)), run_date="2026-02-03")
    storage = run.storage()
    assert write_images(_batches(5), storage, run, model_name="test") == 250
    manifest = pq.read_table(tmp_path / "tiny" / run.staged(run.shard_part(0)))
    stored = [storage.read_bytes(run.staged(path)) for path in manifest.column("path").to_pylist()]
    first = np.asarray(Image.open(io.BytesIO(stored[0])))
    assert len(stored) == 250 and np.array_equal(first, _batches(1)[0].images[0, ..., 0])


def test_a_failed_upload_stops_the_shard_and_stages_no_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run(job=tiny_job("builtin://digits", "vae", str(tmp_path)), run_date="2026-02-03")
    uploads: list[int] = []
    real_put = Storage.put_many

    def flaky_put(self: Storage, files: dict[str, bytes]) -> None:
        uploads.append(len(files))
        if len(uploads) == 2:
            raise StorageError("s3://bucket/x: connection reset (simulated)")
        real_put(self, files)

    monkeypatch.setattr(Storage, "put_many", flaky_put)
    sampled: list[int] = []

    def batches():
        for index, batch in enumerate(_batches(20)):
            sampled.append(index)
            yield batch

    with pytest.raises(StorageError, match="connection reset"):
        write_images(batches(), run.storage(), run, model_name="test")
    assert not (tmp_path / "tiny" / run.staged(run.shard_part(0))).exists()
    assert len(sampled) <= 5  # sampling stops within the in-flight bound, not after all 20 batches


@pytest.mark.parametrize(
    ("uri", "batch", "warm", "more"),
    [("builtin://penguins", 4096, 300_000, 2_000_000), ("builtin://mnist", 500, 10_000, 60_000)],
)
def test_memory_stays_flat_for_far_more_samples_than_a_batch(
    tmp_path: Path, uri: str, batch: int, warm: int, more: int
) -> None:
    job = tiny_job(uri, "vae", str(tmp_path), generate={"batch_size": batch})
    first, then = peak_rss_after_generating(job, [warm, more])
    print(f"{uri}: peak RSS {first} MiB after {warm:,} samples, {then} MiB after {more:,} more")
    # as one table the 2M rows would be ~155 MiB; holding 120 small manifests grew RSS by ~500 MiB
    assert then - first < 40, f"peak memory grew {then - first} MiB for {more:,} samples"
