"""The nightly job as a Prefect flow: ingest → train → generate → validate → export.

Each task wraps exactly one library function. Transient failures (storage, workers) are retried
with the job's retry policy (exponential backoff with jitter); permanent ones (bad config, corrupt
data, a failed quality gate, a diverging model) fail at once. Whatever fails, the run is recorded
as failed, its staging area is removed and nothing of it is published.
"""

from __future__ import annotations

import os
import re
from typing import Any

from flows.settings import apply_memory_defaults, apply_prefect_defaults

apply_prefect_defaults()
apply_memory_defaults()

from prefect import flow, task, unmapped  # noqa: E402  (settings must be in the environment first)
from prefect.artifacts import create_link_artifact, create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.settings import get_current_settings  # noqa: E402
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner  # noqa: E402
from prefect.tasks import exponential_backoff  # noqa: E402

from genai_pipeline import stages  # noqa: E402
from genai_pipeline.config import GenerateSpec, JobSpec  # noqa: E402
from genai_pipeline.cpus import available_cores, release_openmp_team  # noqa: E402
from genai_pipeline.errors import ConfigError, PermanentError  # noqa: E402
from genai_pipeline.generation import threads_per_shard  # noqa: E402
from genai_pipeline.jobs import load_job, parse_overrides, parse_run_date, refuse_literal_secrets  # noqa: E402
from genai_pipeline.notify import notify_failure  # noqa: E402
from genai_pipeline.refs import GeneratedRef  # noqa: E402
from genai_pipeline.runs import Run, new_run_id  # noqa: E402
from genai_pipeline.summary import browser_url, summary_markdown  # noqa: E402


def retry_unless_permanent(task: Any, task_run: Any, state: Any) -> bool:
    """Retry storage and infrastructure failures; never a config, data or quality-gate error."""
    try:
        state.result()
    except PermanentError:
        return False
    except BaseException:
        return True
    return True


def _task(fn: Any, name: str) -> Any:
    return task(fn, name=name, cache_policy=NO_CACHE, retry_condition_fn=retry_unless_permanent)


ingest = _task(stages.ingest, "ingest")
train = _task(stages.train, "train")
generate_shard = _task(stages.generate_shard, "generate")
combine_shards = _task(stages.combine_shards, "combine-shards")
validate = _task(stages.validate, "validate")
export = _task(stages.export, "export")
record_failure = _task(stages.record_failure, "record-failure")


def _artifact_key(name: str, kind: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") + "-" + kind


def _post_summary(run: Run, manifest: dict[str, Any]) -> None:
    """The run's headline metrics as a markdown artifact, and a link artifact to its HTML report."""
    create_markdown_artifact(summary_markdown(run, manifest), key=_artifact_key(run.job.name, "summary"))
    if "report" in manifest:
        create_link_artifact(
            browser_url(manifest["report"]),
            link_text=f"quality report of {run.job.name} {run.run_date} ({manifest['status']})",
            key=_artifact_key(run.job.name, "report"),
        )


def _record_failure(run: Run, error: Exception, policy: dict[str, Any]) -> dict[str, Any]:
    """Record the failure and post its summary; never hide the original error behind a new one.
    The manifest is a published one when the export had failed after its data switch (the
    failure handler finished the publish): the run then succeeds."""
    try:
        manifest = record_failure.with_options(**policy)(run, error)
    except Exception as cleanup_error:  # storage may be what failed in the first place
        manifest = {
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
            "cleanup_error": f"{type(cleanup_error).__name__}: {cleanup_error}",
        }
    _post_summary(run, manifest)
    if manifest["status"] != "published":
        notify_failure(run, manifest)
    return manifest


def concurrent_shards(spec: GenerateSpec) -> int:
    """How many shards the thread runner runs at once: ``workers``, else the shards, at most the cores."""
    return spec.runner.workers or min(spec.shards, available_cores())


def shard_runner(spec: GenerateSpec) -> TaskRunner:
    """The task runner the shards map over, from ``generate.runner``: threads in this process, a
    local Dask cluster (worker processes), or an existing Dask cluster by its address."""
    runner = spec.runner
    cores = available_cores()
    if runner.kind == "threads":
        return ThreadPoolTaskRunner(max_workers=concurrent_shards(spec))
    import dask
    from prefect_dask import DaskTaskRunner

    if runner.address:
        return DaskTaskRunner(address=runner.address)
    workers = runner.workers or cores
    # glibc's heap keeps blocks up to 32 MiB and 64 MiB of free memory in the workers, as its own
    # defaults grow to. Dask's default sets a trim threshold of 64 KiB, which also fixes the mmap
    # threshold at 128 KiB: every larger block went to the kernel and back, and a shard sampled at
    # half the rate, with 7× the system time (BENCHMARKS.md "Scaling out"). glibc reads these when
    # the process starts, so they go in the environment the nanny spawns the workers with (what
    # ``env`` gives is set after the start); given the same every time, not left out: a nanny
    # leaves its values in this process's environment, which comes first for a later cluster's.
    # Process-wide: the nanny reads this config in this process when the cluster starts.
    malloc = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(64 * 2**20)}
    spawned = dask.config.get("distributed.nanny.pre-spawn-environ")
    dask.config.set({"distributed.nanny.pre-spawn-environ": {**spawned, **malloc}})
    env = {
        # torch in each worker gets its share of the cores (Dask's default is one thread); given
        # after the start, where it comes before this process's environment (which another
        # cluster's nanny may have set for its workers: two workers of two threads each ran 4×
        # slower on 2 cores)
        "OMP_NUM_THREADS": str(max(1, cores // (workers * runner.threads_per_worker))),
    }
    if not get_current_settings().api.url:
        # embedded mode: the workers report to this process's temporary server instead of each
        # starting one of its own (tens of seconds per worker)
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        if server.running:
            env["PREFECT_API_URL"] = server.api_url
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": runner.threads_per_worker,
            "processes": True,
            "dashboard_address": ":0",  # never a fixed port (8787) that a second run would fight for
            "env": env,
        }
    )


