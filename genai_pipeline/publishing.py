"""Publishing a validated run, or recording a failed one: the only code that writes where readers look.

A run is promoted while it holds the job's publish lock for its run date (``locks.publish_lock``: a
second run of the same job and date waits, never interleaves): images and quality files first,
then the run's one data file in one atomic replace (a rename locally, a single server-side copy on
S3), then the previous run's leftovers of the same partitions are removed and the manifest is
written. The list of files to promote is fixed in staging before the first move, so a retried
export resumes where a failed one stopped. Readers of ``data/`` therefore see the previous run or
this one, never a mix, a partial run or a failed one, whenever the endpoint fails.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from contextlib import AbstractContextManager
from dataclasses import asdict
from typing import Any

import pyarrow.parquet as pq

import genai_pipeline
from genai_pipeline.errors import QualityGateFailed
from genai_pipeline.locks import Lease, publish_lock
from genai_pipeline.refs import DatasetRef, GeneratedRef, ModelRef, PublishedRun, QualityVerdict
from genai_pipeline.runs import LATEST_MODEL, PARTITION_KEY, RUN_ID_KEY, Run, run_started
from genai_pipeline.storage import Storage

log = logging.getLogger(__name__)

PUBLISHED_PREFIXES = ("data", "images", "quality")
#: a staging area older than this belongs to a run that died without recording its failure
ABANDONED_AFTER = dt.timedelta(days=7)
#: the files a run publishes, fixed in its staging before the first is moved
PUBLISH_PLAN = "_publish.json"
#: the run's manifest, staged before its data is switched in (see :func:`record_failure`)
PENDING_MANIFEST = "_manifest.json"


def _staged_files(storage: Storage, run: Run) -> dict[str, int]:
    """The run's staged files, keyed by where they go (their path relative to the staging area)."""
    prefix = run.staging + "/"
    return {rel.removeprefix(prefix): size for rel, size in storage.list_files(run.staging).items()}


def _manifest(run: Run, status: str, **sections: Any) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "job": run.job.name,
        "run_date": run.run_date,
        "status": status,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(),
        "seed": run.job.train.seed,
        "spec": run.job.public_dict(),
        "versions": {"genai_pipeline": genai_pipeline.__version__},
        **sections,
    }


def _publish_plan(storage: Storage, run: Run, staged: dict[str, int]) -> dict[str, int]:
    """The files this run publishes, fixed before the first is moved: a retried export after a
    partial move knows the files it already promoted, and neither loses nor deletes them."""
    plan = run.staged(PUBLISH_PLAN)
    if storage.exists(plan):
        return json.loads(storage.read_bytes(plan))
    promoted = {rel: size for rel, size in staged.items() if rel.split("/")[0] in PUBLISHED_PREFIXES}
    storage.write_bytes(plan, json.dumps(promoted).encode())
    return promoted


def publish(
    run: Run,
    *,
    dataset: DatasetRef,
    model: ModelRef,
    generated: GeneratedRef,
    verdict: QualityVerdict,
) -> PublishedRun:
    """Promote a validated run from staging into place and write its manifest last."""
    if not verdict.passed:
        raise QualityGateFailed(verdict.failures)
    storage = run.storage()
    with _lock(run, storage) as lease:
        if storage.exists(run.manifest):  # a retry after the manifest was written: published already
            manifest = json.loads(storage.read_bytes(run.manifest))
        else:
            manifest = _promote(run, storage, lease, dataset, model, generated, verdict)
    storage.delete_tree(run.staging)
    _sweep_abandoned_staging(storage)
    log.info("published %d samples to %s", generated.num_samples, storage.url_of(run.partition("data")))
    return PublishedRun(
        run_id=run.run_id,
        run_date=run.run_date,
        data_url=storage.url_of(run.partition("data")),
        manifest_url=storage.url_of(run.manifest),
        num_samples=generated.num_samples,
        files={entry["path"]: entry["size"] for entry in manifest["files"]},
        manifest=manifest,
    )


def _sweep_abandoned_staging(storage: Storage) -> None:
    """Remove the staging areas of runs that started more than :data:`ABANDONED_AFTER` ago: runs
    whose failure could not even be recorded (storage gone at the end too). Invisible to readers,
    but they would pile up; no run lasts that long, so none still in progress is touched."""
    cutoff = dt.datetime.now(dt.UTC) - ABANDONED_AFTER
    for run_id in storage.list_dirs("_staging"):
        started = run_started(run_id)  # None: not a run's staging area, left alone
        if started is not None and started < cutoff:
            log.warning("removing the staging area of run %s, abandoned since %s", run_id, started.date())
            storage.delete_tree(f"_staging/{run_id}")


