"""Streaming samples from a model into Parquet files and PNG images.

Batches are written as they come: tabular batches are buffered only up to one row group, image
batches are encoded to PNG on every core and uploaded while the next batch is sampled, a bounded
number of batches at a time, so memory does not grow with the number of samples requested.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from genai_pipeline.models.base import ImageBatch
from genai_pipeline.parquet import write_parquet
from genai_pipeline.runs import RUN_ID_KEY, Run, encode_partition_value
from genai_pipeline.storage import Storage

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


@contextmanager
def threads_per_shard(concurrent: int) -> Iterator[None]:
    """While ``concurrent`` shards sample side by side in this process, torch gets the cores
    divided among them (it defaults to all cores per shard): two one-thread shards sampled 1.6×
    as many rows a second as one shard on two threads, and 1.1× as two shards on two threads each
    (``benchmarks/bulk_generation.py --shards``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, concurrent)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def encode_png(image: np.ndarray) -> bytes:
    """uint8 HWC (1 or 3 channels) → PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


_ENCODERS: ThreadPoolExecutor | None = None
_ENCODERS_LOCK = threading.Lock()


def _encoders() -> ThreadPoolExecutor:
    """Threads that PNG-encode and store beside the sampling, one per core, shared by the process's
    shards.

    Threads, not processes: Pillow's zlib encoder releases the GIL, so two threads encode ~1.8×
    as fast as one, as fast as two processes (``benchmarks/bulk_images.py encoders``) without
    pickling images across, and they also work inside Dask's daemonic worker processes, which
    may not start a process pool.
    """
    global _ENCODERS
    with _ENCODERS_LOCK:
        if _ENCODERS is None:
            _ENCODERS = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="png")
        return _ENCODERS


def submit_pngs(
    storage: Storage, paths: list[str], images: np.ndarray, chunk: int = 128
) -> list[Future[None]]:
    """Encode and store a batch of images on every core: each chunk is encoded and written by one
    of the pool's threads (on S3 its files are uploaded concurrently), so neither encoding nor
    writing is bound to one core or to one round-trip at a time. A future per chunk."""

    def store(start: int) -> None:
        part = zip(paths[start : start + chunk], images[start : start + chunk])
        storage.put_many({path: encode_png(image) for path, image in part})

    return [_encoders().submit(store, start) for start in range(0, len(images), chunk)]


class _HeapTrimmer:
    """Hands freed heap memory back to the system at most every ``interval`` seconds (glibc only).

    The image transformer's per-chunk tensors (KV caches, between glibc's mmap thresholds) left the
    heap fragmented: RSS grew ~7 MB a batch (1,070 MB at 100k images) though nothing was held.
    ``malloc_trim`` keeps it flat; a trim walks the whole heap, so it runs every two seconds (no
    measurable cost), not every batch (20 a second for the VAE).
    """

    def __init__(self, interval: float = 2.0):
        self.interval, self.last = interval, time.monotonic()
        try:
            self.trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc: nothing to do
            self.trim = None

    def __call__(self) -> None:
        if self.trim is not None and time.monotonic() - self.last >= self.interval:
            self.trim(0)
            self.last = time.monotonic()


def write_images(
    batches: Iterable[ImageBatch],
    storage: Storage,
    run: Run,
    *,
    model_name: str,
    shard: int = 0,
    in_flight: int = 2,
) -> int:
    """Stage PNGs under ``images/run_date=…/label=…/`` and the manifest as the run's data file.

    A pipeline: while the model samples batch *n*, the batches before it are encoded and stored on
    every core (:func:`submit_pngs`); at most ``in_flight`` batches wait, so memory stays bounded
    and a storage failure stops the sampling within a few batches.
    """
    counter = 0
    images_dir = run.partition("images")
    pending: deque[list[Future[None]]] = deque()
    trim = _HeapTrimmer()

    def wait_for_oldest() -> None:
        for future in pending.popleft():
            future.result()  # re-raises a chunk's failure

    def manifests() -> Iterable[pa.Table]:
        nonlocal counter
        for batch in batches:
            trim()
            ids = [f"{run.run_id}-{shard:05d}-{counter + i:08d}" for i in range(len(batch.images))]
            counter += len(batch.images)
            paths = [
                f"{images_dir}/label={encode_partition_value(label)}/{sample_id}.png"
                for sample_id, label in zip(ids, batch.labels.tolist())
            ]
            pending.append(submit_pngs(storage, [run.staged(p) for p in paths], batch.images))
            while len(pending) > in_flight:
                wait_for_oldest()
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
        while pending:  # every image is stored before the manifest can be committed
            wait_for_oldest()

    # the shard's manifest is written last (atomically): its presence means its images are all there
    try:
        return write_parquet(
            manifests(),
            storage,
            run.staged(run.shard_part(shard)),
            schema=IMAGE_MANIFEST_SCHEMA,
            metadata={RUN_ID_KEY: run.run_id.encode()},
        )
    finally:
        for future in (future for futures in pending for future in futures):
            future.cancel()  # a failed run: drop the chunks that have not started
