"""The five stages of a nightly job, as plain functions with keyword-only arguments.

Each takes the :class:`~genai_pipeline.runs.Run` and the small references the previous stages
returned, reads and writes large data through storage, and returns a small reference in turn.
Prefect tasks in ``flows/`` wrap exactly one of these each; tests and notebooks call them directly.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

import genai_pipeline
from genai_pipeline.datasets.base import (
    Dataset,
    DatasetRef,
    ImageData,
    TabularData,
    describe_schema,
    fingerprint,
    label_values,
    read_snapshot,
    write_snapshot,
)
from genai_pipeline.datasets.sources import read_dataset
from genai_pipeline.encoders.tabular import TableEncoder
from genai_pipeline.errors import ConfigError, DatasetError
from genai_pipeline.generation import write_images, write_parquet
from genai_pipeline.models import load_model, model_class, model_config_for
from genai_pipeline.models.base import require_condition_values
from genai_pipeline.runs import (
    LATEST_MODEL,
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

__all__ = ["export", "generate", "ingest", "record_failure", "summary_markdown", "train", "validate"]


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
    for key, value in conditions.items():
        if key == label:
            _require_known(f"generate.conditions.{key}", value, known)
        elif isinstance(data, ImageData):
            raise ConfigError(f"generate.conditions.{key}: images can be conditioned on their label only")
    if isinstance(data, TabularData) and set(conditions) - {label}:
        # the columns a model will be asked for, checked as the model will check them
        from genai_pipeline.models.tabular_common import check_conditions

        try:
            encoder = TableEncoder.fit(data.table, condition=label)
        except ValueError as exc:
            raise DatasetError(f"dataset: {exc}") from None
        reveal_rate = model_config_for(run.job).reveal_rate  # type: ignore[attr-defined]
        check_conditions(encoder, conditions, f"{run.job.model.family} model", reveal_rate)
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


def ingest(run: Run) -> DatasetRef:
    """Read the dataset, check the job's conditions against it, snapshot and fingerprint it."""
    spec = run.job.dataset
    started = time.monotonic()
    data = read_dataset(spec)
    _check_generate_spec(run, data)
    snapshot = run.staged("input/dataset.parquet")
    write_snapshot(data, run.storage(), snapshot)
    ref = DatasetRef(
        source=spec.uri,
        snapshot=snapshot,
        modality=data.modality,
        fingerprint=fingerprint(data),
        num_rows=data.num_rows,
        schema=describe_schema(data),
        label=spec.label,
    )
    log.info(
        "ingested %d %s from %s (fingerprint %s) in %.1f s",
        ref.num_rows,
        "rows" if ref.modality == "tabular" else "images",
        spec.uri,
        ref.fingerprint,
        time.monotonic() - started,
    )
    return ref


def model_key(run: Run, dataset: DatasetRef) -> str:
    """Dataset content + model config + training settings + code version → where the model lives."""
    job = run.job
    identity = {
        "dataset": dataset.fingerprint,
        "model": job.model.model_dump(mode="json"),
        "train": job.train.model_dump(mode="json"),
        "version": genai_pipeline.__version__,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


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
    """Fit the job's model on the snapshot (or reuse the last published one, when asked to);
    checkpoints let a retried task resume."""
    job = run.job
    storage = run.storage()
    reused = _reusable_model(run, dataset, storage)
    if reused is not None:
        return reused
    data = read_snapshot(storage, dataset.snapshot, dataset.label)
    cls = model_class(job.dataset.modality, job.model.family)
    model = cls(model_config_for(job), device=resolve_device(job.train.device))
    report = model.fit(data, job.train, CheckpointStore(storage, run.staged("checkpoints")))
    key = model_key(run, dataset)
    uri = f"models/{key}"
    model.save(storage, uri)
    return ModelRef(uri=uri, family=cls.family, modality=cls.modality, key=key, fit=report.to_dict())


def generate(run: Run, *, model: ModelRef, dataset: DatasetRef) -> GeneratedRef:
    """Stream samples from the trained model into the run's staging area."""
    job = run.job
    storage = run.storage()
    synthesizer = load_model(storage, model.uri, resolve_device(job.train.device))
    started = time.monotonic()
    batches = itertools.chain.from_iterable(
        synthesizer.sample(
            count, conditions=conditions, seed=job.generate_seed + part, batch_size=job.generate.batch_size
        )
        for part, (conditions, count) in enumerate(sampling_plan(run, dataset))
    )
    if model.modality == "tabular":
        count = write_parquet(batches, storage, run.staged(run.data_file))
    else:
        count = write_images(batches, storage, run, model_name=f"{model.family}:{model.key}")
    seconds = time.monotonic() - started
    log.info("generated %d samples in %.1f s (%.0f/s)", count, seconds, count / max(seconds, 1e-9))
    return GeneratedRef(num_samples=count, seconds=seconds)


def _read_rows(storage: Storage, rel: str, limit: int) -> pa.Table:
    """The first ``limit`` rows of a Parquet file, reading only the row groups needed."""
    with storage.open_read(rel) as handle:
        parquet = pq.ParquetFile(handle)
        groups, rows = [], 0
        for index in range(parquet.num_row_groups):
            if rows >= limit:
                break
            groups.append(index)
            rows += parquet.metadata.row_group(index).num_rows
        table = parquet.read_row_groups(groups) if groups else parquet.schema_arrow.empty_table()
    return table.slice(0, limit)


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


def _metric(
    run: Run, scope: str, column: str | None, metric: str, value: float, threshold: float | None
) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "scope": scope,
        "column": column,
        "metric": metric,
        "value": float(value),
        "threshold": threshold,
        "passed": threshold is None or value >= threshold,
    }


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


