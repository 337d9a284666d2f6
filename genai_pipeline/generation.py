"""Generation: what a run samples, from which model, streamed into Parquet files and PNG images.

- **What to sample**: the job's conditions as the model takes them, the sampling plan (one part,
  or one per label with ``per_label``) checked against the data's labels, each shard's share of it
  with its own seed, and the batch size images can afford.
- **The model**: loaded once per process and device, shared by the shards running as threads.
- **Writing**: batches are written as they come: tabular batches are buffered only up to one row
  group (:mod:`genai_pipeline.parquet`), image batches are encoded to PNG on every core and
  uploaded while the next batch is sampled, a bounded number of batches at a time, so memory does
  not grow with the number of samples requested.
- **Reading back**: the validation sample, drawn across the whole output at a bounded cost, and
  the staged images it names.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import itertools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image

from genai_pipeline.columns import dense
from genai_pipeline.config import JobSpec
from genai_pipeline.cpus import available_cores
from genai_pipeline.datasets.base import MAX_LABELS, ImageData
from genai_pipeline.encoders.tabular import RowStream
from genai_pipeline.errors import ConfigError, DatasetError
from genai_pipeline.models import ImageBatch, Synthesizer, load_model
from genai_pipeline.models.base import require_condition_values
from genai_pipeline.parquet import write_parquet
from genai_pipeline.refs import ModelRef
from genai_pipeline.runs import RUN_ID_KEY, Run, encode_partition_value
from genai_pipeline.storage import Storage
from genai_pipeline.training import batched_indices

log = logging.getLogger(__name__)

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


# -- what to sample ------------------------------------------------------------------------------

#: a request's conditions, and the counts of a plan
Plan = list[tuple[dict[str, Any], int]]


def label_key(job: JobSpec) -> str | None:
    """How conditions name the label: ``label`` for images, the label column for tables."""
    return "label" if job.dataset.modality == "image" else job.dataset.label


def model_conditions(job: JobSpec) -> dict[str, Any]:
    """The job's conditions as the model takes them (an image dataset's label column is ``label``)."""
    label = job.dataset.label
    if job.dataset.modality == "image":
        return {("label" if key == label else key): value for key, value in job.generate.conditions.items()}
    return dict(job.generate.conditions)


def _require_label(field: str, value: Any, labels: Sequence[Any] | None) -> None:
    if labels is not None:
        require_condition_values(field, value, list(labels), field=field, absent="does not occur in the data")


def value_counts(column: pa.ChunkedArray | pa.Array, min_rows: int) -> dict[Any, int]:
    """The column's values that at least ``min_rows`` rows hold, with their counts (null as None):
    those a model may be asked for (fewer rows' values it never learned)."""
    counts = pc.value_counts(dense(column))
    return {
        value: count
        for value, count in zip(
            counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
        )
        if count >= min_rows
    }


@dataclass
class PlanCounts:
    """What a plan that reshapes the data's distribution is made from: the real counts of each
    value of some columns (``marginal``), and of each combination of ``generate.fairness``'s
    sensitive columns (``groups``). They are the real data's (as protected): kept in the run's
    private area, never published."""

    marginal: dict[str, dict[Any, int]] = field(default_factory=dict)
    groups: list[tuple[tuple[Any, ...], int]] = field(default_factory=list)

    def to_json(self) -> bytes:
        marginal = {column: list(counts.items()) for column, counts in self.marginal.items()}
        return json.dumps({"marginal": marginal, "groups": self.groups}, default=str).encode()

    @classmethod
    def from_json(cls, blob: bytes) -> PlanCounts:
        data = json.loads(blob)
        marginal = {
            column: {value: count for value, count in pairs} for column, pairs in data["marginal"].items()
        }
        return cls(marginal, [(tuple(values), count) for values, count in data["groups"]])


def joint_counts(table: pa.Table, columns: Sequence[str]) -> list[tuple[tuple[Any, ...], int]]:
    """Each combination of ``columns``' values in ``table`` with how many rows hold it."""
    grouped = table.select(list(columns)).group_by(list(columns)).aggregate([([], "count_all")])
    values = zip(*(grouped.column(name).to_pylist() for name in columns), strict=True)
    return list(zip(values, grouped.column("count_all").to_pylist(), strict=True))


#: a fair plan draws each sensitive group with each target value: at most this many parts
MAX_FAIR_PARTS = 10_000


def fair(
    conditions: dict[str, Any],
    total: int,
    target: str,
    sensitive: Sequence[str],
    groups: list[tuple[tuple[Any, ...], int]],
    outcomes: dict[Any, int],
) -> Plan:
    """Statistical parity: a part per sensitive group and target value, the group as often as in the
    real rows and, within it, each target value as often as in all of them, so the target's
    distribution is the same in every group (the other columns drawn given both)."""
    if len(groups) * len(outcomes) > MAX_FAIR_PARTS:
        raise ConfigError(
            f"generate.fairness: {len(groups)} groups of {', '.join(sensitive)} × {len(outcomes)} values of "
            f"{target}: more than {MAX_FAIR_PARTS:,} parts to draw"
        )
    people, rows = sum(count for _, count in groups), sum(outcomes.values())
    weights = {
        (group, value): count / people * share / rows
        for group, count in groups
        for value, share in outcomes.items()
    }
    counts = _largest_remainder(total, weights)
    return [
        ({**conditions, **dict(zip(sensitive, group, strict=True)), target: value}, count)
        for (group, value), count in counts.items()
        if count > 0
    ]


def _largest_remainder(total: int, weights: dict[Any, float]) -> dict[Any, int]:
    """``total`` split in proportion to ``weights`` in whole numbers adding up to it."""
    scale = sum(weights.values())
    exact = {key: total * weight / scale for key, weight in weights.items()}
    counts = {key: int(np.floor(value)) for key, value in exact.items()}
    for key in sorted(exact, key=lambda key: counts[key] - exact[key])[: total - sum(counts.values())]:
        counts[key] += 1
    return counts


def rebalanced(
    conditions: dict[str, Any], total: int, column: str, shares: dict[Any, float], real: dict[Any, int]
) -> Plan:
    """A part per value of ``column``: each value of ``shares`` its share of ``total``, the others
    (``real``: their counts) the rest in their real proportions; a value must be one of ``real``."""
    field, asked = f"generate.rebalance.{column}", {}
    for value, share in shares.items():  # as the column has it: 1 for '1' from a YAML key
        require_condition_values(
            column, value, list(real), field=f"{field}.{value}", absent="does not occur in the data"
        )
        asked[next(item for item in real if value == item or str(value) == str(item))] = share
    rest = {value: count for value, count in real.items() if value not in asked}
    left = 1 - sum(asked.values())
    if left > 1e-9 and not rest:
        raise ConfigError(f"{field}: the shares leave {left:.0%} to other values, and there are none")
    weights = {**asked, **{value: left * count / sum(rest.values()) for value, count in rest.items()}}
    counts = _largest_remainder(total, {value: weight for value, weight in weights.items() if weight > 0})
    return [({**conditions, column: value}, count) for value, count in counts.items() if count > 0]


def sampling_plan(job: JobSpec, labels: Sequence[Any] | None, counts: PlanCounts | None = None) -> Plan:
    """``(conditions, count)`` pairs: one for the whole run, one per label with ``per_label``, one
    per value of the rebalanced column, or one per sensitive group and target value for fairness
    (``counts``: the real counts these are made from).

    Conditions and counts that name a label must name one of ``labels``, the data's (None: more
    than the schema lists, not checked); the model checks the other columns (``check_plan``).
    """
    conditions, label, per_label = model_conditions(job), label_key(job), job.generate.per_label
    if label in conditions:
        _require_label(f"generate.conditions.{label}", conditions[label], labels)
    if job.generate.rebalance or job.generate.fairness:
        if counts is None:
            raise ValueError("a rebalanced or fair plan needs the real counts it is made from (counts=)")
        total, fairness = job.generate.num_samples, job.generate.fairness
        if fairness is not None:
            target, sensitive = fairness.target, fairness.sensitive
            return fair(conditions, total, target, sensitive, counts.groups, counts.marginal[target])
        ((column, shares),) = job.generate.rebalance.items()
        return rebalanced(conditions, total, column, shares, counts.marginal[column])
    if per_label is None:
        return [(conditions, job.generate.num_samples)]
    if labels is not None and not labels:
        raise ConfigError("generate.per_label: the dataset has no label (set dataset.label)")
    if label in conditions:
        raise ConfigError(f"generate.per_label: cannot be combined with generate.conditions.{label}")
    if isinstance(per_label, dict):
        for value in per_label:
            _require_label(f"generate.per_label.{value}", value, labels)
        counts = per_label
    elif labels is None:
        raise ConfigError(
            f"generate.per_label: the label has over {MAX_LABELS} values; give a count per label"
        )
    else:
        counts = dict.fromkeys(labels, per_label)
    return [({**conditions, label: value}, count) for value, count in counts.items() if count > 0]


def _share(count: int, shards: int, shard: int) -> int:
    """One shard's share of ``count`` samples (the first shards take one more when it does not divide)."""
    return count // shards + (1 if shard < count % shards else 0)


def shard_plan(
    job: JobSpec, labels: Sequence[Any] | None, shard: int, counts: PlanCounts | None = None
) -> list[tuple[dict[str, Any], int, int, RowStream]]:
    """``(conditions, count, seed, rows)`` for one shard: its share of every part of the sampling
    plan, with a seed derived from the run's seed, the shard and the part, so a shard is
    reproducible on its own, and the rows of the run that share is (parts in order, each part's
    shards in order): what the columns made fresh depend on, so no two shards repeat an identifier."""
    shards, plan = job.generate.shards, sampling_plan(job, labels, counts)
    total = sum(count for _, count in plan)
    out, first = [], 0
    for part, (conditions, count) in enumerate(plan):
        share = _share(count, shards, shard)
        seed = int(np.random.SeedSequence([job.generate_seed, shard, part]).generate_state(1)[0])
        before = sum(_share(count, shards, other) for other in range(shard))
        if share > 0:
            out.append((conditions, share, seed, RowStream(job.generate_seed, first + before, total)))
        first += count
    return out


def seed_shard(seeds: int, per_seed: int, shards: int, shard: int) -> tuple[int, int]:
    """``(first, count)``: the seed rows one shard completes (the first shards take one more when
    they do not divide), each ``per_seed`` times."""
    return sum(_share(seeds, shards, other) for other in range(shard)), _share(seeds, shards, shard)


def completed_batches(synthesizer: Any, seeds: pa.Table, job: JobSpec, shard: int) -> Iterator[pa.Table]:
    """One shard's seed rows completed by the model (``generate.complete``), ``rows_per_seed``
    rows each, in batches of ``generate.batch_size``, in the seed rows' order; each batch's rows
    placed in the run (for the columns made fresh) and seeded by shard and batch."""
    assert job.generate.complete is not None, "a job with seed rows (generate.complete)"
    per_seed = job.generate.complete.rows_per_seed
    total = seeds.num_rows * per_seed
    first, count = seed_shard(seeds.num_rows, per_seed, job.generate.shards, shard)
    indices = np.repeat(np.arange(first, first + count), per_seed)
    for number, (start, stop) in enumerate(batched_indices(len(indices), job.generate.batch_size)):
        seed = int(np.random.SeedSequence([job.generate_seed, shard, number]).generate_state(1)[0])
        place = RowStream(job.generate_seed, first * per_seed + start, total)
        yield synthesizer.fill_in(
            seeds.take(pa.array(indices[start:stop])), seed=seed, rows=place, impute=job.generate.impute
        )


def image_batch_size(
    requested: int, shape: tuple[int, ...], max_mb: int, *, field: str = "generate.batch_size"
) -> int:
    """``requested`` images of ``shape`` at once (``field``: what asked for them), clipped (with a
    warning) so that their pixels — float32 as rendered plus uint8 as encoded — stay within
    ``generate.max_batch_mb``: a batch size fit for 28×28 digits would not fit in memory for
    512×512 photos, nor would validating 100,000 of them."""
    per_image = int(np.prod(shape)) * 5
    limit = max(1, max_mb * 2**20 // per_image)
    if requested > limit:
        log.warning(
            "%s: %d images of %s would take %d MiB (generate.max_batch_mb: %d): using %d",
            field,
            requested,
            "×".join(map(str, shape)),
            requested * per_image // 2**20,
            max_mb,
            limit,
        )
        return limit
    return requested


#: a label's image folder name may take at most this many bytes (NAME_MAX of Linux filesystems)
MAX_FOLDER_BYTES = 255


def label_folder(label: str) -> str:
    """The folder an image of ``label`` goes to: ``label=<percent-encoded label>``."""
    return f"label={encode_partition_value(label)}"


def check_label_folders(labels: Sequence[str]) -> None:
    """Every label's folder fits one path segment. Checked at ingest: an 80-character CJK label is
    720 bytes percent-encoded, and its PNGs failed after training with "File name too long",
    which looked transient and was retried."""
    for label in labels:
        if (size := len(label_folder(label).encode())) > MAX_FOLDER_BYTES:
            shown = label if len(label) <= 24 else label[:24] + "…"
            raise DatasetError(
                f"label {shown!r}: {size} bytes as an image folder name (label=<percent-encoded>), "
                f"at most {MAX_FOLDER_BYTES}: shorten the dataset's labels"
            )


# -- the model -----------------------------------------------------------------------------------

_LOADED: dict[tuple[str, ...], Synthesizer] = {}
_LOADING = threading.Lock()


def shared_model(storage: Storage, model: ModelRef, device: torch.device) -> Synthesizer:
    """The model, loaded once per process and device: shards running as threads share one copy
    (one copy in GPU memory) instead of each loading its own. Only the latest model is kept, since
    a long-lived worker (a Dask cluster's) runs many jobs; the key includes the fit record, so a
    model trained again at the same place is loaded again."""
    key = (storage.url, model.uri, json.dumps(model.fit, sort_keys=True, default=str), str(device))
    with _LOADING:
        if key not in _LOADED:
            _LOADED.clear()
            _LOADED[key] = load_model(storage, model.uri, device)
        return _LOADED[key]


# -- writing -------------------------------------------------------------------------------------


@contextmanager
def threads_per_shard(concurrent: int) -> Iterator[None]:
    """While ``concurrent`` shards sample side by side in this process, torch gets the cores
    divided among them (it defaults to all cores per shard): two one-thread shards sampled 1.6×
    as many rows a second as one shard on two threads, and 1.1× as two shards on two threads each
    (``benchmarks/bulk_generation.py --shards``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, available_cores() // max(1, concurrent)))
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
            _ENCODERS = ThreadPoolExecutor(available_cores(), thread_name_prefix="png")
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
                f"{images_dir}/{label_folder(label)}/{sample_id}.png"
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


# -- reading back --------------------------------------------------------------------------------


def sample_rows(storage: Storage, rels: list[str], limit: int, seed: int) -> pa.Table:
    """At most ``limit`` rows drawn from the whole output, at a cost bounded by ``limit``: row groups
    spread evenly over every part file (about four times ``limit`` rows), then a seeded choice of
    rows among them, in output order. The first rows alone will not do: a sampling plan writes its
    parts (labels, conditions) one after another, so they could all be one label."""
    groups: list[tuple[str, int, int]] = []
    for rel in rels:
        with storage.open_read(rel) as handle:
            metadata = pq.ParquetFile(handle).metadata
        groups += [
            (rel, index, metadata.row_group(index).num_rows) for index in range(metadata.num_row_groups)
        ]
    total = sum(rows for _, _, rows in groups)
    wanted = len(groups) if total <= 4 * limit else max(1, int(np.ceil(len(groups) * 4 * limit / total)))
    chosen = (
        sorted({int(i) for i in np.linspace(0, len(groups) - 1, min(wanted, len(groups)))}) if groups else []
    )
    tables = []
    for rel, picked in itertools.groupby((groups[i] for i in chosen), key=lambda group: group[0]):
        with storage.open_read(rel) as handle:
            tables.append(pq.ParquetFile(handle).read_row_groups([index for _, index, _ in picked]))
    if not tables:
        with storage.open_read(rels[0]) as handle:
            return pq.ParquetFile(handle).schema_arrow.empty_table()
    table = pa.concat_tables(tables)
    if table.num_rows <= limit:
        return table
    keep = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=limit, replace=False))
    return table.take(pa.array(keep))


def read_images(storage: Storage, root: str, manifest: pa.Table) -> ImageData:
    """Decode the PNGs an image manifest names (its paths relative to ``root``): proves they are
    readable and gives their pixels."""
    paths = [f"{root}/{path}" for path in manifest.column("path").to_pylist()]
    blobs = storage.read_many(paths)
    arrays = []
    for path in paths:
        try:
            arrays.append(np.asarray(Image.open(io.BytesIO(blobs[path]), formats=["PNG"])))
        except OSError as exc:
            raise DatasetError(f"{path}: generated image is not a readable PNG ({exc})") from None
    images = np.stack(arrays)
    images = images[..., None] if images.ndim == 3 else images
    return ImageData(images=images, labels=np.asarray(manifest.column("label").to_pylist(), dtype=str))