@flow(name="generate", validate_parameters=False)
def generate(run: Run, *, model: Any, dataset: Any, policy: dict[str, Any]) -> GeneratedRef:
    """Every shard as its own task on this (sub)flow's task runner; a retried shard rewrites only
    its own part file.

    Shards the thread runner would run one at a time (one shard, ``runner.workers: 1``, one core)
    run one after another in this thread, where training ran: torch's OpenMP threads are a team per
    thread that uses them, and with a second team alive (the training thread's) there are more
    OpenMP threads than cores, so libgomp lets them spin only briefly before they sleep and each
    parallel step waits for a wake-up. In a pool thread, Adult's 100k rows took 0.72 s instead of
    0.42 s (BENCHMARKS.md, "Adult through the whole job"). Shards run side by side on the thread
    runner take the pool's threads, after this thread's team is released."""
    shard = generate_shard.with_options(**policy)
    spec = run.job.generate
    threads = spec.runner.kind == "threads"
    if threads and concurrent_shards(spec) == 1:
        generated = [shard(run, model=model, dataset=dataset, shard=k) for k in range(spec.shards)]
    else:
        if threads:
            release_openmp_team()  # the training thread's: the shards' threads start their own
        futures = shard.map(
            run=unmapped(run),
            model=unmapped(model),
            dataset=unmapped(dataset),
            shard=list(range(spec.shards)),
        )
        generated = [future.result() for future in futures]
    return combine_shards.with_options(**policy)(run, generated)


@flow(name="synthesize")
def synthesize(
    job: JobSpec | str,
    run_date: str | None = None,
    run_id: str | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Turn the job's dataset into validated synthetic data and publish it.

    ``job`` is a job spec, or the path of a job YAML (what deployments pass: the file stays the one
    source of truth) with ``overrides`` as on the command line (``train.epochs=5``).
    """
    if isinstance(job, str):
        parsed = parse_overrides(overrides or [], option="overrides:")
        refuse_literal_secrets(parsed, option="overrides:")  # Prefect has stored it by now: fail loudly
        job = load_job(job, overrides=parsed)
    elif overrides:
        raise ConfigError("overrides: only with a job file; change the JobSpec itself instead")
    run = Run(job=job, run_date=parse_run_date(run_date), run_id=run_id or new_run_id())
    policy = {
        "retries": job.retries.count,
        "retry_delay_seconds": exponential_backoff(job.retries.delay_seconds)(job.retries.count) or 0,
        "retry_jitter_factor": job.retries.jitter,
    }
    try:
        dataset = ingest.with_options(**policy)(run)
        model = train.with_options(**policy)(run, dataset=dataset)
        threads = concurrent_shards(job.generate) if job.generate.runner.kind == "threads" else 1
        with threads_per_shard(threads):
            generated = generate.with_options(task_runner=shard_runner(job.generate))(
                run, model=model, dataset=dataset, policy=policy
            )
        verdict = validate.with_options(**policy)(run, dataset=dataset, generated=generated, model=model)
        manifest = export.with_options(**policy)(
            run, dataset=dataset, model=model, generated=generated, verdict=verdict
        ).manifest
    except Exception as error:
        manifest = _record_failure(run, error, policy)
        if manifest["status"] != "published":
            raise
    else:
        _post_summary(run, manifest)
    return {
        "run_id": run.run_id,
        "run_date": run.run_date,
        "num_samples": manifest["generated"]["num_samples"],
        "data_url": manifest["location"],
        "manifest_url": run.storage().url_of(run.manifest),
        "report_url": manifest["report"],
        "warnings": manifest["warnings"],
    }


if __name__ == "__main__":  # pragma: no cover - convenience for `python flows/synthesize.py JOB`
    import sys

    print(synthesize(job=sys.argv[1], run_date=os.environ.get("RUN_DATE")))
