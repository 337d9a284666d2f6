"""A run: its identity, the output layout, and how it is published or recorded as failed.

Output contract (what analysts and CI rely on), under ``{output}/{job}/``::

    data/run_date=YYYY-MM-DD/part-00000.parquet     rows, or the image manifest (one file a run)
    images/run_date=…/label=…/<sample_id>.png       images (labels percent-encoded in paths)
    quality/run_date=…/{metrics.parquet, report.html, expectations.json, suite.json, data_docs/}
    models/<key>/{model.json, weights.safetensors}  saved models
    models/classifier-<key>/…                       the image metrics' classifier, per dataset
    expectations/suite.json                         the job's reviewed suite (validate.suite: saved)
    datasets/source-<stamp>.parquet                 the source as last read (dataset.cache)
    _runs/<run_id>.json                             manifest, written last
    _staging/<run_id>/…                             invisible to readers ('_' prefix)

A run writes below ``_staging/<run_id>/`` with the same relative layout, is validated there, and
is promoted while it holds the job's publish lock for its run date (``locks.publish_lock``: a second
run of the same job and date waits, never interleaves): images and quality files first, then the
run's one data file in one atomic replace (a rename locally, a single server-side copy on S3), then
the previous run's leftovers of the same partitions are removed and the manifest is written. The
list of files to promote is fixed in staging before the first move, so a retried export resumes
where a failed one stopped. Readers of ``data/`` therefore see the previous run or this one, never
a mix, a partial run or a failed one, whenever the endpoint fails.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
import urllib.parse
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.parquet as pq

import genai_pipeline
from genai_pipeline.config import JobSpec
from genai_pipeline.datasets.base import DatasetRef
from genai_pipeline.errors import QualityGateFailed
from genai_pipeline.locks import Lease, publish_lock
from genai_pipeline.storage import Storage

log = logging.getLogger(__name__)

PUBLISHED_PREFIXES = ("data", "images", "quality")
#: the Hive-style partition of every published folder (data/run_date=…/): no column may be named so
PARTITION_KEY = "run_date"
#: the model of the last published run, for ``train.reuse: latest``
LATEST_MODEL = "models/latest.json"
#: the Parquet footer key naming the run that wrote a data file (lineage: see its manifest)
RUN_ID_KEY = b"genai_pipeline.run_id"
#: a staging area older than this belongs to a run that died without recording its failure
ABANDONED_AFTER = dt.timedelta(days=7)
#: the files a run publishes, fixed in its staging before the first is moved
PUBLISH_PLAN = "_publish.json"
#: the run's manifest, staged before its data is switched in (see :func:`record_failure`)
PENDING_MANIFEST = "_manifest.json"


#: how a run id begins: the run's start time (UTC)
RUN_ID_TIME = "%Y%m%dT%H%M%SZ"


def new_run_id() -> str:
    """Sortable by start time, unique across machines."""
    return dt.datetime.now(dt.UTC).strftime(RUN_ID_TIME) + "-" + secrets.token_hex(3)


def run_started(run_id: str) -> dt.datetime | None:
    """When the run of a :func:`new_run_id` id started; None for an id made otherwise."""
    try:
        return dt.datetime.strptime(run_id.split("-")[0], RUN_ID_TIME).replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def encode_partition_value(value: str) -> str:
    """A value safe as one path segment: ``/``, ``..``, spaces and unicode are percent-encoded."""
    encoded = urllib.parse.quote(value, safe="")
    return encoded.replace(".", "%2E") if set(encoded) <= {"."} else encoded


@dataclass(frozen=True)
class Run:
    """One execution of a job for one run date."""

    job: JobSpec
    run_date: str
    run_id: str = field(default_factory=new_run_id)

    @property
    def root_url(self) -> str:
        return f"{self.job.export.output.rstrip('/')}/{self.job.name}"

    def storage(self) -> Storage:
        """The job's output root (fsspec caches filesystems, so this is cheap)."""
        return Storage(self.root_url, self.job.export.storage_options)

    @property
    def staging(self) -> str:
        return f"_staging/{self.run_id}"

    def staged(self, rel: str) -> str:
        return f"{self.staging}/{rel}"

    def partition(self, kind: str) -> str:
        """``data``, ``images`` or ``quality`` folder of this run's date."""
        return f"{kind}/{PARTITION_KEY}={self.run_date}"

    def shard_part(self, shard: int) -> str:
        """The staged file one generation shard writes (combined into :attr:`data_file` afterwards)."""
        return f"shards/part-{shard:05d}.parquet"

    @property
    def data_file(self) -> str:
        """The run's one data file: replaced in a single atomic step, so a reader of ``data/`` never
        sees parts of two runs (a partition of several files cannot be swapped at once on S3)."""
        return f"{self.partition('data')}/part-00000.parquet"

    @property
    def report_file(self) -> str:
        """The run's HTML quality report (in staging until published)."""
        return f"{self.partition('quality')}/report.html"

    @property
    def manifest(self) -> str:
        return f"_runs/{self.run_id}.json"


@dataclass(frozen=True)
class ModelRef:
    """A trained model in storage and how its training went."""

    uri: str
    family: str
    modality: str
    key: str
    fit: dict[str, Any]


@dataclass(frozen=True)
class GeneratedRef:
    """What generation staged (the run's data files, and images for image jobs)."""

    num_samples: int
    seconds: float
    shards: int = 1


@dataclass(frozen=True)
class QualityReport:
    """The validate stage's verdict."""

    passed: bool
    failures: list[str]
    metrics: list[dict[str, Any]]
    expectations_evaluated: int
    expectations_failed: int
    warnings: list[str] = field(default_factory=list)  # misses that publish the run, flagged


@dataclass(frozen=True)
class PublishedRun:
    """Where a published run's output is."""

    run_id: str
    run_date: str
    data_url: str
    manifest_url: str
    num_samples: int
    files: dict[str, int]
    manifest: dict[str, Any]


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
    report: QualityReport,
) -> PublishedRun:
    """Promote a validated run from staging into place and write its manifest last."""
    if not report.passed:
        raise QualityGateFailed(report.failures)
    storage = run.storage()
    with _lock(run, storage) as lease:
        if storage.exists(run.manifest):  # a retry after the manifest was written: published already
            manifest = json.loads(storage.read_bytes(run.manifest))
        else:
            manifest = _promote(run, storage, lease, dataset, model, generated, report)
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
    report: QualityReport,
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
        quality=asdict(report),
        warnings=report.warnings,
        files=[{"path": rel, "size": size} for rel, size in sorted(promoted.items())],
        location=storage.url_of(run.partition("data")),
        report=storage.url_of(run.report_file),
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
