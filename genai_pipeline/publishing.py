"""Publishing a validated run, or recording a failed one: the only code that writes where readers look.

A run is promoted while it holds the job's publish lock for its run date (``locks.publish_lock``: a
second run of the same job and date waits, never interleaves). Its images and quality files go
first, under names of their own (image files are named by the run's sample ids, quality files sit
in ``quality/run_date=…/run=<run id>/``), so nothing a reader led by the live data file looks at
changes; then the run's one data file replaces the live one in one atomic step (a rename
locally, a single server-side copy on S3), and that switch is what makes the run's images and
quality live; then the other runs' files of the same partitions are removed and the manifest is
written. What a reader sees is therefore always one run's, whenever the endpoint fails.

The list of files to promote, and the run the data switch replaces, are fixed in staging before
the first move, so a retried export resumes where a failed one stopped, and gives up rather than
overwrite when another run has published in between. A run never replaces a newer one (by the
start time in their run ids), and ``models/latest.json`` never goes back to an earlier run date.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import posixpath
from contextlib import AbstractContextManager
from dataclasses import asdict
from typing import Any

import pyarrow.parquet as pq

import genai_pipeline
from genai_pipeline.errors import QualityGateFailed, RunSuperseded
from genai_pipeline.locks import Lease, publish_lock
from genai_pipeline.refs import DatasetRef, GeneratedRef, ModelRef, PublishedRun, QualityVerdict
from genai_pipeline.runs import LATEST_MODEL, PARTITION_KEY, PRIVATE_RUNS, RUN_ID_KEY, Run, run_started
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


def _publish_plan(storage: Storage, run: Run, staged: dict[str, int], live: str | None) -> dict[str, Any]:
    """``{"files": {rel: size}, "replaces": run id}``: the files this run publishes and the live run
    its data switch replaces, fixed before the first move. A retried export after a partial move
    knows the files it already promoted (and neither loses nor deletes them), and can tell whether
    another run published in between."""
    plan = run.staged(PUBLISH_PLAN)
    if storage.exists(plan):
        return json.loads(storage.read_bytes(plan))
    files = {rel: size for rel, size in staged.items() if rel.split("/")[0] in PUBLISHED_PREFIXES}
    fixed = {"files": files, "replaces": live}
    storage.write_bytes(plan, json.dumps(fixed).encode())
    return fixed


def _started_after(first: str | None, second: str | None) -> bool:
    """Whether run ``first`` started after run ``second``: by the start time in their ids (run ids
    given by hand carry none, and are not ordered)."""
    if first is None or second is None:
        return False
    one, two = run_started(first), run_started(second)
    return one is not None and two is not None and (one, first) > (two, second)


def _check_not_superseded(run: Run, live: str | None, replaces: str | None) -> None:
    """Give up, before anything moves, when the live data is a newer run's, or not the run this
    publish set out to replace (another run published while this one was away): overwriting it
    would put an older run back in front of readers."""
    if live in (run.run_id, replaces) and not _started_after(live, run.run_id):
        return
    raise RunSuperseded(
        f"job {run.job.name}, {PARTITION_KEY} {run.run_date}: run {live} published after this run "
        f"{run.run_id} set out to (or started later): {run.run_id} is not published, {live} stays live"
    )


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
            if manifest["status"] != "published":
                raise RunSuperseded(f"run {run.run_id} was recorded {manifest['status']}: not published")
        else:
            manifest = _promote(run, storage, lease, dataset, model, generated, verdict)
        _remove_real_data_published_before(storage)
    _drop_run(run, storage)
    log.info("published %d samples to %s", generated.num_samples, storage.url_of(run.data_location))
    return PublishedRun(
        run_id=run.run_id,
        run_date=run.run_date,
        data_url=storage.url_of(run.data_location),
        manifest_url=storage.url_of(run.manifest),
        num_samples=generated.num_samples,
        files={entry["path"]: entry["size"] for entry in manifest["files"]},
        manifest=manifest,
    )


def _drop_run(run: Run, storage: Storage, *, sweep: bool = True) -> None:
    """A finished run's staging area and its private folder in the workspace go, and (``sweep``)
    so do those of runs abandoned long ago."""
    workspace = run.workspace()
    storage.delete_tree(run.staging)
    workspace.delete_tree(run.private_area)
    if sweep:
        _sweep_abandoned(storage, "_staging")
        _sweep_abandoned(workspace, PRIVATE_RUNS)


def _sweep_abandoned(storage: Storage, folder: str) -> None:
    """Remove the per-run folders (staging areas, private folders) of runs that started more than
    :data:`ABANDONED_AFTER` ago: runs whose failure could not even be recorded (storage gone at the
    end too). Invisible to readers, but they would pile up (and the workspace's hold real rows); no
    run lasts that long, so none still in progress is touched."""
    cutoff = dt.datetime.now(dt.UTC) - ABANDONED_AFTER
    for run_id in storage.list_dirs(folder):
        started = run_started(run_id)  # None: not a run's folder, left alone
        if started is not None and started < cutoff:
            log.warning("removing %s/%s of a run abandoned since %s", folder, run_id, started.date())
            storage.delete_tree(f"{folder}/{run_id}")


#: where versions before the workspace split kept real data beside the output: the source cache, models
#: (whose files held real category values) and the reviewed suite (real value sets)
LEGACY_REAL_DATA = ("datasets", "models", "expectations")


def _remove_real_data_published_before(storage: Storage) -> None:
    """Readers granted the output must not reach real data through it: what earlier versions kept
    there (see :data:`LEGACY_REAL_DATA`) is removed at the first publish, with a warning. The
    workspace has its own copies by then (this run wrote them)."""
    for folder in LEGACY_REAL_DATA:
        if storage.list_files(folder):
            log.warning(
                "removing %s: earlier versions kept real data there, beside the published output "
                "(it now lives in export.workspace)",
                storage.url_of(folder),
            )
            storage.delete_tree(folder)


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
    live = live_run_id(storage, run)
    plan = _publish_plan(storage, run, staged, live)
    _check_not_superseded(run, live, plan["replaces"])
    promoted = plan["files"]
    moves = [rel for rel in sorted(promoted) if rel in staged]
    storage.move((run.staged(rel), rel) for rel in moves if not rel.startswith("data/"))
    manifest = _manifest(
        run,
        "published",
        dataset=asdict(dataset),
        model=asdict(model),
        generated={
            "num_samples": generated.num_samples,
            "seconds": generated.seconds,
            **({"tables": generated.tables} if generated.tables else {}),
        },
        quality=verdict.record(),
        warnings=verdict.warnings,
        files=[{"path": rel, "size": size} for rel, size in sorted(promoted.items())],
        location=storage.url_of(run.data_location),
        report=storage.url_of(run.unstaged(verdict.report_file)),
    )
    storage.write_bytes(run.staged(PENDING_MANIFEST), json.dumps(manifest, default=str).encode())
    lease.check()  # the data switch is the publish: only while this run holds the lock
    # the run's data file on its own, last: of several tables, its footer marks them all switched
    # (live_run_id; S3 copies a batch of files concurrently, in no order)
    tables = [rel for rel in moves if rel.startswith("data/") and rel != run.data_file]
    storage.move((run.staged(rel), rel) for rel in tables)
    storage.move((run.staged(rel), rel) for rel in moves if rel == run.data_file)
    return _finish(run, storage, promoted, manifest)


def _finish(run: Run, storage: Storage, promoted: dict[str, int], manifest: dict[str, Any]) -> dict[str, Any]:
    """After the data switch: remove the partitions' leftovers, point ``latest`` at this run's
    model, write the manifest last."""
    stale = [
        rel
        for partition in run.published_partitions
        for rel in storage.list_files(partition)
        if rel not in promoted
    ]
    storage.delete(stale)
    own = posixpath.basename(run.quality)
    for folder in storage.list_dirs(run.partition("quality")):  # other runs' (emptied) folders
        if folder != own:
            storage.delete_tree(f"{run.partition('quality')}/{folder}")
    _point_latest_at(run, run.workspace(), manifest)
    storage.write_bytes(run.manifest, json.dumps(manifest, indent=1, default=str).encode())
    return manifest


def _point_latest_at(run: Run, workspace: Storage, manifest: dict[str, Any]) -> None:
    """``models/latest.json`` (in the workspace, beside the models) follows the latest run date (and,
    for one date, the latest run): a backfill of an earlier date does not put its model in front of
    ``train.reuse: latest``."""
    if workspace.exists(LATEST_MODEL):
        current = json.loads(workspace.read_bytes(LATEST_MODEL))
        if current["run_date"] > run.run_date or (
            current["run_date"] == run.run_date and _started_after(current["run_id"], run.run_id)
        ):
            log.info("models/latest.json stays with run %s (%s)", current["run_id"], current["run_date"])
            return
    latest = {key: manifest[key] for key in ("model", "dataset", "run_id", "run_date")}
    workspace.write_bytes(LATEST_MODEL, json.dumps(latest, indent=1, default=str).encode())


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
    if storage.exists(run.staged(PENDING_MANIFEST)):
        with _lock(run, storage):  # the live run is judged under the lock: no other publish moves it
            switched = live_run_id(storage, run) == run.run_id
            if switched:
                promoted = json.loads(storage.read_bytes(run.staged(PUBLISH_PLAN)))["files"]
                pending = json.loads(storage.read_bytes(run.staged(PENDING_MANIFEST)))
                manifest = _finish(run, storage, promoted, pending)
        if switched:
            _drop_run(run, storage)
            log.warning("%s failed after its data was switched in: publish finished (%s)", run.run_id, error)
            return manifest
    staged = _staged_files(storage, run)
    kept = {rel: f"_runs/{run.run_id}/{rel}" for rel in staged if rel.startswith("quality/")}
    try:
        storage.move((run.staged(rel), dest) for rel, dest in kept.items())
    finally:  # before the manifest: on a full disk, dropping the staging makes room for it
        _drop_run(run, storage, sweep=False)
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
