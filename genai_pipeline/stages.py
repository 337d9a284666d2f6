"""The five stages of a nightly job, as plain functions with keyword-only arguments.

Each takes the :class:`~genai_pipeline.runs.Run` and the small references the previous stages
returned, reads and writes large data through storage, and returns a small reference in turn.
Prefect tasks in ``flows/`` wrap exactly one of these each; tests and notebooks call them directly.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

import genai_pipeline
from genai_pipeline.config import DatasetSpec
from genai_pipeline.datasets.base import (
    Dataset,
    DatasetRef,
    ImageData,
    TabularData,
    content_key,
    describe_schema,
    fingerprint,
    label_values,
    read_snapshot,
    schema_diff,
    split_holdout,
    write_snapshot,
)
from genai_pipeline.datasets.sources import read_dataset, source_stamp
from genai_pipeline.errors import ConfigError, DatasetError, StorageError
from genai_pipeline.generation import write_images
from genai_pipeline.models import load_model, model_class, model_config_for
from genai_pipeline.models.base import Synthesizer, require_condition_values, sampling_precision
from genai_pipeline.parquet import concat_parquet, write_parquet, write_table
from genai_pipeline.quality.gate import MetricRows
from genai_pipeline.runs import (
    LATEST_MODEL,
    PARTITION_KEY,
    RUN_ID_KEY,
    GeneratedRef,
    ModelRef,
    PublishedRun,
    QualityReport,
    Run,
    publish,
    record_failure,
)
from genai_pipeline.storage import Storage
from genai_pipeline.training import CheckpointStore, resolve_device

log = logging.getLogger(__name__)

__all__ = [
    "browser_url",
    "combine_shards",
    "export",
    "generate",
    "generate_shard",
    "ingest",
    "record_failure",
    "summary_markdown",
    "train",
    "validate",
]


def conditions_for_model(run: Run) -> dict[str, Any]:
    """The job's conditions with an image dataset's label column spelled ``label``."""
    job = run.job
    if job.dataset.modality == "image":
        return {
            ("label" if key == job.dataset.label else key): value
            for key, value in job.generate.conditions.items()
        }
    return dict(job.generate.conditions)


def _label_key(run: Run) -> str | None:
    """How conditions name the label: ``label`` for images, the label column for tables."""
    return "label" if run.job.dataset.modality == "image" else run.job.dataset.label


def _require_known(field: str, value: Any, known: list[Any]) -> None:
    require_condition_values(field, value, known, field=field, absent="does not occur in the data")


def _check_generate_spec(run: Run, data: Dataset) -> None:
    """Conditions and per-label counts must name the label and values it has: checked before training."""
    label, known = _label_key(run), label_values(data)
    conditions = conditions_for_model(run)
    if label in conditions:
        _require_known(f"generate.conditions.{label}", conditions[label], known)
    model_class(run.job.dataset.modality, run.job.model.family).check_plan(
        data, model_config_for(run.job), [conditions]
    )
    per_label = run.job.generate.per_label
    if per_label is None:
        return
    if not known:
        raise ConfigError("generate.per_label: the dataset has no label (set dataset.label)")
    if label in conditions_for_model(run):
        raise ConfigError(f"generate.per_label: cannot be combined with generate.conditions.{label}")
    for value in per_label if isinstance(per_label, dict) else []:
        _require_known(f"generate.per_label.{value}", value, known)


def sampling_plan(run: Run, dataset: DatasetRef) -> list[tuple[dict[str, Any], int]]:
    """``(conditions, count)`` pairs: one for the whole run, or one per label with ``per_label``."""
    job = run.job
    conditions = conditions_for_model(run)
    per_label = job.generate.per_label
    if per_label is None:
        return [(conditions, job.generate.num_samples)]
    counts = per_label if isinstance(per_label, dict) else dict.fromkeys(dataset.schema["labels"], per_label)
    return [({**conditions, _label_key(run): value}, count) for value, count in counts.items() if count > 0]


#: the job's reviewed suite (``validate.suite: saved``), beside its output
SAVED_SUITE = "expectations/suite.json"


def _suite_file(run: Run) -> str:
    """Where a run stages (and publishes) the data-derived suite it checks against."""
    return run.staged(f"{run.partition('quality')}/suite.json")


def _stage_suite(run: Run, data: Dataset, storage: Storage) -> None:
    """Stage the run's data suite: the job's saved one or one derived from the data. When there is
    something to learn from it (a saved suite, or the job's own expectations), check the real input
    against it first, so a broken upstream dataset fails here rather than after training."""
    from genai_pipeline.quality.expectations import data_suite, job_suite, load_suite, suite_bytes

    spec = run.job.validate_
    saved = spec.suite == "saved" and storage.exists(SAVED_SUITE)
    if saved:
        base = load_suite(storage.read_bytes(SAVED_SUITE), storage.url_of(SAVED_SUITE))
    else:
        base = data_suite(data, spec, run.job.name)
        if spec.suite == "saved":
            storage.write_bytes(SAVED_SUITE, suite_bytes(base))
            log.info(
                "validate.suite: saved: wrote the data's suite to %s for review", storage.url_of(SAVED_SUITE)
            )
    storage.write_bytes(_suite_file(run), suite_bytes(base))
    extras = [extra for extra in spec.expectations if extra.check_input]
    if saved or extras:
        checked = spec.model_copy(update={"expectations": extras})
        result = _run_suite(job_suite(base, checked, {}, data.modality), data)
        quality = run.staged(run.partition("quality"))
        storage.write_bytes(
            f"{quality}/input_expectations.json", json.dumps(result.payload, indent=1).encode()
        )
        for warning in result.warnings:
            log.warning("dataset: %s", warning)
        if result.failures:
            raise DatasetError(
                f"dataset: {run.job.dataset.uri} fails {len(result.failures)} expectation(s) of the job's "
                f"suite: {'; '.join(result.failures)}"
            )


def _run_suite(suite: Any, data: Dataset, docs: Path | None = None) -> Any:
    """Run a suite on a table, or on the per-image stats frame of images."""
    from genai_pipeline.quality.expectations import image_stats, run_suite, table_frame

    frame = (
        table_frame(data.table) if isinstance(data, TabularData) else image_stats(data.images, data.labels)
    )
    return run_suite(suite, frame, docs)


#: where ingest keeps what it last read from a (non-built-in) source, by the source's stamp
SOURCE_CACHE = "datasets"


def _read_source(spec: DatasetSpec, storage: Storage) -> Dataset:
    """The job's dataset: read from its source, or from the copy kept the last time when the
    source's files are unchanged (same sizes and ETags/mtimes). One copy is kept per job: a new
    one replaces the old."""
    if spec.is_builtin or not spec.cache:
        return read_dataset(spec)
    cached = f"{SOURCE_CACHE}/source-{source_stamp(spec)}.parquet"
    if storage.exists(cached):
        log.info(
            "dataset: %s is unchanged since it was last read: using %s", spec.uri, storage.url_of(cached)
        )
        return read_snapshot(storage, cached, spec.label)
    data = read_dataset(spec)
    write_snapshot(data, storage, cached)
    storage.delete(rel for rel in storage.list_files(SOURCE_CACHE) if rel != cached)
    return data


def _check_schema(run: Run, schema: dict[str, Any], storage: Storage) -> None:
    """The data's schema against the last published run's: a change fails the run naming it, or,
    with ``dataset.on_schema_change: adapt``, is logged and accepted (the model key follows the
    data, so a model for the new schema is trained)."""
    if not storage.exists(LATEST_MODEL):
        return  # the job's first run
    latest = json.loads(storage.read_bytes(LATEST_MODEL))
    changes = schema_diff(latest["dataset"]["schema"], schema)
    if not changes:
        return
    since = f"since run {latest['run_id']} ({PARTITION_KEY} {latest['run_date']})"
    if run.job.dataset.on_schema_change == "adapt":
        log.warning("dataset: the schema changed %s: %s; adapting", since, "; ".join(changes))
        return
    raise DatasetError(
        f"{run.job.dataset.uri}: the schema changed {since}: {'; '.join(changes)} "
        "(set dataset.on_schema_change: adapt to accept it)"
    )


def ingest(run: Run) -> DatasetRef:
    """Read the dataset, check the job's conditions against it, fingerprint it, set a holdout aside
    and snapshot both parts."""
    spec, checks = run.job.dataset, run.job.validate_
    resolve_device(run.job.train.device)  # a GPU asked for and absent: fail before anything is read
    started = time.monotonic()
    storage = run.storage()
    data = _read_source(spec, storage)
    schema = describe_schema(data)
    _check_schema(run, schema, storage)
    _check_generate_spec(run, data)
    _stage_suite(run, data, storage)
    key = fingerprint(data)
    train_part, holdout = split_holdout(data, checks.holdout, checks.holdout_max_rows, key=key)
    snapshot, holdout_snapshot = run.staged("input/dataset.parquet"), run.staged("input/holdout.parquet")
    write_snapshot(train_part, storage, snapshot)
    if holdout is not None:
        write_snapshot(holdout, storage, holdout_snapshot)
    ref = DatasetRef(
        source=spec.uri,
        snapshot=snapshot,
        modality=data.modality,
        fingerprint=key,
        num_rows=data.num_rows,
        schema=schema,
        label=spec.label,
        holdout=None if holdout is None else holdout_snapshot,
        holdout_rows=0 if holdout is None else holdout.num_rows,
    )
    log.info(
        "ingested %d %s from %s (fingerprint %s, %d held out) in %.1f s",
        ref.num_rows,
        "rows" if ref.modality == "tabular" else "images",
        spec.uri,
        ref.fingerprint,
        ref.holdout_rows,
        time.monotonic() - started,
    )
    return ref


def model_key(run: Run, dataset: DatasetRef) -> str:
    """Dataset content + model config + training settings + code version → where the model lives."""
    job = run.job
    identity = {
        "dataset": dataset.fingerprint,
        "model": job.model.model_dump(mode="json"),
        "train": job.train.model_dump(mode="json", exclude={"reuse"}),  # how, not what, is trained
        "holdout": [job.validate_.holdout, job.validate_.holdout_max_rows],
        "version": genai_pipeline.__version__,
    }
    return content_key(identity)


def _signature(schema: dict[str, Any]) -> Any:
    """What a model depends on in a dataset's schema: column names and types, or image shape and labels."""
    if "columns" in schema:
        return [(column["name"], column["type"]) for column in schema["columns"]]
    return [schema["height"], schema["width"], schema["channels"], schema["labels"]]


def _reusable_model(run: Run, dataset: DatasetRef, storage: Storage) -> ModelRef | None:
    """The last published model when the job asks for it and it still fits the data."""
    job = run.job
    if job.train.reuse != "latest":
        return None
    if not storage.exists(LATEST_MODEL):
        log.warning("train.reuse: latest, but no model was published yet: training one")
        return None
    latest = json.loads(storage.read_bytes(LATEST_MODEL))
    model = ModelRef(**latest["model"])
    if (model.modality, model.family) != (job.dataset.modality, job.model.family):
        log.warning(
            "train.reuse: the latest model is a %s %s, the job wants %s: training one",
            model.modality,
            model.family,
            job.model.family,
        )
        return None
    if _signature(latest["dataset"]["schema"]) != _signature(dataset.schema):
        log.warning(
            "train.reuse: the dataset's schema changed since run %s: training a new model", latest["run_id"]
        )
        return None
    log.info("train.reuse: generating from the model of run %s (%s)", latest["run_id"], model.uri)
    return ModelRef(**{**asdict(model), "fit": {**model.fit, "reused_from": latest["run_id"]}})


def train(run: Run, *, dataset: DatasetRef) -> ModelRef:
    """Fit the job's model on the snapshot, or reuse one when the job asks to (the model of the same
    data, config and code: ``cached``; the last published one: ``latest``). Checkpoints live with
    the model's key, not the run: a retried task, or a new run after the process was killed, of
    the same data, config and code resumes where training stopped; they go once the model is saved."""
    job = run.job
    storage = run.storage()
    reused = _reusable_model(run, dataset, storage)
    if reused is not None:
        return reused
    cls = model_class(job.dataset.modality, job.model.family)
    key = model_key(run, dataset)
    uri = f"models/{key}"
    if job.train.reuse == "cached" and storage.exists(f"{uri}/fit.json"):
        log.info("train.reuse: cached: same data, model config and code as %s: not training", uri)
        fit = {**json.loads(storage.read_bytes(f"{uri}/fit.json")), "cached": True}
        return ModelRef(uri=uri, family=cls.family, modality=cls.modality, key=key, fit=fit)
    data = read_snapshot(storage, dataset.snapshot, dataset.label)
    model = cls(model_config_for(job), device=resolve_device(job.train.device))
    report = model.fit(data, job.train, CheckpointStore(storage, f"{uri}/checkpoints"))
    model.save(storage, uri)
    storage.write_bytes(f"{uri}/fit.json", json.dumps(report.to_dict()).encode())  # last: the model is whole
    storage.delete_tree(f"{uri}/checkpoints")
    return ModelRef(uri=uri, family=cls.family, modality=cls.modality, key=key, fit=report.to_dict())


def shard_plan(run: Run, dataset: DatasetRef, shard: int) -> list[tuple[dict[str, Any], int, int]]:
    """``(conditions, count, seed)`` for one shard: its share of every part of the sampling plan
    (the first shards take one more when a count does not divide), with a seed derived from the
    run's seed, the shard and the part, so a shard is reproducible on its own."""
    shards = run.job.generate.shards
    out = []
    for part, (conditions, count) in enumerate(sampling_plan(run, dataset)):
        share = count // shards + (1 if shard < count % shards else 0)
        seed = int(np.random.SeedSequence([run.job.generate_seed, shard, part]).generate_state(1)[0])
        if share > 0:
            out.append((conditions, share, seed))
    return out


def image_batch_size(requested: int, shape: tuple[int, ...], max_mb: int) -> int:
    """``generate.batch_size`` for images of ``shape``, clipped (with a warning) so that a batch's
    pixels — float32 as rendered plus uint8 as encoded — stay within ``generate.max_batch_mb``: a
    batch size fit for 28×28 digits would not fit in memory for 512×512 photos."""
    per_image = int(np.prod(shape)) * 5
    limit = max(1, max_mb * 2**20 // per_image)
    if requested > limit:
        log.warning(
            "generate.batch_size: %d images of %s would take %d MiB (generate.max_batch_mb: %d): using %d",
            requested,
            "×".join(map(str, shape)),
            requested * per_image // 2**20,
            max_mb,
            limit,
        )
        return limit
    return requested


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


def generate_shard(run: Run, *, model: ModelRef, dataset: DatasetRef, shard: int) -> GeneratedRef:
    """Stream one shard's samples into its own part file. A shard whose part file is already
    staged (a retried task) is not generated again: part files are written atomically, last."""
    job = run.job
    storage = run.storage()
    part = run.staged(run.shard_part(shard))
    if storage.exists(part):
        with storage.open_read(part) as handle:
            rows = pq.ParquetFile(handle).metadata.num_rows
        log.info("shard %d: already staged (%d samples), not generated again", shard, rows)
        return GeneratedRef(num_samples=rows, seconds=0.0)
    plan = shard_plan(run, dataset, shard)
    if not plan:  # more shards than samples
        return GeneratedRef(num_samples=0, seconds=0.0)
    synthesizer = shared_model(storage, model, resolve_device(job.train.device))
    batch_size = job.generate.batch_size
    if model.modality == "image":
        batch_size = image_batch_size(batch_size, synthesizer.shape, job.generate.max_batch_mb)
    started = time.monotonic()
    batches = itertools.chain.from_iterable(
        synthesizer.sample(count, conditions=conditions, seed=seed, batch_size=batch_size)
        for conditions, count, seed in plan
    )
    with sampling_precision(synthesizer, job.generate.precision):  # the batches are drawn in here
        if model.modality == "tabular":
            count = write_parquet(batches, storage, part, metadata={RUN_ID_KEY: run.run_id.encode()})
        else:
            count = write_images(batches, storage, run, model_name=f"{model.family}:{model.key}", shard=shard)
    return GeneratedRef(num_samples=count, seconds=time.monotonic() - started)


def combine_shards(run: Run, shards: list[GeneratedRef]) -> GeneratedRef:
    """The shards' part files as the run's one data file, then the run's generation (the shards'
    seconds add up: the work, not the wall time). One file because it is published in one atomic
    step; one part is moved, several are streamed into one (``concat_parquet``). Safe to repeat:
    the data file is written atomically before the parts are removed."""
    storage = run.storage()
    data_file = run.staged(run.data_file)
    parts = [run.staged(run.shard_part(i)) for i, ref in enumerate(shards) if ref.num_samples > 0]
    present = [part for part in parts if storage.exists(part)]
    if not storage.exists(data_file):
        if missing := [part for part in parts if part not in present]:  # never publish part of a run
            raise StorageError(f"{storage.url_of(missing[0])}: a shard's data is missing from staging")
        if len(present) == 1:
            storage.move([(present[0], data_file)])
        else:
            started = time.monotonic()
            rows = concat_parquet(storage, present, data_file)
            log.info("combined %d shards' %d rows in %.1f s", len(present), rows, time.monotonic() - started)
    storage.delete(part for part in present if storage.exists(part))
    count = sum(ref.num_samples for ref in shards)
    seconds = sum(ref.seconds for ref in shards)
    log.info(
        "generated %d samples in %d shard(s), %.1f s of work (%.0f/s)",
        count,
        len(shards),
        seconds,
        count / max(seconds, 1e-9),
    )
    return GeneratedRef(num_samples=count, seconds=seconds, shards=len(shards))


def generate(run: Run, *, model: ModelRef, dataset: DatasetRef) -> GeneratedRef:
    """Every shard, one after another (the flow maps shards over its task runner instead)."""
    shards = range(run.job.generate.shards)
    return combine_shards(run, [generate_shard(run, model=model, dataset=dataset, shard=i) for i in shards])


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


def _read_images(storage: Storage, run: Run, manifest: pa.Table) -> ImageData:
    """Decode staged PNGs named by the manifest: proves they are readable and gives pixels."""
    paths = manifest.column("path").to_pylist()
    blobs = storage.read_many([run.staged(path) for path in paths])
    arrays = []
    for path in paths:
        try:
            arrays.append(np.asarray(Image.open(io.BytesIO(blobs[run.staged(path)]))))
        except OSError as exc:
            raise DatasetError(f"{path}: generated image is not a readable PNG ({exc})") from None
    images = np.stack(arrays)
    images = images[..., None] if images.ndim == 3 else images
    return ImageData(images=images, labels=np.asarray(manifest.column("label").to_pylist(), dtype=str))


def _label_similarity(real: np.ndarray, synthetic: np.ndarray) -> float:
    names = sorted(set(real.tolist()) | set(synthetic.tolist()))
    real_share = np.array([np.mean(real == name) for name in names])
    synth_share = np.array([np.mean(synthetic == name) for name in names])
    return float(1 - 0.5 * np.abs(real_share - synth_share).sum())


def _histogram_similarity(real: np.ndarray, synthetic: np.ndarray, bins: int = 32) -> float:
    real_hist = np.bincount(real.ravel() // (256 // bins), minlength=bins) / real.size
    synth_hist = np.bincount(synthetic.ravel() // (256 // bins), minlength=bins) / synthetic.size
    return float(1 - 0.5 * np.abs(real_hist - synth_hist).sum())


#: Pair trends are scored on at most this many synthetic rows: a contingency table needs no more.
PAIR_TREND_ROWS = 20_000
#: Fewer real rows than this meeting a run's conditions are too few to compare shapes with.
MIN_REFERENCE_ROWS = 30


def shape_reference(run: Run, real: pa.Table) -> tuple[pa.Table, list[str]]:
    """``(real rows, columns)`` that a run's column shapes are compared with.

    A conditioned run is compared with the real rows that meet its conditions (all rows when fewer
    than :data:`MIN_REFERENCE_ROWS` do), on the columns it did not fix; ``per_label`` fixes the
    label's distribution, so the label column is left out too.
    """
    from genai_pipeline.quality.tabular import rows_meeting

    conditions = conditions_for_model(run)
    fixed = set(conditions) | ({run.job.dataset.label} if run.job.generate.per_label is not None else set())
    reference = real
    if conditions:
        matching = rows_meeting(real, conditions)
        if matching.num_rows >= MIN_REFERENCE_ROWS:
            reference = matching
        else:
            log.warning(
                "only %d real rows meet generate.conditions: column shapes are compared with all rows",
                matching.num_rows,
            )
    return reference, [name for name in real.column_names if name not in fixed]


def _tabular_metrics(
    run: Run, rows: MetricRows, real: pa.Table, holdout: pa.Table | None, synthetic: pa.Table
) -> tuple[pa.Table, list[str]]:
    """Fidelity, privacy and utility rows of a table run; returns the reference rows and the
    columns compared (what the report charts)."""
    from genai_pipeline.quality.privacy import privacy_scores
    from genai_pipeline.quality.tabular import (
        column_coverage,
        column_shapes,
        new_row_share,
        overall_pair_trend,
        pair_trend_details,
        rows_meeting,
    )
    from genai_pipeline.quality.utility import utility_scores

    reference, compared = shape_reference(run, real)
    shapes = column_shapes(reference.select(compared), synthetic)
    for name, score in shapes.items():
        rows.add("column", name, "column_shape", score)
    rows.add("table", None, "column_shapes", float(np.mean(list(shapes.values()))) if shapes else 0.0)
    for name in compared:
        for metric, value in column_coverage(reference.column(name), synthetic.column(name)).items():
            rows.add("column", name, metric, value)
    rows.add("table", None, "new_row_share", new_row_share(real, synthetic))
    trends = pair_trend_details(reference.select(compared), synthetic.slice(0, PAIR_TREND_ROWS))
    for (first, second), trend in trends.items():
        rows.add("pair", f"{first} × {second}", "pair_trend", trend.score)
    if trends:
        rows.add("table", None, "pair_trends", overall_pair_trend(trends))
    if holdout is None:
        log.info("validate.holdout is 0: no privacy or utility metrics against held-out rows")
        return reference, compared
    privacy = privacy_scores(real, holdout, synthetic, seed=run.job.generate_seed)
    rows.add("table", None, "dcr_share", privacy.dcr_share)
    rows.add("table", None, "memorised_share", privacy.memorised_share)
    rows.add("table", None, "nndr", privacy.nndr)
    rows.add("table", None, "holdout_nndr", privacy.holdout_nndr)
    target = run.job.dataset.label
    conditions = conditions_for_model(run)
    if target is None or target in conditions:
        return reference, compared
    test = rows_meeting(holdout, conditions) if conditions else holdout
    too_few = test.num_rows < MIN_REFERENCE_ROWS
    utility = None if too_few else utility_scores(real, test, synthetic, target, seed=run.job.generate_seed)
    if utility is None:
        log.info("no utility score: too few labelled holdout rows, or a single class, for %s", target)
        return reference, compared
    rows.add("table", target, "tstr", utility.tstr)
    rows.add("table", target, "trtr", utility.trtr)
    rows.add("table", target, "utility_ratio", utility.ratio)
    return reference, compared


def _label_classifier(run: Run, dataset: DatasetRef, real: ImageData, storage: Storage) -> Any:
    """The real-data label classifier behind the image metrics, cached per dataset fingerprint,
    holdout and recipe (a nightly job on unchanged data trains it once)."""
    from safetensors.torch import load as load_tensors
    from safetensors.torch import save as save_tensors

    from genai_pipeline.quality.images import LabelClassifier, train_classifier

    spec = run.job.validate_
    identity = [dataset.fingerprint, spec.holdout, spec.holdout_max_rows, spec.classifier_steps]
    key = content_key([*identity, genai_pipeline.__version__])
    folder = f"models/classifier-{key}"
    if storage.exists(f"{folder}/classifier.json"):
        meta = json.loads(storage.read_bytes(f"{folder}/classifier.json"))
        return LabelClassifier.restore(
            load_tensors(storage.read_bytes(f"{folder}/weights.safetensors")), meta
        )
    classifier = train_classifier(real, min_steps=spec.classifier_steps, seed=run.job.train.seed)
    tensors, meta = classifier.state()
    storage.write_bytes(f"{folder}/weights.safetensors", save_tensors(tensors))
    storage.write_bytes(f"{folder}/classifier.json", json.dumps(meta).encode())  # last: marks it complete
    log.info(
        "label classifier: %.3f held-out accuracy, trained in %.1f s", meta["real_accuracy"], meta["seconds"]
    )
    return classifier


#: images compared at most per side in feature space (k-NN and Fréchet statistics settle by then)
MAX_FEATURE_IMAGES = 10_000


def _image_metrics(
    run: Run,
    rows: MetricRows,
    dataset: DatasetRef,
    real: ImageData,
    holdout: ImageData | None,
    synthetic: ImageData,
) -> None:
    """Pixel statistics, then what a classifier trained on the real images sees: label
    consistency, Fréchet distance and precision/recall/density/coverage in its feature space,
    CAS on the real holdout; memorisation against the training images and repeats within the output."""
    from genai_pipeline.quality.images import (
        classification_accuracy_score,
        duplicate_share,
        frechet_distance,
        manifold_scores,
        memorisation_share,
    )

    spec = run.job.validate_
    rows.add("images", None, "pixel_histogram", _histogram_similarity(real.images, synthetic.images))
    if not conditions_for_model(run):
        rows.add("images", None, "label_distribution", _label_similarity(real.labels, synthetic.labels))
    rows.add("images", None, "memorised_share", memorisation_share(synthetic.images, real.images))
    rows.add("images", None, "duplicate_share", duplicate_share(synthetic.images))
    if len(real.label_names) < 2:
        log.info("a single label: no classifier-based image metrics")
        return
    classifier = _label_classifier(run, dataset, real, run.storage())
    rows.add("images", None, "classifier_accuracy", classifier.real_accuracy)
    rows.add("images", None, "label_consistency", classifier.consistency(synthetic.images, synthetic.labels))
    rng = np.random.default_rng(run.job.generate_seed)
    count = min(len(synthetic.images), len(real.images), MAX_FEATURE_IMAGES)
    real_features = classifier.features(real.images[rng.choice(len(real.images), count, replace=False)])
    synthetic_features = classifier.features(
        synthetic.images[rng.choice(len(synthetic.images), count, replace=False)]
    )
    rows.add("images", None, "frechet_distance", frechet_distance(real_features, synthetic_features))
    for metric, value in manifold_scores(real_features, synthetic_features).items():
        rows.add("images", None, metric, value)
    if holdout is not None:
        cas = classification_accuracy_score(
            synthetic, holdout, seed=run.job.train.seed, min_steps=spec.classifier_steps
        )
        rows.add("images", None, "cas", cas)


def _stage_data_docs(storage: Storage, quality: str, docs: Path) -> None:
    files = {
        path.relative_to(docs).as_posix(): path.read_bytes() for path in docs.rglob("*") if path.is_file()
    }
    storage.put_many({f"{quality}/data_docs/{rel}": blob for rel, blob in files.items()})


def validate(run: Run, *, dataset: DatasetRef, generated: GeneratedRef) -> QualityReport:
    """Run the job's GX suite and the metrics on the staged output; stage results, Data Docs and
    the HTML report beside it."""
    from genai_pipeline.quality.expectations import job_suite, load_suite
    from genai_pipeline.quality.report import ReportInput, render_report

    job = run.job
    spec = job.validate_
    storage = run.storage()
    quality = run.staged(run.partition("quality"))
    real = read_snapshot(storage, dataset.snapshot, dataset.label)
    holdout = read_snapshot(storage, dataset.holdout, dataset.label) if dataset.holdout else None
    base = load_suite(storage.read_bytes(_suite_file(run)), "suite.json")
    suite = job_suite(base, spec, conditions_for_model(run), dataset.modality)
    staged = sample_rows(storage, [run.staged(run.data_file)], spec.sample_rows, seed=job.generate_seed)
    rows = MetricRows(run.run_id, spec)
    with tempfile.TemporaryDirectory(prefix="data-docs-") as docs:
        if isinstance(real, TabularData):
            synthetic: Dataset = TabularData(staged, dataset.label)
            gx_result = _run_suite(suite, synthetic, Path(docs))
            held = holdout.table if isinstance(holdout, TabularData) else None
            reference, compared = _tabular_metrics(run, rows, real.table, held, staged)
            charts: dict[str, Any] = {
                "real": reference.select(compared),
                "synthetic": staged.select(compared),
            }
        else:
            synthetic = _read_images(storage, run, staged)
            gx_result = _run_suite(suite, synthetic, Path(docs))
            held_images = holdout if isinstance(holdout, ImageData) else None
            _image_metrics(run, rows, dataset, real, held_images, synthetic)
            charts = {
                "real_images": (real.images, real.labels),
                "synthetic_images": (synthetic.images, synthetic.labels),
            }
        _stage_data_docs(storage, quality, Path(docs))
    failures = gx_result.failures + rows.misses("error")
    warnings = gx_result.warnings + rows.misses("warning")
    status = "failed" if failures else ("passed with warnings" if warnings else "passed")
    report = QualityReport(
        passed=not failures,
        failures=failures,
        warnings=warnings,
        metrics=rows.rows,
        expectations_evaluated=gx_result.evaluated,
        expectations_failed=gx_result.failed,
    )
    storage.write_bytes(f"{quality}/expectations.json", json.dumps(gx_result.payload, indent=1).encode())
    write_table(rows.table(), storage, f"{quality}/metrics.parquet")
    content = ReportInput(
        title=f"{job.name} — {run.run_date}",
        status=status,
        summary=_report_summary(run, dataset, generated),
        metrics=rows.rows,
        expectations=gx_result.payload,
        **charts,
    )
    storage.write_bytes(run.staged(run.report_file), render_report(content).encode())
    log.info(
        "validation %s: %d expectations, %d failed; %s",
        status,
        report.expectations_evaluated,
        report.expectations_failed,
        "; ".join(failures + warnings) or "all metrics within thresholds",
    )
    for warning in warnings:
        log.warning("quality warning (the run publishes, flagged): %s", warning)
    return report


def _report_summary(run: Run, dataset: DatasetRef, generated: GeneratedRef) -> dict[str, str]:
    """The facts at the top of the report."""
    return {
        "run id": run.run_id,
        "model": f"{run.job.model.family} ({dataset.modality})",
        "dataset": f"{dataset.source}: {dataset.num_rows} rows, {dataset.holdout_rows} held out",
        "generated": f"{generated.num_samples} samples in {generated.seconds:.1f} s",
        "seed": str(run.job.generate_seed),
    }


def export(
    run: Run, *, dataset: DatasetRef, model: ModelRef, generated: GeneratedRef, report: QualityReport
) -> PublishedRun:
    """Publish the validated run (or refuse, naming the failed checks)."""
    return publish(run, dataset=dataset, model=model, generated=generated, report=report)


#: metric scopes shown in the run summary (per-column and per-pair rows are in the report)
HEADLINE_SCOPES = ("table", "images")


def browser_url(url: str) -> str:
    """A URL a browser opens: local paths become ``file://`` URLs."""
    return url if "://" in url else Path(url).resolve().as_uri()


def summary_markdown(run: Run, manifest: dict[str, Any]) -> str:
    """A short report of a run for a Prefect artifact or a terminal."""
    status = manifest.get("status", "unknown")
    lines = [f"# {run.job.name} — {run.run_date} — {status}", "", f"- run id: `{run.run_id}`"]
    if "model" in manifest:
        fit = manifest["model"]["fit"]
        lines.append(
            f"- model: {manifest['model']['family']} ({manifest['model']['modality']}), "
            f"{fit['steps']} steps in {fit['seconds']:.1f} s on {fit['device']}"
        )
    if "dataset" in manifest:
        ds = manifest["dataset"]
        lines.append(
            f"- dataset: `{ds['source']}`, {ds['num_rows']} rows ({ds.get('holdout_rows', 0)} held out), "
            f"fingerprint `{ds['fingerprint']}`"
        )
    if "generated" in manifest:
        lines.append(f"- generated: {manifest['generated']['num_samples']} samples")
    if "quality" in manifest:
        q = manifest["quality"]
        evaluated, failed = q["expectations_evaluated"], q["expectations_failed"]
        lines.append(f"- expectations: {evaluated - failed}/{evaluated} passed")
        lines += [f"- **warning:** {warning}" for warning in q.get("warnings", [])]
        lines += ["", "| metric | column | value | threshold | passed |", "|---|---|---|---|---|"]
        for m in q["metrics"]:
            if m["scope"] not in HEADLINE_SCOPES:
                continue
            threshold = (
                "" if m["threshold"] is None else f"{'≥' if m['bound'] == 'min' else '≤'} {m['threshold']}"
            )
            passed = "yes" if m["passed"] else ("warning" if m["severity"] == "warning" else "NO")
            lines.append(
                f"| {m['metric']} | {m['column'] or ''} | {m['value']:.3f} | {threshold} | {passed} |"
            )
    if manifest.get("error"):
        lines += ["", f"**Error:** {manifest['error']}"]
    if "location" in manifest:
        lines += ["", f"Output: `{manifest['location']}`"]
    if "report" in manifest:
        lines += ["", f"Quality report: [{manifest['report']}]({browser_url(manifest['report'])})"]
    return "\n".join(lines)