def _promote(
    run: Run,
    storage: Storage,
    lease: Lease,
    dataset: DatasetRef,
    model: ModelRef,
    generated: GeneratedRef,
    verdict: QualityVerdict,
) -> dict[str, Any]:
    """Move the staged files into place, remove the partitions' leftovers, write the manifest last.
    Every step can be repeated: a retried export after any of them ends in the same state."""
    staged = _staged_files(storage, run)
    promoted = _publish_plan(storage, run, staged)
    moves = [rel for rel in sorted(promoted) if rel in staged]
    storage.move((run.staged(rel), rel) for rel in moves if not rel.startswith("data/"))
    manifest = _manifest(
        run,
        "published",
        dataset=asdict(dataset),
        model=asdict(model),
        generated={"num_samples": generated.num_samples, "seconds": generated.seconds},
        quality=verdict.record(),
        warnings=verdict.warnings,
        files=[{"path": rel, "size": size} for rel, size in sorted(promoted.items())],
        location=storage.url_of(run.partition("data")),
        report=storage.url_of(run.unstaged(verdict.report_file)),
    )
    storage.write_bytes(run.staged(PENDING_MANIFEST), json.dumps(manifest, default=str).encode())
    lease.check()  # the data switch is the publish: only while this run holds the lock
    storage.move((run.staged(rel), rel) for rel in moves if rel.startswith("data/"))
    return _finish(run, storage, promoted, manifest)


def _finish(run: Run, storage: Storage, promoted: dict[str, int], manifest: dict[str, Any]) -> dict[str, Any]:
    """After the data switch: remove the partitions' leftovers, point ``latest`` at this run's
    model, write the manifest last."""
    stale = [
        rel
        for prefix in PUBLISHED_PREFIXES
        for rel in storage.list_files(run.partition(prefix))
        if rel not in promoted
    ]
    storage.delete(stale)
    latest = {key: manifest[key] for key in ("model", "dataset", "run_id", "run_date")}
    storage.write_bytes(LATEST_MODEL, json.dumps(latest, indent=1, default=str).encode())
    storage.write_bytes(run.manifest, json.dumps(manifest, indent=1, default=str).encode())
    return manifest


def _lock(run: Run, storage: Storage) -> AbstractContextManager[Lease]:
    """The job's publish lock for the run's date."""
    return publish_lock(
        storage,
        f"_locks/{PARTITION_KEY}={run.run_date}.lock",
        run.run_id,
        timeout=run.job.export.lock_timeout_s,
        what=f"job {run.job.name}, {PARTITION_KEY} {run.run_date}",
    )


def live_run_id(storage: Storage, run: Run) -> str | None:
    """The run whose data a reader of the run's date sees now (from its data file's footer)."""
    if not storage.exists(run.data_file):
        return None
    with storage.open_read(run.data_file) as handle:
        metadata = pq.ParquetFile(handle).schema_arrow.metadata or {}
    return metadata[RUN_ID_KEY].decode() if RUN_ID_KEY in metadata else None


def record_failure(run: Run, error: BaseException) -> dict[str, Any]:
    """Keep the failed run's quality results for review, write a failed manifest, drop staging.

    Nothing of a failed run reaches ``data/``, ``images/`` or ``quality/``. One exception: an export
    that failed *after* its data switch (the endpoint died, and stayed away longer than the
    export's retries) has published, whole and validated, as far as readers can tell; then this
    finishes the publish (leftovers, ``latest``, the manifest staged before the switch) and returns
    the published manifest, rather than call failed a run whose data readers see.
    """
    storage = run.storage()
    if storage.exists(run.staged(PENDING_MANIFEST)) and live_run_id(storage, run) == run.run_id:
        with _lock(run, storage):
            promoted = json.loads(storage.read_bytes(run.staged(PUBLISH_PLAN)))
            manifest = _finish(
                run, storage, promoted, json.loads(storage.read_bytes(run.staged(PENDING_MANIFEST)))
            )
        storage.delete_tree(run.staging)
        log.warning("%s failed after its data was switched in: publish finished (%s)", run.run_id, error)
        return manifest
    staged = _staged_files(storage, run)
    kept = {rel: f"_runs/{run.run_id}/{rel}" for rel in staged if rel.startswith("quality/")}
    try:
        storage.move((run.staged(rel), dest) for rel, dest in kept.items())
    finally:  # before the manifest: on a full disk, dropping the staging makes room for it
        storage.delete_tree(run.staging)
    failures = getattr(error, "failures", None)
    manifest = _manifest(
        run,
        "failed",
        error=f"{type(error).__name__}: {error}",
        failures=failures,
        files=[{"path": dest, "size": staged[rel]} for rel, dest in sorted(kept.items())],
    )
    if run.report_file in kept:
        manifest["report"] = storage.url_of(kept[run.report_file])
    storage.write_bytes(run.manifest, json.dumps(manifest, indent=1, default=str).encode())
    return manifest