def validate(run: Run, *, dataset: DatasetRef, generated: GeneratedRef) -> QualityReport:
    """Run the GX suite derived from the real data and the metrics; stage the results."""
    from genai_pipeline.quality.expectations import derive_suite, image_stats, run_suite, table_frame
    from genai_pipeline.quality.tabular import (
        column_coverage,
        column_shapes,
        new_row_share,
        overall_pair_trend,
        pair_trend_details,
    )

    job = run.job
    spec = job.validate_
    storage = run.storage()
    real = read_snapshot(storage, dataset.snapshot, dataset.label)
    conditions = conditions_for_model(run)
    suite = derive_suite(real, spec, conditions, name=job.name)
    staged = _read_rows(storage, run.staged(run.data_file), spec.sample_rows)
    metrics: list[dict[str, Any]] = []
    if isinstance(real, TabularData):
        passed, failures, results = run_suite(suite, table_frame(staged))
        reference, compared = shape_reference(run, real.table)
        shapes = column_shapes(reference.select(compared), staged)
        metrics += [
            _metric(run, "column", name, "column_shape", score, None) for name, score in shapes.items()
        ]
        overall = float(np.mean(list(shapes.values()))) if shapes else 0.0
        metrics.append(_metric(run, "table", None, "column_shapes", overall, spec.min_column_shapes))
        metrics += [
            _metric(run, "column", name, metric, value, None)
            for name in compared
            for metric, value in column_coverage(reference.column(name), staged.column(name)).items()
        ]
        metrics.append(
            _metric(run, "table", None, "new_row_share", new_row_share(real.table, staged), spec.min_new_rows)
        )
        trends = pair_trend_details(reference.select(compared), staged.slice(0, PAIR_TREND_ROWS))
        metrics += [
            _metric(run, "pair", f"{first} × {second}", "pair_trend", trend.score, None)
            for (first, second), trend in trends.items()
        ]
        if trends:
            overall = overall_pair_trend(trends)
            metrics.append(_metric(run, "table", None, "pair_trends", overall, spec.min_pair_trends))
    else:
        synthetic = _read_images(storage, run, staged)
        passed, failures, results = run_suite(suite, image_stats(synthetic.images, synthetic.labels))
        metrics.append(
            _metric(
                run,
                "images",
                None,
                "pixel_histogram",
                _histogram_similarity(real.images, synthetic.images),
                None,
            )
        )
        if not conditions:
            metrics.append(
                _metric(
                    run,
                    "images",
                    None,
                    "label_distribution",
                    _label_similarity(real.labels, synthetic.labels),
                    None,
                )
            )
    failures += [
        f"{m['metric']}{'(' + m['column'] + ')' if m['column'] else ''}={m['value']:.3f} < {m['threshold']}"
        for m in metrics
        if not m["passed"]
    ]
    quality = run.staged(run.partition("quality"))
    storage.write_bytes(f"{quality}/expectations.json", json.dumps(results, indent=1).encode())
    with storage.open_atomic(f"{quality}/metrics.parquet") as handle:
        pq.write_table(pa.Table.from_pylist(metrics, schema=METRICS_SCHEMA), handle)
    evaluated = len(results["results"]["expectations"])
    report = QualityReport(
        passed=not failures,
        failures=failures,
        metrics=metrics,
        expectations_evaluated=evaluated,
        expectations_failed=sum(not item["success"] for item in results["results"]["expectations"]),
    )
    log.info(
        "validation %s: %d expectations, %d failed; %s",
        "passed" if report.passed else "FAILED",
        evaluated,
        report.expectations_failed,
        "; ".join(failures) or "all metrics above thresholds",
    )
    return report


METRICS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("scope", pa.string()),
        ("column", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("threshold", pa.float64()),
        ("passed", pa.bool_()),
    ]
)


def export(
    run: Run, *, dataset: DatasetRef, model: ModelRef, generated: GeneratedRef, report: QualityReport
) -> PublishedRun:
    """Publish the validated run (or refuse, naming the failed checks)."""
    return publish(run, dataset=dataset, model=model, generated=generated, report=report)


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
        lines.append(f"- dataset: `{ds['source']}`, {ds['num_rows']} rows, fingerprint `{ds['fingerprint']}`")
    if "generated" in manifest:
        lines.append(f"- generated: {manifest['generated']['num_samples']} samples")
    if "quality" in manifest:
        q = manifest["quality"]
        evaluated, failed = q["expectations_evaluated"], q["expectations_failed"]
        lines.append(f"- expectations: {evaluated - failed}/{evaluated} passed")
        lines += ["", "| metric | column | value | threshold | passed |", "|---|---|---|---|---|"]
        for m in q["metrics"]:
            threshold = "" if m["threshold"] is None else m["threshold"]
            passed = "yes" if m["passed"] else "NO"
            lines.append(
                f"| {m['metric']} | {m['column'] or ''} | {m['value']:.3f} | {threshold} | {passed} |"
            )
    if manifest.get("error"):
        lines += ["", f"**Error:** {manifest['error']}"]
    if "location" in manifest:
        lines += ["", f"Output: `{manifest['location']}`"]
    return "\n".join(lines)
